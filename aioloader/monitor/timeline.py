"""A time series of a run: per-stage output rate and queue occupancy, sampled on the loop.

A :class:`Timeline` re-arms itself with ``loop.call_later`` (no task, no sleep loop): each tick
reads counters the stages already keep (items out, channel lengths), which costs microseconds.
Other periodic work of a run (the autotuner) hooks into the same tick with :meth:`on_tick`.
The series is kept bounded: when it is full, every other point is dropped and the period doubles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Timeline", "occupancy"]

PERIOD_S = 0.25
MAX_POINTS = 512


def occupancy(channel: Any) -> int:
    """Entries waiting in a channel or in the sync hand-off (which counts puts and takes)."""
    if channel is None:
        return 0
    try:
        return len(channel)
    except TypeError:
        return max(0, getattr(channel, "_put", 0) - getattr(channel, "_taken", 0))


class Timeline:
    """Samples ``stages`` (objects with ``name`` and ``stats``) every ``period`` seconds."""

    def __init__(self, stages: Sequence[Any], period: float = PERIOD_S) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, got {period!r}")
        self.period = period
        self._stages = list(stages)
        self._started = time.perf_counter()
        self._last_out = [0] * len(self._stages)
        self._last_t = self._started
        self.t: list[float] = []
        self.rate: dict[str, list[float]] = {s.name: [] for s in self._stages}
        self.queue: dict[str, list[int]] = {s.name: [] for s in self._stages}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hooks: list[Callable[[float], None]] = []

    def on_tick(self, hook: Callable[[float], None]) -> None:
        """Call ``hook(dt)`` after each sample (on the loop thread)."""
        self._hooks.append(hook)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._started = self._last_t = time.perf_counter()
        self._handle = loop.call_later(self.period, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def _tick(self) -> None:
        if self._loop is None:
            return
        self.sample()
        self._handle = self._loop.call_later(self.period, self._tick)

    def sample(self) -> None:
        now = time.perf_counter()
        dt = max(now - self._last_t, 1e-9)
        self._last_t = now
        self.t.append(round(now - self._started, 4))
        for i, stage in enumerate(self._stages):
            out = stage.stats.items_out
            self.rate[stage.name].append(round((out - self._last_out[i]) / dt, 2))
            self._last_out[i] = out
            channel = getattr(stage, "output", None)
            self.queue[stage.name].append(occupancy(channel))
        if len(self.t) >= MAX_POINTS:
            self._thin()
        for hook in self._hooks:
            hook(dt)

    def _thin(self) -> None:
        """Keep every other point and sample half as often: the series stays bounded."""
        self.t = self.t[1::2]
        for series in (self.rate, self.queue):
            for name in series:
                series[name] = series[name][1::2]
        self.period *= 2

    def to_json(self) -> dict[str, Any]:
        return {
            "period_s": self.period,
            "t": list(self.t),
            "rate": {name: list(v) for name, v in self.rate.items()},
            "queue": {name: list(v) for name, v in self.queue.items()},
        }
