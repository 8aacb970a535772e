"""Autotuning: how many chunks a map stage keeps in flight (``concurrency="auto"``).

Placement (``executor="auto"``) lives in :mod:`aioloader._run.placement`, next to the
executors; its names are re-exported here.

**Concurrency.** :class:`Tuner` hill-climbs each tuned stage's in-flight limit on the delivered
samples/s, measured over windows of the run's timeline ticks: step, keep the step if the rate rose
by more than :data:`GAIN`, else revert and turn; after two failed turns hold for a while and try
again. Steps up stop at the CPU budget (the cores, when the loader's processes already use them)
and when the memory budget (``max_memory_usage`` of the available memory) is reached, where the
stage steps down and its output queue shrinks back. The output queue grows with the limit so the
chunks that finish together have room.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from time import perf_counter
from typing import Any

import psutil

# Re-exported: placement moved next to the executors.
from aioloader._run.placement import (
    INLINE_BELOW_S,
    PROBE_S,
    THREAD_ABOVE_S,
    Limiter,
    PlacementProbe,
    gil_blocked_fraction,
    place,
)

__all__ = [
    "INLINE_BELOW_S",
    "PROBE_S",
    "THREAD_ABOVE_S",
    "Limiter",
    "PlacementProbe",
    "Tuner",
    "gil_blocked_fraction",
    "place",
]

GAIN = 0.03  # a step must raise samples/s by more than this fraction to be kept
WINDOW_TICKS = 2  # timeline ticks per measurement window
HOLD_WINDOWS = 8  # windows to stay put after the climb settles
MEMORY_BUDGET = 0.8  # of the memory available when the run started


class _Climb:
    """Hill-climbing state of one stage."""

    def __init__(self, stage: Any, limit: int, maximum: int) -> None:
        self.stage = stage
        self.limit = limit
        self.maximum = maximum
        self.base_depth = stage.output.capacity
        self.direction = 1
        self.previous: int | None = None  # the limit before the step being judged
        self.best: float | None = None
        self.turns = 0
        self.hold = 0
        self.history: list[int] = [limit]


class Tuner:
    """``concurrency="auto"``: hill-climbs the in-flight limit of the map stages named in
    ``tuned`` on the run's delivered samples/s. Driven by the run's timeline ticks."""

    def __init__(self, run: Any, tuned: set[str], pids: Callable[[], list[int]]) -> None:
        self._run = run
        self._tuned = tuned
        self._pids = pids
        self._climbs: list[_Climb] = []
        self._turn = 0
        self._ticks = 0
        self._samples = 0
        self._elapsed = 0.0
        self._cores = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
        self._memory_budget = MEMORY_BUDGET * psutil.virtual_memory().available
        self._cpu_mark: tuple[float, float] | None = None

    def prepare(self) -> None:
        """Before the stages start: size their pools for the budget, the limit starts low."""
        for stage in self._run.stages:
            if stage.name in self._tuned and hasattr(stage, "enable_tuning"):
                maximum = 2 * self._cores
                stage.enable_tuning(maximum)
                self._climbs.append(_Climb(stage, stage.concurrency_limit, maximum))

    def tick(self, dt: float) -> None:
        """One timeline tick: accumulate; at the end of a window, judge and step."""
        self._ticks += 1
        self._elapsed += dt
        if self._ticks % WINDOW_TICKS or not self._climbs:
            return
        samples = self._run.samples
        rate = (samples - self._samples) / max(self._elapsed, 1e-9)
        self._samples, self._elapsed = samples, 0.0
        climb = self._climbs[self._turn % len(self._climbs)]
        if not getattr(climb.stage, "tunable", False):  # not running concurrently (yet)
            return
        if self._over_memory():
            self._apply(climb, max(1, climb.limit - 1))
            climb.stage.output.capacity = climb.base_depth
            climb.previous, climb.best = None, None
            return
        self._step(climb, rate)

    def _step(self, climb: _Climb, rate: float) -> None:
        if climb.hold:
            climb.hold -= 1
            if not climb.hold:
                climb.best, climb.turns, climb.direction = None, 0, 1
            return
        if climb.previous is not None and climb.best is not None:
            if rate > climb.best * (1 + GAIN):  # the step helped: keep going
                climb.best = rate
            else:  # it did not: go back and turn
                self._apply(climb, climb.previous)
                self._reverse(climb)
                return
        else:
            climb.best = rate if climb.best is None else max(climb.best, rate)
        target = climb.limit + climb.direction
        if target < 1 or target > climb.maximum or (climb.direction > 0 and self._cpu_full()):
            self._reverse(climb)
            return
        climb.previous = climb.limit
        self._apply(climb, target)

    def _reverse(self, climb: _Climb) -> None:
        """Turn the climb around; after two turns without a gain, hold for a while."""
        climb.direction = -climb.direction
        climb.turns += 1
        climb.previous = None
        if climb.turns >= 2:
            climb.hold = HOLD_WINDOWS
            self._turn += 1

    def _apply(self, climb: _Climb, limit: int) -> None:
        climb.limit = limit
        climb.stage.set_concurrency_limit(limit)
        climb.stage.output.capacity = max(climb.base_depth, limit)
        climb.history.append(limit)
        del climb.history[:-32]

    def _cpu_full(self) -> bool:
        """The loader's processes already keep every core busy (over the last window)."""
        cpu = 0.0
        for pid in self._pids():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            cpu += times.user + times.system
        now = perf_counter()
        mark, self._cpu_mark = self._cpu_mark, (now, cpu)
        if mark is None:
            return False
        return (cpu - mark[1]) / max(now - mark[0], 1e-9) >= 0.95 * self._cores

    def _over_memory(self) -> bool:
        rss = 0
        for pid in self._pids():
            try:
                rss += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        return rss > self._memory_budget

    def describe(self) -> dict[str, Any]:
        return {
            c.stage.name: {
                "concurrency": c.limit,
                "queue_depth": c.stage.output.capacity,
                "history": c.history,
            }
            for c in self._climbs
        }
