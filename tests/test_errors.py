"""Errors reach the consumer with their original type, naming the stage and the sample key;
the first failure cancels the other stages; skip, retries, max_failures and timeouts."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest

import aioloader as al


def boom_at(bad: int):
    def boom(x: int) -> int:
        if x == bad:
            raise ValueError(f"bad sample {x}")
        return x

    return boom


def _notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_map_error_keeps_type_and_names_stage_and_key(executor, event_loop_kind):
    loader = al.Loader.from_source(range(100)).map(boom_at(13), executor=executor, name="decode")
    with (
        loader.options(event_loop=event_loop_kind) as loader,
        pytest.raises(ValueError, match="bad sample 13") as info,
    ):
        list(loader)
    assert info.value.stage == "decode" and info.value.key == 13
    assert "'decode'" in _notes(info.value) and "key 13" in _notes(info.value)


async def test_async_map_error_in_async_iteration():
    async def boom(x):
        if x == 7:
            raise KeyError("missing")
        return x

    async with al.Loader.from_source(range(20)).map(boom, concurrency=4) as loader:
        with pytest.raises(KeyError) as info:
            async for _ in loader:
                pass
    assert info.value.key == 7 and info.value.stage == "map(boom)"


def test_read_error_names_read_stage():
    class Broken:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 4:
                raise OSError("disk error")
            return i

    with al.Loader.from_source(Broken()) as loader, pytest.raises(OSError) as info:
        list(loader)
    assert (info.value.stage, info.value.key) == ("read", 4)


def test_filter_and_collate_errors():
    with (
        al.Loader.from_source(range(10)).filter(lambda x: 1 / (x - 3)) as loader,
        pytest.raises(ZeroDivisionError) as info,
    ):
        list(loader)
    assert info.value.key == 3 and info.value.stage.startswith("filter")

    def bad_collate(items):
        raise TypeError("cannot collate")

    with (
        al.Loader.from_source(range(10)).batch(4, collate=bad_collate) as loader,
        pytest.raises(TypeError) as info,
    ):
        list(loader)
    assert info.value.stage == "batch" and info.value.key == [0, 1, 2, 3]


def test_source_iterator_error_names_position():
    def gen():
        yield from range(5)
        raise RuntimeError("stream broke")

    with al.Loader.from_source(gen()) as loader, pytest.raises(RuntimeError, match="stream broke") as info:
        list(loader)
    assert info.value.stage == "source" and info.value.key == 5


def test_first_failure_cancels_an_endless_source():
    pulled = itertools.count()

    def endless():
        while True:
            yield next(pulled)

    with al.Loader.from_source(endless()).map(boom_at(100)) as loader:
        with pytest.raises(ValueError):
            list(loader)
        after_error = next(pulled)
        # the loop thread is idle now: nothing pulls from the source any more
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loader._runtime.loop_thread("auto").loop).result()
        assert next(pulled) == after_error + 1


@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_skip_records_errors_and_drops_items(executor):
    bad = {3, 50, 77}

    def fn(x):
        if x in bad:
            raise ValueError(f"corrupt {x}")
        return x

    loader = al.Loader.from_source(range(100)).map(fn, executor=executor, on_error="skip", max_failures=3)
    with loader:
        got = list(loader)
    assert got == [x for x in range(100) if x not in bad]
    errors = loader.stats()["errors"]
    assert sorted(e["key"] for e in errors) == sorted(bad)
    assert {e["type"] for e in errors} == {"ValueError"}
    assert all(e["stage"] == "map(fn)" for e in errors)


def test_too_many_failures_count_and_fraction():
    def fn(x):
        if x % 10 == 0:
            raise ValueError("corrupt")
        return x

    loader = al.Loader.from_source(range(100)).map(fn, on_error="skip", max_failures=5)
    with loader, pytest.raises(al.TooManyFailures, match="max_failures=5") as info:
        list(loader)
    assert isinstance(info.value.__cause__, ValueError)
    loader = al.Loader.from_source(range(100)).map(fn, on_error="skip", max_failures=0.05)
    with loader, pytest.raises(al.TooManyFailures):
        list(loader)
    with al.Loader.from_source(range(100)).map(fn, on_error="skip", max_failures=0.1) as loader:
        assert len(list(loader)) == 90


@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_retries_with_backoff(executor):
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def flaky(x):
        with lock:
            attempts[x] = attempts.get(x, 0) + 1
            n = attempts[x]
        if x % 5 == 0 and n <= 2:
            raise OSError(f"transient {x}")
        return x

    with al.Loader.from_source(range(20)).map(flaky, executor=executor, retries=2) as loader:
        assert list(loader) == list(range(20))
    attempts.clear()
    loader = al.Loader.from_source(range(20)).map(flaky, executor=executor, retries=1)
    with loader, pytest.raises(OSError, match="transient 0"):
        list(loader)


def test_non_retryable_error_is_not_retried():
    calls = []

    def fn(x):
        calls.append(x)
        raise ValueError("permanent")

    with al.Loader.from_source(range(1)).map(fn, retries=3) as loader, pytest.raises(ValueError):
        list(loader)
    assert calls == [0]


def test_timeout_raises_stage_timeout_error_with_key():
    stuck = threading.Event()

    def fn(x):
        if x == 3:
            stuck.wait(30)
        return x

    loader = al.Loader.from_source(range(10)).map(fn, executor="thread", timeout=0.2, name="slow")
    try:
        with loader, pytest.raises(al.StageTimeoutError) as info:
            list(loader)
    finally:
        stuck.set()  # let the abandoned thread finish so the leak check can join it
    assert info.value.stage == "slow" and info.value.key == 3
    assert "timeout=0.2" in str(info.value)


async def test_async_timeout_is_retried_then_skipped():
    attempts = {}

    async def fn(x):
        attempts[x] = attempts.get(x, 0) + 1
        if x == 2:
            await asyncio.Event().wait()  # never completes: cancelled by the timeout
        return x

    loader = al.Loader.from_source(range(5)).map(fn, timeout=0.05, retries=1, on_error="skip", max_failures=1)
    async with loader:
        assert [x async for x in loader] == [0, 1, 3, 4]
    assert attempts[2] == 2
    assert loader.stats()["errors"][0]["type"] == "StageTimeoutError"


def stops_at_13(x: int) -> int:
    """A per-sample function that lets a StopIteration escape (``next()`` on an empty iterator)."""
    if x == 13:
        next(iter(()))
    return x


class PathError(Exception):
    """An exception with a custom constructor: pickles, but cannot be unpickled."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


def path_error_at_13(x: int) -> int:
    if x == 13:
        raise PathError(f"/data/{x}", "unreadable")
    return x


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
@pytest.mark.parametrize("fused", [False, True])
def test_a_stop_iteration_from_fn_fails_its_sample_and_loses_nothing(executor, fused):
    """map() would take a StopIteration from fn for the end of its input and drop the rest of
    the chunk silently; it must fail the sample, named, like any other exception."""
    loader = al.Loader.from_source(range(40)).map(stops_at_13, executor=executor, name="m")
    if not fused:
        loader = loader.filter(lambda x: True)  # nothing between map and batch: fusion applies
    with loader.batch(8) as loader, pytest.raises(RuntimeError, match="StopIteration") as info:
        list(loader)
    assert info.value.stage == "m" and info.value.key == 13


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_stop_iteration_under_skip_drops_only_that_sample(executor):
    loader = al.Loader.from_source(range(40)).map(
        stops_at_13, executor=executor, on_error="skip", max_failures=1
    )
    with loader.batch(8) as loader:
        got = [int(x) for batch in loader for x in batch]
        errors = loader.stats()["errors"]
    assert got == [x for x in range(40) if x != 13]
    assert [e["key"] for e in errors] == [13]


@pytest.mark.parametrize("fused", [False, True])
def test_an_unpicklable_worker_exception_still_names_the_sample_key(fused):
    loader = al.Loader.from_source(range(40)).map(path_error_at_13, executor="process", name="m")
    if not fused:
        loader = loader.filter(lambda x: True)
    with loader.batch(8) as loader, pytest.raises(RuntimeError, match="PathError") as info:
        list(loader)
    assert info.value.stage == "m" and info.value.key == 13
