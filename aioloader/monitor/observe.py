"""What watches a run while it runs: the time series, the process set (memory, CPU) and the
autotuner, all driven by one loop-thread timer; and the assembly of ``Run.stats()``.

The run owns one :class:`RunMonitor`, made when the run starts and stopped when it closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aioloader.monitor.resources import ProcessSet, loader_pids
from aioloader.monitor.stats import pipeline_stats
from aioloader.monitor.timeline import Timeline

__all__ = ["RunMonitor", "run_stats"]


class RunMonitor:
    """Starts with the run (on its loop) and stops with it. ``run`` is a ``_run.graph.Run``."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.timeline = Timeline(run.stages)
        self.processes = ProcessSet()
        self.tuner: Any = None
        options = getattr(run, "options", None)
        tuned = (options.extras.get("autotune") if options is not None else None) or ()
        if tuned:
            from aioloader.monitor.autotune import Tuner

            self.tuner = Tuner(run, set(tuned), self.pids)
            self.timeline.on_tick(self.tuner.tick)

    def pids(self) -> list[int]:
        runtime = self._run.runtime
        resources = list(runtime.resources.values()) if runtime is not None else []
        return loader_pids(resources)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.tuner is not None:
            self.tuner.prepare()
        self.timeline.start(loop)

    def stop(self) -> None:
        self.timeline.stop()

    def resources(self) -> dict[str, Any]:
        return self.processes.sample(self.pids())


def run_stats(run: Any) -> dict[str, Any]:
    """``Loader.stats()`` of one run (``run`` is a ``_run.graph.Run``)."""
    monitor: RunMonitor | None = getattr(run, "monitor", None)
    stats = pipeline_stats(
        [s.stats for s in run.stages],
        run.errors,
        started=run.started,
        first_output=run.first_output,
        samples=run.samples,
        batches=run.batches,
        consumer_wait_s=run.delivery.consumer_wait_s,
        ended=run.delivery.ended,
        resources=monitor.resources() if monitor is not None else None,
        timeline=monitor.timeline.to_json() if monitor is not None else None,
    )
    if monitor is not None and monitor.tuner is not None:
        stats["autotune"] = monitor.tuner.describe()
    _user_order(stats["stages"])
    return stats


def _user_order(stages: list[dict[str, Any]]) -> None:
    """A fused map stage runs after the batch stage that groups its items; list it where the
    user wrote it, before that batch stage."""
    for i in range(1, len(stages)):
        if stages[i].get("fused") is not None and stages[i - 1]["name"] == stages[i]["fused"]:
            stages[i - 1], stages[i] = stages[i], stages[i - 1]
