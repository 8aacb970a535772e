"""Clean stop (guarantee 6): breaking out, an exception in the loop body, Ctrl-C, ``close()``,
``with`` and ``async with`` leave no task or thread of the run behind within 2 s. The autouse
``no_leaks`` fixture checks threads, processes and shm segments after every test."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest

import aioloader as al

from .conftest import pytest_configure, wait_threads_gone


def _slow_endless():
    async def slow(x):
        await asyncio.sleep(0.001)
        return x

    return al.Loader.from_source(itertools.count()).map(slow, concurrency=4).batch(8)


def _threaded_endless():
    return (
        al.Loader.from_source(itertools.count()).map(lambda x: x, executor="thread", concurrency=3).batch(8)
    )


def _run_tasks(loader) -> list[str]:
    """Names of aioloader tasks alive on the loader's loop thread."""

    async def names():
        return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("aioloader:"))

    loop = loader._runtime.loop_thread("auto").loop
    return asyncio.run_coroutine_threadsafe(names(), loop).result()


def _map_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("aioloader-map")}


@pytest.mark.parametrize("make", [_slow_endless, _threaded_endless])
def test_break_stops_the_run(make):
    loader = make()
    with loader:
        for i, _ in enumerate(loader):
            if i == 3:
                break
        assert _run_tasks(loader) == []
        assert not wait_threads_gone(
            {t for t in threading.enumerate() if not t.name.startswith("aioloader-map")}
        )
        assert not _map_threads()


def test_exception_in_loop_body_stops_the_run():
    loader = _threaded_endless()
    with loader:
        with pytest.raises(ZeroDivisionError):
            for i, _ in enumerate(loader):
                if i == 2:
                    1 / 0  # noqa: B018
        gc.collect()
        assert _run_tasks(loader) == []


def test_ctrl_c_in_loop_body_stops_the_run():
    loader = _slow_endless()
    with loader:
        with pytest.raises(KeyboardInterrupt):
            for i, _ in enumerate(loader):
                if i == 2:
                    signal.raise_signal(signal.SIGINT)
        gc.collect()
        assert _run_tasks(loader) == []


def test_a_run_started_with_sigint_ignored_gets_python_s_handler_back():
    """Before: the test above (and the Ctrl-C tests of child processes) hung until its timeout
    in a ``pytest ... &`` started from a script: Python installs no SIGINT handler when the
    signal is ignored at its start. The conftest puts Python's handler back."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pytest_configure(None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_blocked_waiting_for_a_batch(tmp_path):
    """SIGINT to a process whose consumer is blocked on the loader: it exits promptly."""
    script = tmp_path / "consumer.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            import aioloader as al

            async def never(x):
                print("blocked", flush=True)  # the consumer now waits for a batch
                await asyncio.Event().wait()

            loader = al.Loader.from_source(range(10)).map(never, concurrency=1)
            try:
                for _ in loader:
                    pass
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(3)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert proc.stdout.readline().strip() == "blocked"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 3, out
    assert "interrupted" in out


def test_close_from_another_thread_ends_a_blocked_consumer():
    loader = _slow_endless()
    got_one = threading.Event()
    result: dict[str, object] = {}

    def consume():
        count = 0
        for _ in loader:
            count += 1
            got_one.set()
        result["count"] = count

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert got_one.wait(10)
    loader.close()
    consumer.join(5)
    assert not consumer.is_alive()
    assert result["count"] >= 1


def test_close_is_idempotent_and_loader_is_reusable():
    loader = al.Loader.from_source(range(10))
    assert list(loader) == list(range(10))
    loader.close()
    loader.close()
    assert list(loader) == list(range(10))  # a closed loader starts a fresh loop thread
    loader.close()


def test_garbage_collected_loader_stops_its_thread():
    before = {t for t in threading.enumerate() if t.name.startswith("aioloader")}
    loader = al.Loader.from_source(range(10))
    assert list(loader) == list(range(10))
    del loader
    gc.collect()
    assert not wait_threads_gone(before)


async def test_async_break_cancels_all_tasks():
    async with _slow_endless() as loader:
        async for i, _ in _aenumerate(loader):
            if i == 3:
                break
        for _ in range(20):  # the async generator's finaliser runs on the loop
            await asyncio.sleep(0)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("aioloader:")]


async def test_async_exception_in_body_and_async_with():
    with pytest.raises(RuntimeError, match="training step failed"):
        async with _slow_endless() as loader:
            async for _batch in loader:
                raise RuntimeError("training step failed")
    for _ in range(20):
        await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("aioloader:")]


async def test_async_close_during_iteration_ends_quietly():
    loader = _slow_endless()
    count = 0
    async for _ in loader:
        count += 1
        if count == 2:
            await loader.aclose()
    assert count >= 2
    for _ in range(20):
        await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("aioloader:")]


async def _aenumerate(aiterable):
    i = 0
    async for item in aiterable:
        yield i, item
        i += 1


def fails_at_5(x: int) -> int:
    if x == 5:
        raise ValueError("bug in my transform")
    return x


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_failed_epoch_does_not_keep_an_unclosed_loader_alive(executor):
    """A notebook re-runs a cell whose loop failed, without ``with`` or close(): the error's
    traceback holds the Loader's frame, and must not keep it (and its pool) alive once the
    user drops both."""
    before = {t for t in threading.enumerate() if t.name.startswith("aioloader")}
    loader = al.Loader.from_source(list(range(64))).map(fails_at_5, executor=executor, concurrency=2)
    loader = loader.batch(8)
    alive = weakref.ref(loader)
    with pytest.raises(ValueError, match="bug in my transform"):
        for _ in loader:
            pass
    del loader
    gc.collect()
    assert alive() is None
    assert not wait_threads_gone(before)  # the no_leaks fixture checks the worker processes


async def test_a_failed_async_epoch_does_not_keep_an_unclosed_loader_alive():
    loader = al.Loader.from_source(list(range(64))).map(fails_at_5, executor="thread").batch(8)
    alive = weakref.ref(loader)
    with pytest.raises(ValueError, match="bug in my transform"):
        async for _ in loader:
            pass
    del loader
    gc.collect()
    assert alive() is None


def test_close_from_another_thread_mid_epoch_leaves_the_epoch_incomplete():
    """close() ends the consumer's loop quietly, hands it nothing more, and state_dict()
    resumes after the last batch it received: a preemption handler that closes and then
    saves the state loses nothing."""
    loader = al.Loader.from_source(range(10_000)).map(lambda x: x, executor="thread").batch(10)
    received: list[int] = []
    states: list[dict] = []
    closed = threading.Event()

    def consume():
        for batch in loader:
            received.extend(int(x) for x in batch)
            if len(received) == 50:
                threading.Thread(target=lambda: (loader.close(), closed.set())).start()
                assert closed.wait(10)
        states.append(loader.state_dict())

    consumer = threading.Thread(target=consume)
    consumer.start()
    consumer.join(20)
    assert not consumer.is_alive()
    assert received == list(range(50))
    assert (states[0]["epoch"], states[0]["position"]) == (0, 50)
    fresh = al.Loader.from_source(range(10_000)).map(lambda x: x, executor="thread").batch(10)
    with fresh:
        fresh.load_state_dict(states[0])
        rest = [int(x) for batch in fresh for x in batch]
    assert received + rest == list(range(10_000))
    loader.close()


async def test_async_close_mid_epoch_leaves_the_epoch_incomplete():
    loader = al.Loader.from_source(range(1000)).batch(2)
    count = 0
    async for _ in loader:
        count += 1
        if count == 2:
            await loader.aclose()
    assert count == 2
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (0, 4)


class _SlowOnce:
    """A function whose call on key 0 takes ``seconds`` (it is still running when the consumer
    stops); ``started`` is set when that call begins and ``finished`` when it returns."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = threading.Event()
        self.finished = threading.Event()

    def __call__(self, x: int) -> int:
        if x == 0:
            self.started.set()
            threading.Event().wait(self.seconds)  # simulated work, not synchronisation
            self.finished.set()
        return x


def test_close_returns_after_calls_running_in_threads_have_returned():
    """A thread cannot be stopped, so close() waits (up to 1.5 s) for the pipeline's calls
    still running in its threads: before, it returned at once, and a read still in flight then
    reopened an HDF5 file the user closed right after (seen in a full test run)."""
    slow = _SlowOnce(0.3)
    loader = al.Loader.from_source(range(100)).map(slow, executor="thread", concurrency=2).batch(4)
    consumer = threading.Thread(target=lambda: list(loader))
    consumer.start()
    assert slow.started.wait(10)
    loader.close()
    assert slow.finished.is_set(), "close() returned while a call was still running in a thread"
    consumer.join(10)


def test_close_returns_after_a_pull_running_in_the_source_thread_has_returned():
    """The same for a slow iterator, which the source stage pulls in a thread."""
    finished = threading.Event()
    started = threading.Event()

    def slow_stream():
        yield from range(10)  # the first pulls are timed, and the slow one moves pulls to a thread
        threading.Event().wait(0.01)
        yield 10
        started.set()
        threading.Event().wait(0.3)
        finished.set()
        yield from range(11, 20)

    loader = al.Loader.from_source(slow_stream()).batch(2)
    consumer = threading.Thread(target=lambda: list(loader))
    consumer.start()
    assert started.wait(10)
    loader.close()
    consumer.join(10)
    assert finished.is_set(), "close() returned while the iterator was being pulled in a thread"


def test_the_loader_keeps_no_batch_the_consumer_dropped():
    """After the epoch (and after close()) the run kept the last block it handed over, values
    and all: a batch from worker processes kept its shared-memory segment mapped."""
    import weakref

    loader = al.Loader.from_source(range(40)).batch(8)
    with loader:
        refs = [weakref.ref(batch) for batch in loader]
        gc.collect()
        assert all(ref() is None for ref in refs)
        assert loader.state_dict()["epoch"] == 1  # the state needs no values
