"""Shared fixtures: every test must leave no loader thread, worker process or shm segment."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import threading
import time

import psutil
import pytest

LEAK_DEADLINE_S = 2.0  # docs/design.md guarantee 6: everything is gone within 2 s


def pytest_configure(config: pytest.Config) -> None:
    """The Ctrl-C tests need Python's SIGINT handler, here and in the children they start. A
    shell's background job (``make test &``, nohup, a loop run with ``&``) starts with SIGINT
    ignored: Python then installs none, a raised or sent SIGINT did nothing, and each of those
    tests hung until its timeout."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a child starts with SIG_DFL


def _loader_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("aioloader")}


def _shm_segments() -> set[str]:
    """This process's loader segments (named ``aioloader_<owner pid>_...``): other processes on
    the machine (a benchmark, another test run) must not fail this one."""
    prefix = f"aioloader_{os.getpid()}_"
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


def run_with_repo(
    args: list[str], *, cwd: str | os.PathLike[str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (a fresh interpreter, a script) with this checkout importable, from ``cwd``."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def state_after(loader, k: int, epochs_before: int = 0) -> dict:
    """``loader``'s state after ``epochs_before`` whole epochs and ``k`` batches, loaded back as
    JSON (so a test also checks that it is JSON-serialisable)."""
    with loader:
        for _ in range(epochs_before):
            for _ in loader:
                pass
        it = iter(loader)
        for _ in range(k):
            next(it)
        state = loader.state_dict()
        it.close()
    return json.loads(json.dumps(state))


def wait_threads_gone(
    before: set[threading.Thread], deadline_s: float = LEAK_DEADLINE_S
) -> set[threading.Thread]:
    """Join new loader threads until the deadline; return those still alive."""
    end = time.monotonic() + deadline_s
    left = _loader_threads() - before
    for thread in left:
        thread.join(max(0.0, end - time.monotonic()))
    return {t for t in _loader_threads() - before if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves loader threads, child processes or shm segments behind."""
    # What exists now was there before the test (the previous teardown collected its garbage):
    # frozen, so the gc.collect() below scans only what this test made (the whole heap, torch's
    # included, took ~0.14 s a test) and still collects each of its cycles, finalizers run.
    gc.freeze()
    threads_before = _loader_threads()
    shm_before = _shm_segments()
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    yield
    gc.collect()
    alive = wait_threads_gone(threads_before)
    assert not alive, f"loader threads left running: {sorted(t.name for t in alive)}"
    new_children = [p for p in me.children(recursive=True) if p.pid not in children_before]
    _, still = psutil.wait_procs(new_children, timeout=LEAK_DEADLINE_S)
    assert not still, f"child processes left running: {[p.pid for p in still]}"
    leaked = _shm_segments() - shm_before
    assert not leaked, f"shared-memory segments left in /dev/shm: {sorted(leaked)}"


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_kind(request) -> str:
    """For sync iteration: the background loop kind, so paths are tested with and without uvloop."""
    return request.param


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio: run every async test on asyncio's loop and on uvloop."""
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
