"""Faults with real worker processes (docs/design.md guarantee 5): a worker that dies mid-epoch is
replaced and its items redone, nothing lost or doubled; an item that kills every worker fails
with WorkerCrashError; a hang past ``timeout`` kills the worker and raises StageTimeoutError (or
is retried); skip with max_failures; retries with backoff; a failing worker_init.

Faults fire once per key by creating a marker file with O_EXCL (the first run only), so no test
waits on time: each waits on process deaths, pipes and files.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import pytest

import aioloader as al
from aioloader.workers import MAX_ATTEMPTS
from aioloader.workers.pool import MAX_START_FAILURES

pytestmark = pytest.mark.slow


def _first_time(marker_dir: str, key: int, tag: str = "") -> bool:
    """True for the first caller only, across processes (O_EXCL on a marker file)."""
    try:
        os.close(os.open(Path(marker_dir) / f"{tag}{key}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        ctypes.string_at(0)
    raise AssertionError(how)


class DieOnce:
    """Kills its worker the first time it sees ``key``."""

    def __init__(self, marker_dir: Path, key: int, how: str) -> None:
        self.marker_dir, self.key, self.how = str(marker_dir), key, how

    def __call__(self, x: int) -> tuple[int, int]:
        if x == self.key and _first_time(self.marker_dir, x):
            _die(self.how)
        return x * 2, os.getpid()


class AlwaysDie:
    def __init__(self, key: int) -> None:
        self.key = key

    def __call__(self, x: int) -> int:
        if x == self.key:
            os._exit(5)
        return x


class Hang:
    """Hangs on ``key`` (every time, or only the first time with ``once``)."""

    def __init__(self, marker_dir: Path, key: int, once: bool) -> None:
        self.marker_dir, self.key, self.once = str(marker_dir), key, once

    def __call__(self, x: int) -> int:
        if x == self.key and (not self.once or _first_time(self.marker_dir, x)):
            time.sleep(600)
        return x


def fail_tenth(x: int) -> int:
    if x % 10 == 0:
        raise ValueError(f"corrupt sample {x}")
    return x


class FlakyIO:
    """Raises OSError the first ``times`` runs of every key divisible by 7."""

    def __init__(self, marker_dir: Path, times: int) -> None:
        self.marker_dir, self.times = str(marker_dir), times

    def __call__(self, x: int) -> int:
        if x % 7 == 0:
            for attempt in range(self.times):
                if _first_time(self.marker_dir, x, f"a{attempt}-"):
                    raise OSError(f"transient read error on {x}")
        return x


def broken_init(worker_id: int) -> None:
    raise RuntimeError(f"cannot open the dataset in worker {worker_id}")


def identity(x: int) -> int:
    return x


from tests.test_workers import _children, _pool_pids, _segments  # noqa: E402 - shared helpers


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_worker_killed_mid_epoch_is_replaced_and_its_items_redone(tmp_path, how):
    loader = al.Loader.from_source(range(300)).map(
        DieOnce(tmp_path, 137, how), executor="process", concurrency=2
    )
    with loader:
        iterator = iter(loader)
        out = [next(iterator)[0]]
        started_pids = set(_pool_pids(loader))
        out += [value for value, _ in iterator]
        assert out == [2 * x for x in range(300)]  # in order, nothing lost, nothing doubled
        assert (tmp_path / "137").exists()
        replaced = set(_pool_pids(loader))
        assert len(replaced) == 2 and len(replaced & started_pids) == 1  # one worker was replaced
        assert [v for v, _ in loader] == [2 * x for x in range(300)]  # the next epoch still runs
    assert not _children() and not _segments()


def test_an_item_that_always_kills_its_worker_raises_worker_crash_error():
    loader = al.Loader.from_source(range(30)).map(
        AlwaysDie(11), executor="process", concurrency=1, name="decode"
    )
    with loader, pytest.raises(al.WorkerCrashError, match=f"died each of the {MAX_ATTEMPTS} times") as info:
        list(loader)
    assert info.value.stage == "decode" and info.value.key == 11
    assert not _children() and not _segments()


def test_an_item_that_always_kills_its_worker_is_skipped_under_skip():
    loader = al.Loader.from_source(range(30)).map(
        AlwaysDie(11), executor="process", concurrency=1, on_error="skip", max_failures=1
    )
    with loader:
        assert list(loader) == [x for x in range(30) if x != 11]
        errors = loader.stats()["errors"]
        assert [(e["key"], e["type"]) for e in errors] == [(11, "WorkerCrashError")]
    assert not _children()


def test_hang_past_timeout_raises_stage_timeout_error_naming_stage_and_key(tmp_path):
    loader = al.Loader.from_source(range(20)).map(
        Hang(tmp_path, 6, once=False), executor="process", concurrency=2, timeout=0.5, name="slow"
    )
    with loader:
        iterator = iter(loader)
        assert [next(iterator) for _ in range(6)] == list(range(6))  # the pool is up
        started = time.monotonic()
        with pytest.raises(al.StageTimeoutError) as info:
            next(iterator)
        assert time.monotonic() - started < 5.0
    assert info.value.stage == "slow" and info.value.key == 6
    assert "slow" in str(info.value) and "key 6" in str(info.value)
    assert not _children() and not _segments()


def test_hang_once_is_retried_on_a_fresh_worker(tmp_path):
    loader = al.Loader.from_source(range(40)).map(
        Hang(tmp_path, 9, once=True), executor="process", concurrency=2, timeout=0.5, retries=1
    )
    with loader:
        assert list(loader) == list(range(40))
        assert len(_pool_pids(loader)) == 2
    assert not _children()


def test_failing_fraction_is_skipped_and_recorded_then_too_many_failures():
    with al.Loader.from_source(range(500)).map(
        fail_tenth, executor="process", concurrency=2, on_error="skip", max_failures=0.15
    ) as loader:
        assert list(loader) == [x for x in range(500) if x % 10]
        stats = loader.stats()
        assert stats["error_count"] == 50
        assert {e["key"] for e in stats["errors"]} <= set(range(0, 500, 10))
        assert all(e["type"] == "ValueError" and "corrupt sample" in e["message"] for e in stats["errors"])
    with (
        al.Loader.from_source(range(500)).map(
            fail_tenth, executor="process", concurrency=2, on_error="skip", max_failures=0.05
        ) as loader,
        pytest.raises(al.TooManyFailures),
    ):
        list(loader)
    assert not _children() and not _segments()


def lock_on_7(x: int) -> object:
    """A result that cannot be pickled for key 7."""
    import threading

    return threading.Lock() if x == 7 else x


class LockAt7:
    """A source whose item 7 cannot be pickled."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, index: int) -> object:
        import threading

        return threading.Lock() if index == 7 else index


@pytest.mark.parametrize("side", ["result", "input"])
def test_a_value_that_cannot_be_pickled_fails_alone_as_its_samples_error(side):
    """Not the whole chunk with no key: skip records it by key, raise names stage and key."""
    source, fn = (range(30), lock_on_7) if side == "result" else (LockAt7(), identity)
    name = f"map({fn.__name__})"
    with al.Loader.from_source(source).map(
        fn, executor="process", concurrency=2, on_error="skip", max_failures=1
    ) as loader:
        assert list(loader) == [x for x in range(30) if x != 7]
        (error,) = loader.stats()["errors"]
        assert error["stage"] == name and error["key"] == 7 and error["type"] == "TypeError"
        assert "cannot be pickled" in error["message"]
    with (
        al.Loader.from_source(source).map(fn, executor="process", concurrency=2) as loader,
        pytest.raises(TypeError, match="cannot be pickled") as info,
    ):
        list(loader)
    assert info.value.stage == name and info.value.key == 7
    assert not _children() and not _segments()


def hanging_init(worker_id: int) -> None:
    import threading

    threading.Event().wait()  # never set


def test_a_worker_init_that_hangs_fails_the_run_when_a_timeout_is_set(monkeypatch):
    """With ``timeout``, a worker must become ready within max(START_TIMEOUT_S, timeout), or it
    is replaced; MAX_START_FAILURES in a row fail the run: the consumer was blocked for good.
    (The floor is lowered here; the pool and workers are real.)"""
    from aioloader.workers import executor

    monkeypatch.setattr(executor, "START_TIMEOUT_S", 1.0)
    loader = al.Loader.from_source(range(10)).map(
        identity, executor="process", concurrency=2, worker_init=hanging_init, timeout=0.5
    )
    with loader:
        for _ in range(2):  # a pool that failed to start is made anew for the next epoch
            with pytest.raises(al.WorkerCrashError, match=r"did not become ready within 1 s") as info:
                list(loader)
            assert info.value.stage == "map(identity)"
            assert f"{MAX_START_FAILURES} in a row" in str(info.value)
    assert not _children() and not _segments()


def test_error_in_worker_keeps_its_type_and_the_worker_traceback():
    with al.Loader.from_source(range(50)).map(fail_tenth, executor="process", concurrency=1) as loader:
        with pytest.raises(ValueError, match="corrupt sample 0") as info:
            list(loader)
        notes = "\n".join(info.value.__notes__)
        assert "traceback in worker process" in notes and "fail_tenth" in notes
        assert info.value.key == 0


def test_retries_with_backoff_in_processes(tmp_path):
    with al.Loader.from_source(range(60)).map(
        FlakyIO(tmp_path, times=2), executor="process", concurrency=2, retries=2
    ) as loader:
        assert list(loader) == list(range(60))
    (tmp_path / "again").mkdir()
    with (
        al.Loader.from_source(range(60)).map(
            FlakyIO(tmp_path / "again", times=2), executor="process", concurrency=2, retries=1
        ) as loader,
        pytest.raises(OSError, match="transient read error on 0"),
    ):
        list(loader)


def missing_file_init(worker_id: int) -> None:
    with open(f"/nonexistent/aioloader-shard-{worker_id}.bin", "rb"):
        pass


@pytest.mark.parametrize(
    ("init", "error", "message"),
    [(broken_init, RuntimeError, "cannot open the dataset"), (missing_file_init, FileNotFoundError, "shard-")],
)
def test_failing_worker_init_fails_the_run_without_a_respawn_storm(init, error, message):
    """An OSError of worker_init is named too: it was taken for the parent going away, the
    worker exited with code 0 and the run failed with "worker processes die before they are
    ready"."""
    loader = al.Loader.from_source(range(10)).map(identity, executor="process", concurrency=2, worker_init=init)
    with loader, pytest.raises(al.WorkerCrashError, match=message) as info:
        list(loader)
    assert isinstance(info.value.__cause__, error)
    assert not _children()
