"""Memory and CPU of the loader's processes: this process plus its worker-pool processes.

RSS is summed over the processes (shared pages count in each, so it is an upper bound; the
benchmark harness uses PSS for exact sums). CPU is the time the processes spent on a core since a
baseline, as a percentage of one core (200% = two cores busy).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import psutil

__all__ = ["ProcessSet", "loader_pids"]


def loader_pids(resources: Iterable[Any] = ()) -> list[int]:
    """This process and the live worker processes of ``resources`` (pools expose ``pids``)."""
    pids = [os.getpid()]
    for resource in resources:
        pids.extend(getattr(resource, "pids", ()) or ())
    return pids


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class ProcessSet:
    """CPU and memory of a changing set of processes, measured from when it was made."""

    def __init__(self, pids: Iterable[int] | None = None) -> None:
        """``pids`` (default: this process) count CPU from now; processes tracked later are
        new ones (worker processes started since), whose whole CPU time counts."""
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_base: dict[int, float] = {}
        self._last_cpu: dict[int, float] = {}  # the last reading of each process, kept if it dies
        self._dead_cpu = 0.0
        self._started = time.perf_counter()
        self.track([os.getpid()] if pids is None else pids, existing=True)

    def track(self, pids: Iterable[int], *, existing: bool = False) -> None:
        """Follow ``pids`` from now on; ``existing``: count their CPU from now, not from birth."""
        for pid in pids:
            if pid in self._procs:
                continue
            try:
                proc = psutil.Process(pid)
                self._cpu_base[pid] = _cpu_seconds(proc) if existing else 0.0
            except psutil.Error:
                continue
            self._procs[pid] = proc

    def sample(self, pids: Iterable[int] | None = None) -> dict[str, Any]:
        """RSS summed over the live processes, its share of the machine's memory, and CPU%."""
        if pids is not None:
            self.track(pids)
        rss = 0
        cpu = 0.0
        alive = 0
        for pid, proc in list(self._procs.items()):
            try:
                used = _cpu_seconds(proc) - self._cpu_base[pid]
                rss += proc.memory_info().rss
            except psutil.Error:  # it ended: keep the CPU it had used when last seen
                del self._procs[pid]
                self._dead_cpu += self._last_cpu.pop(pid, 0.0)
                continue
            self._last_cpu[pid] = used
            cpu += used
            alive += 1
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        return {
            "rss_mb": rss / 2**20,
            "percent": 100.0 * rss / psutil.virtual_memory().total,
            "processes": alive,
            "cpu_percent": 100.0 * (cpu + self._dead_cpu) / elapsed,
        }
