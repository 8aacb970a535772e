"""How worker processes start (``aioloader.workers._spawn``): forked from this process, as torch
DataLoader's are (milliseconds, where a fresh interpreter importing torch took seconds), yet
with what spawn protects: no inherited thread, no CUDA context (a process that has one spawns),
and ``__main__`` as a spawned worker sees it (tests/test_workers.py checks the main guard)."""

from __future__ import annotations

import os
import sys
import threading

import psutil
import pytest
import torch

import aioloader as al
from aioloader.workers._spawn import START_METHOD_ENV, fork_allowed


def describe(_: int) -> tuple[int, list[str], int, int, str | None]:
    """What a worker sees: its pid, its Python threads, its OS threads, torch's intra-op
    threads and OMP_NUM_THREADS."""
    names = sorted(t.name for t in threading.enumerate())
    tasks = len(os.listdir("/proc/self/task"))
    return os.getpid(), names, tasks, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def _describe_workers(workers: int = 2) -> tuple[list[tuple], dict[int, tuple[list[str], int]]]:
    """What each worker saw, and each worker's command line and parent pid."""
    with al.Loader.from_source(range(4)).map(describe, executor="process", concurrency=workers) as loader:
        seen = list(loader)
        procs = {pid: psutil.Process(pid) for pid in {s[0] for s in seen}}
        return seen, {pid: (p.cmdline(), p.ppid()) for pid, p in procs.items()}


@pytest.mark.skipif(not fork_allowed(), reason="workers are spawned here (not Linux, or CUDA is initialised)")
def test_workers_are_forked_and_inherit_no_thread() -> None:
    torch.ones(64, 64) @ torch.ones(64, 64)  # this process has torch's threads and the loader's
    seen, procs = _describe_workers()
    for pid, names, tasks, torch_threads, omp in seen:
        cmdline, parent = procs[pid]
        assert pid != os.getpid() and parent == os.getpid()
        assert cmdline == psutil.Process().cmdline()  # a fork: no new interpreter was executed
        # the main thread and the worker's lifeline watcher, nothing of this process's
        assert len(names) == 2 and "MainThread" in names and not any("aioloader" in n for n in names)
        assert tasks == 2
        assert (torch_threads, omp) == (1, "1")


def test_workers_are_spawned_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    assert not fork_allowed()
    seen, procs = _describe_workers(1)  # a fresh interpreter imports torch: seconds
    for pid, *_, torch_threads, omp in seen:
        cmdline, _ = procs[pid]
        assert "-c" in cmdline and cmdline[0] == sys.executable
        assert (torch_threads, omp) == (1, "1")


def test_no_fork_once_cuda_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA context cannot cross a fork: the workers of a process that has one are spawned.
    (No GPU here: torch's own answer to whether CUDA is initialised stands in for one.)"""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert not fork_allowed()


class RecordDraws:
    """worker_init: writes the worker's first draws from the global generators to a file."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, worker_id: int) -> None:
        import random

        import numpy as np

        draws = [random.random(), float(np.random.random()), float(torch.rand(1))]
        path = os.path.join(self.folder, str(worker_id))
        with open(path + ".tmp", "w") as f:
            f.write(repr(draws))
        os.replace(path + ".tmp", path)  # whole, once it exists


def test_each_worker_starts_with_its_own_global_random_state(tmp_path) -> None:
    """Forked workers would all draw this process's next numbers: each is seeded afresh."""
    import ast
    import time

    init = RecordDraws(str(tmp_path))
    with al.Loader.from_source(range(4)).map(abs, executor="process", concurrency=2, worker_init=init) as loader:
        assert sorted(loader) == [0, 1, 2, 3]
        # one worker may have run every task: the pool stays open until the other has started
        deadline = time.monotonic() + 60
        while not (tmp_path / "1").exists() or not (tmp_path / "0").exists():
            assert time.monotonic() < deadline, "a worker did not start within 60 s"
            time.sleep(0.01)
    first, second = (ast.literal_eval((tmp_path / name).read_text()) for name in ("0", "1"))
    assert all(a != b for a, b in zip(first, second, strict=True))


def say(worker_id: int) -> None:
    print(f"worker {worker_id} ready")


def test_a_worker_prints_when_this_process_redirected_stdout(tmp_path, monkeypatch) -> None:
    """A parent whose ``sys.stdout`` is a file (a log, a test's capture): the forked worker
    closed that descriptor, and ``print`` in ``worker_init`` failed with EBADF."""
    with open(tmp_path / "log.txt", "w", buffering=1) as log:  # line-buffered: print writes at once
        monkeypatch.setattr(sys, "stdout", log)
        loader = al.Loader.from_source(range(6)).map(abs, executor="process", concurrency=2, worker_init=say)
        with loader:
            assert list(loader) == list(range(6))
