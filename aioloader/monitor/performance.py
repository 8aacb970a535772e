"""``DataLoaderPerformanceMonitor``: time, throughput, memory and CPU of any batch loop.

Works with any loader (aioloader or torch): ``start()``, ``record_batch(batch_size)`` after each
batch, ``stop()``; or ``with monitor:`` around the loop; or ``Loader.options(monitor=m)`` and the
Loader records every batch it hands out. Memory and CPU cover this process and its children
(worker processes), sampled at most every ``sample_every`` seconds from ``record_batch`` (no
thread, no timer).
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any

import psutil

from aioloader.monitor.resources import ProcessSet

__all__ = ["DataLoaderPerformanceMonitor"]


class DataLoaderPerformanceMonitor:
    """Measures a loop over batches. ``get_stats()`` keys: ``total_time`` (s),
    ``avg_batch_time`` (s), ``batches_per_second``, ``samples_per_second``, ``total_batches``,
    ``total_samples``, ``avg_memory_usage`` (percent of the machine's memory held by this process
    and its children, RSS summed), ``peak_memory_mb``, ``avg_cpu_usage`` (percent of one core,
    summed over the processes: 200 = two cores busy)."""

    def __init__(self, *, sample_every: float = 0.2) -> None:
        if isinstance(sample_every, bool) or not isinstance(sample_every, (int, float)):
            raise TypeError(f"sample_every must be a number of seconds, got {sample_every!r}")
        if sample_every < 0:
            raise ValueError(f"sample_every must be >= 0, got {sample_every}")
        self.sample_every = float(sample_every)
        self._reset()

    def _reset(self) -> None:
        self._started: float | None = None
        self._stopped: float | None = None
        self._batches = 0
        self._samples = 0
        self._memory: list[float] = []
        self._peak_rss = 0.0
        self._cpu_percent = 0.0
        self._last_sample = 0.0
        self._processes: ProcessSet | None = None

    @property
    def running(self) -> bool:
        return self._started is not None and self._stopped is None

    def start(self) -> DataLoaderPerformanceMonitor:
        """Start (or restart) measuring: counters reset, CPU counted from now."""
        self._reset()
        me = psutil.Process()
        self._processes = ProcessSet([os.getpid(), *(p.pid for p in me.children(recursive=True))])
        self._started = time.perf_counter()
        self._sample()
        return self

    def record_batch(self, batch_size: int = 1) -> None:
        """One batch of ``batch_size`` samples was delivered (starts the monitor if needed)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        if not self.running:
            self.start()
        self._batches += 1
        self._samples += batch_size
        if time.perf_counter() - self._last_sample >= self.sample_every:
            self._sample()

    def stop(self) -> dict[str, float]:
        """Stop measuring; return :meth:`get_stats`. Idempotent."""
        if self.running:
            self._sample()
            self._stopped = time.perf_counter()
        return self.get_stats()

    def _sample(self) -> None:
        if self._processes is None:
            return
        children = []
        try:
            children = [p.pid for p in psutil.Process().children(recursive=True)]
        except psutil.Error:
            pass
        sample = self._processes.sample(children)
        self._memory.append(sample["percent"])
        self._peak_rss = max(self._peak_rss, sample["rss_mb"])
        self._cpu_percent = sample["cpu_percent"]
        self._last_sample = time.perf_counter()

    def get_stats(self) -> dict[str, float]:
        end = self._stopped or time.perf_counter()
        total = 0.0 if self._started is None else end - self._started
        batches = self._batches
        return {
            "total_time": total,
            "avg_batch_time": total / batches if batches else 0.0,
            "batches_per_second": batches / total if total > 0 else 0.0,
            "samples_per_second": self._samples / total if total > 0 else 0.0,
            "total_batches": float(batches),
            "total_samples": float(self._samples),
            "avg_memory_usage": sum(self._memory) / len(self._memory) if self._memory else 0.0,
            "peak_memory_mb": self._peak_rss,
            "avg_cpu_usage": self._cpu_percent,
        }

    def __enter__(self) -> DataLoaderPerformanceMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        stats = self.get_stats()
        return (
            f"DataLoaderPerformanceMonitor(batches={int(stats['total_batches'])}, "
            f"{stats['batches_per_second']:.1f} batches/s, cpu={stats['avg_cpu_usage']:.0f}%)"
        )


def batch_size_of(keys: Any) -> int:
    """Samples in one delivered value, from its block key (a list of members' keys for a batch)."""
    return len(keys) if isinstance(keys, list) else 1
