"""No silent hang (issue 21, item 3): a process-map worker that stops (SIGSTOP), blocks or grows
without bound is reported or recycled instead of stalling the run forever with no word; a
thread-map or inline call that blocks is reported with its thread's name and Python stack, and
a thread map's is given up under ``on_stall="raise"``.

Each test asserts the keys delivered, the error's type and message, and the time to it; the
autouse ``no_leaks`` fixture checks threads, processes and segments, and these tests also check
that no worker's stack file is left in the temporary directory."""

from __future__ import annotations

import glob
import logging
import os
import re
import signal
import tempfile
import threading
import time

import psutil
import pytest

import aioloader as al
from aioloader._run.stall import describe_keys, stall_limit
from aioloader.workers import default_worker_memory

_STAMP_ENV = "AIOLOADER_TEST_STAMP"  # the file where a worker writes when the bad key began
_HELD: list[bytearray] = []


def _stamp() -> None:
    with open(os.environ[_STAMP_ENV], "w") as file:
        file.write(repr(time.monotonic()))  # CLOCK_MONOTONIC: the same clock in the parent


def stops_at_0(x: int) -> int:
    if x == 0:
        _stamp()
        os.kill(os.getpid(), signal.SIGSTOP)
    return x


def sleeps_at_0(x: int) -> int:
    if x == 0:
        _stamp()
        threading.Event().wait(2.0)  # a slow call, not synchronisation
    return x


def grows_at_2(x: int) -> int:
    if x == 2:
        _HELD.append(bytearray(512 << 20))  # zero-filled: resident at once
        threading.Event().wait(30)  # held until the pool kills the worker
    return x


@pytest.fixture
def stamp(tmp_path, monkeypatch):
    path = tmp_path / "stamp"
    monkeypatch.setenv(_STAMP_ENV, str(path))  # workers inherit the environment
    return path


def _stack_files() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"aioloader_{os.getpid()}_*stack"))


@pytest.mark.slow
def test_a_stopped_worker_is_an_error_naming_the_stage_keys_and_pid(stamp, caplog):
    """Before: SIGSTOP in a worker stalled the run forever, with no word."""
    loader = al.Loader.from_source(range(6)).map(
        stops_at_0, executor="process", concurrency=1, stall_after=0.5, on_stall="raise"
    )
    got = []
    with caplog.at_level(logging.WARNING, "aioloader"), loader:
        with pytest.raises(al.StageStalledError) as info:
            for x in loader:
                got.append(x)
        raised = time.monotonic()
    began = float(stamp.read_text())
    message = str(info.value)
    assert got == []  # key 0 never finished: nothing after it in order either
    assert isinstance(info.value, al.StageTimeoutError)
    assert info.value.stage == "map(stops_at_0)" and info.value.key == 0
    assert "stage 'map(stops_at_0)' made no progress for" in message
    assert "running keys [0]" in message
    assert "(stopped, RSS" in message and "cannot run, e.g. SIGSTOP" in message
    pid = int(re.search(r"worker pid (\d+) \(stopped", message).group(1))
    assert not psutil.pid_exists(pid)  # the stopped worker was killed and reaped
    assert 0.5 <= raised - began < 0.5 + 4.0  # report, kill, reap: slow on 2 loaded cores
    assert "made no progress" in caplog.text  # logged as a warning too
    assert _stack_files() == []


@pytest.mark.slow
def test_a_stopped_worker_given_up_is_skipped_under_skip(stamp):
    """A stall given up under on_stall="raise" is the sample's failure, as a timeout is."""
    loader = al.Loader.from_source(range(6)).map(
        stops_at_0, executor="process", concurrency=1, stall_after=0.5, on_stall="raise",
        on_error="skip", max_failures=1,
    )  # fmt: skip
    with loader:
        got = list(loader)
        errors = loader.stats()["errors"]
    assert got == [1, 2, 3, 4, 5]
    assert [(e["key"], e["type"]) for e in errors] == [(0, "StageStalledError")]
    assert "stage 'map(stops_at_0)' made no progress for" in errors[0]["message"]
    assert _stack_files() == []


@pytest.mark.slow
def test_a_slow_worker_is_reported_with_its_python_stack_and_the_run_goes_on(stamp, caplog):
    loader = al.Loader.from_source(range(6)).map(
        sleeps_at_0, executor="process", concurrency=1, stall_after=0.5
    )
    with caplog.at_level(logging.WARNING, "aioloader"), loader:
        got = list(loader)
    reports = [r.getMessage() for r in caplog.records if "made no progress" in r.getMessage()]
    assert got == [0, 1, 2, 3, 4, 5]
    assert len(reports) == 1  # once per stalled task
    report = reports[0]
    assert "stage 'map(sleeps_at_0)' made no progress for" in report
    assert "running keys [0]" in report
    assert "Python stack of worker pid" in report
    assert "in sleeps_at_0" in report  # the worker's own frame, from faulthandler
    assert _stack_files() == []


@pytest.mark.slow
def test_a_worker_over_max_worker_memory_is_recycled_and_its_key_fails():
    """Before: a worker grew without limit (2.2 GB in the report) and the run waited forever."""
    limit = 300 << 20
    loader = al.Loader.from_source(range(6)).map(
        grows_at_2,
        executor="process",
        concurrency=1,
        max_worker_memory=limit,
        on_error="skip",
        max_failures=1,
    )
    started = time.monotonic()
    with loader:
        got = list(loader)
        errors = loader.stats()["errors"]
    took = time.monotonic() - started
    assert got == [0, 1, 3, 4, 5]
    assert [(e["key"], e["type"]) for e in errors] == [(2, "WorkerCrashError")]
    assert "over max_worker_memory=300 MiB; it was replaced" in errors[0]["message"]
    assert took < 60


def test_the_default_memory_limit_is_half_the_machine_shared_by_the_workers():
    assert default_worker_memory(2, 16 << 30) == 4 << 30
    assert default_worker_memory(8, 4 << 30) == 1 << 30  # at least 1 GiB
    assert default_worker_memory(4) >= 1 << 30


def test_the_options_are_checked():
    source = al.Loader.from_source(range(3))
    with pytest.raises(ValueError, match="max_worker_memory must be a number of bytes >= 1"):
        source.map(stops_at_0, executor="process", max_worker_memory=0)
    with pytest.raises(ValueError, match="stall_after must be a number of seconds > 0"):
        source.map(stops_at_0, executor="process", stall_after=-1)
    with pytest.raises(ValueError, match="on_stall must be 'warn' or 'raise'"):
        source.map(stops_at_0, executor="process", on_stall="ignore")
    with pytest.raises(ValueError, match="only used with executor='process'"):
        source.map(stops_at_0, executor="thread", max_worker_memory=1 << 30)
    with pytest.raises(ValueError, match="on_stall must be 'warn' or 'raise'"):
        source.map(stops_at_0, executor="thread", on_stall="ignore")
    with pytest.raises(ValueError, match="not 'auto' with an async function"):
        source.map(_async_identity, stall_after=1.0)


async def _async_identity(x: int) -> int:
    return x


class _BlocksAt:
    """``x``, after blocking on ``key`` until released (a hung read); notes when it began."""

    def __init__(self, key: int, wait_s: float = 30.0) -> None:
        self.key = key
        self.wait_s = wait_s
        self.release = threading.Event()
        self.began: float | None = None

    def __call__(self, x: int) -> int:
        if x == self.key:
            self.began = time.monotonic()
            self.release.wait(self.wait_s)
        return x


def test_a_blocked_thread_map_call_is_an_error_naming_the_stage_keys_thread_and_stack(caplog):
    """Before: a thread map blocked in user code stalled the run forever, with no word."""
    fn = _BlocksAt(2)
    got = []
    loader = al.Loader.from_source(range(6)).map(
        fn, executor="thread", concurrency=2, stall_after=0.5, on_stall="raise"
    )
    try:
        with caplog.at_level(logging.WARNING, "aioloader"), loader:
            with pytest.raises(al.StageStalledError) as info:
                for x in loader:
                    got.append(x)
            raised = time.monotonic()
    finally:
        fn.release.set()
    message = str(info.value)
    assert got == [0, 1]  # key 2 never finished: nothing after it in order either
    assert isinstance(info.value, al.StageTimeoutError)
    assert info.value.stage == "map(_BlocksAt)" and info.value.key == 2
    assert "stage 'map(_BlocksAt)' made no progress for" in message
    assert re.search(r"thread 'aioloader-map\(_BlocksAt\)_\d' has been running keys \[2\]", message)
    assert "(stall_after=0.5)" in message
    assert "Python stack of thread 'aioloader-map(_BlocksAt)_" in message
    assert "in __call__\n    self.release.wait(self.wait_s)" in message  # the user's own frame
    assert 0.5 <= raised - fn.began < 0.5 + 1.0
    assert "made no progress" in caplog.text  # logged as a warning too


def test_a_slow_thread_map_call_is_reported_once_and_skipped_keys_are_named(caplog):
    """on_stall="warn" (the default): the run goes on; a stall given up under "raise" is
    skipped like any failure under on_error="skip"."""
    slow = _BlocksAt(1, wait_s=1.0)  # a slow call, not synchronisation
    loader = al.Loader.from_source(range(4)).map(slow, executor="thread", stall_after=0.3)
    with caplog.at_level(logging.WARNING, "aioloader"), loader:
        got = list(loader)
    reports = [r.getMessage() for r in caplog.records if "made no progress" in r.getMessage()]
    assert got == [0, 1, 2, 3]
    assert len(reports) == 1  # once per stalled call
    assert "running keys [1]" in reports[0] and "in __call__" in reports[0]

    hung = _BlocksAt(1)
    loader = al.Loader.from_source(range(4)).map(
        hung, executor="thread", stall_after=0.3, on_stall="raise", on_error="skip", max_failures=1
    )
    try:
        with loader:
            got = list(loader)
            errors = loader.stats()["errors"]
    finally:
        hung.release.set()
    assert got == [0, 2, 3]
    assert [(e["key"], e["type"]) for e in errors] == [(1, "StageStalledError")]


def test_a_blocked_inline_call_is_reported_with_the_loop_thread_stack(caplog):
    """An inline call holds the event loop, which then cannot report anything: the stage's
    watchdog thread does."""
    slow = _BlocksAt(1, wait_s=1.0)
    loader = al.Loader.from_source(range(4)).map(slow, executor="inline", stall_after=0.3)
    with caplog.at_level(logging.WARNING, "aioloader"), loader:
        got = list(loader)
    reports = [r.getMessage() for r in caplog.records if "made no progress" in r.getMessage()]
    assert got == [0, 1, 2, 3]
    assert len(reports) == 1
    assert "stage 'map(_BlocksAt)' made no progress for" in reports[0]
    assert "thread 'aioloader-loop' has been running keys [0, 1, 2, 3]" in reports[0]
    assert "in __call__\n    self.release.wait(self.wait_s)" in reports[0]


def test_the_default_stall_limit_is_20_times_the_slowest_task_and_at_least_60_s():
    assert stall_limit("auto", 0.01) == 60.0
    assert stall_limit("auto", 10.0) == 200.0
    assert stall_limit(2.5, 10.0) == 2.5
    assert stall_limit(None, 10.0) is None


def test_a_report_names_the_first_16_keys_of_a_long_chunk():
    assert describe_keys([3]) == "[3]"
    cut = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, ... (40 keys)]"
    assert describe_keys(list(range(40))) == cut
