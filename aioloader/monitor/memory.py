"""Machine memory as the loader sees it: usage, peak, and the budget ``max_memory_usage`` sets.

The budget is a fraction of the memory *available now* (``psutil.virtual_memory().available``):
what can still be taken before the machine swaps. Eager loading checks it before loading and the
cached mode sizes its LRU cache from it.
"""

from __future__ import annotations

import numbers
import time
from typing import Any

import psutil

__all__ = ["MemoryMonitor", "check_fraction"]

_GB = 2**30


def check_fraction(value: Any, argument: str) -> float:
    """``value`` as a float in (0, 1]; ``TypeError``/``ValueError`` naming ``argument`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be a number in (0, 1], got {type(value).__name__}: {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{argument} must be in (0, 1], got {value!r}")
    return float(value)


class MemoryMonitor:
    """Samples system and process memory with psutil.

    ``max_memory_usage``: the fraction of available memory the loader may take (the budget).
    Call :meth:`start_monitoring` to reset the peak, :meth:`update` to take a sample, and
    :meth:`get_memory_stats` to read the last sample (taking one if none was taken).
    """

    def __init__(self, max_memory_usage: float = 0.8) -> None:
        self.max_memory_usage = check_fraction(max_memory_usage, "max_memory_usage")
        self._process = psutil.Process()
        self._started: float | None = None
        self._baseline_used = 0
        self._peak_used = 0
        self._peak_process = 0
        self._last: dict[str, float] | None = None

    def start_monitoring(self) -> None:
        """Start (or restart) a monitoring period: the peak and the baseline are reset."""
        self._started = time.monotonic()
        memory = psutil.virtual_memory()
        self._baseline_used = memory.used
        self._peak_used = memory.used
        self._peak_process = self._process.memory_info().rss
        self._last = None
        self.update()

    def update(self) -> dict[str, float]:
        """Take a sample now; return the stats (as :meth:`get_memory_stats`)."""
        memory = psutil.virtual_memory()
        rss = self._process.memory_info().rss
        self._peak_used = max(self._peak_used, memory.used)
        self._peak_process = max(self._peak_process, rss)
        self._last = {
            "used_gb": memory.used / _GB,
            "available_gb": memory.available / _GB,
            "total_gb": memory.total / _GB,
            "percent": float(memory.percent),
            "process_gb": rss / _GB,
            "peak_used_gb": self._peak_used / _GB,
            "peak_process_gb": self._peak_process / _GB,
            "budget_gb": self.max_memory_usage * memory.available / _GB,
            "elapsed_s": 0.0 if self._started is None else time.monotonic() - self._started,
        }
        return dict(self._last)

    def get_memory_stats(self) -> dict[str, float]:
        """The last sample: ``used_gb``, ``available_gb``, ``total_gb``, ``percent`` (system),
        ``process_gb`` (this process's RSS), the peaks since :meth:`start_monitoring`, and
        ``budget_gb`` (``max_memory_usage`` x available)."""
        if self._last is None:
            return self.update()
        return dict(self._last)

    def budget_bytes(self) -> int:
        """``max_memory_usage`` x the memory available now, in bytes."""
        return int(self.max_memory_usage * psutil.virtual_memory().available)

    def check_memory_constraint(self, nbytes: int) -> bool:
        """Whether taking ``nbytes`` more stays within the budget."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
            raise TypeError(f"nbytes must be an int, got {type(nbytes).__name__}: {nbytes!r}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        return int(nbytes) <= self.budget_bytes()

    def __repr__(self) -> str:
        stats = self.get_memory_stats()
        return (
            f"MemoryMonitor(max_memory_usage={self.max_memory_usage}, used={stats['used_gb']:.2f} GB, "
            f"available={stats['available_gb']:.2f} GB)"
        )
