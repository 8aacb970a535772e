"""Per-stage statistics and the run summary returned by ``Loader.stats()``.

A stage counts items in and out and its busy time; the channels around it count the time it
spent blocked waiting for input and for room downstream, and sample their own occupancy. The
bottleneck is the stage with the highest busy fraction (a stage busy all the time limits the
rate of everything after it).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioloader._run.channel import Channel

_MAX_ERRORS_KEPT = 1000


@dataclass(slots=True)
class StageStats:
    name: str
    workers: int = 1
    items_in: int = 0
    items_out: int = 0
    busy_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    executor: str = "inline"
    input: Channel | None = None
    output: Channel | None = None

    def snapshot(self, now: float) -> dict[str, Any]:
        elapsed = max((self.finished or now) - self.started, 1e-9)
        wait_in = self.input.get_wait_s if self.input is not None else 0.0
        wait_out = self.output.put_wait_s if self.output is not None else 0.0
        return {
            "name": self.name,
            "executor": self.executor,
            "workers": self.workers,
            "items_in": self.items_in,
            "items_out": self.items_out,
            "rate": self.items_out / elapsed,
            "busy": min(self.busy_s / (elapsed * self.workers), 1.0),
            "wait_input_s": wait_in,
            "wait_output_s": wait_out,
            "queue_mean": self.output.occupancy_mean() if self.output is not None else 0.0,
            "queue_max": self.output.occupancy_max if self.output is not None else 0,
            "queue_capacity": self.output.capacity if self.output is not None else 0,
        }


class ErrorLog:
    """Failures a stage skipped under ``on_error="skip"``: key, type and message of each."""

    def __init__(self) -> None:
        self.count = 0
        self.entries: deque[dict[str, Any]] = deque(maxlen=_MAX_ERRORS_KEPT)

    def record(self, stage: str, key: Any, exc: BaseException) -> None:
        self.count += 1
        self.entries.append(
            {"stage": stage, "key": _jsonable(key), "type": type(exc).__name__, "message": str(exc)}
        )


def _jsonable(key: Any) -> Any:
    if isinstance(key, (str, int, float, bool)) or key is None:
        return key
    if isinstance(key, (list, tuple)):
        return [_jsonable(k) for k in key]
    try:
        return int(key)
    except (TypeError, ValueError):
        return repr(key)


def pipeline_stats(
    stages: list[StageStats],
    errors: ErrorLog,
    *,
    started: float,
    first_output: float | None,
    samples: int,
    batches: int,
) -> dict[str, Any]:
    now = time.perf_counter()
    elapsed = max(now - started, 1e-9)
    per_stage = [s.snapshot(now) for s in stages]
    bottleneck = max(per_stage, key=lambda s: s["busy"])["name"] if per_stage else None
    return {
        "elapsed_s": elapsed,
        "samples": samples,
        "batches": batches,
        "samples_per_s": samples / elapsed,
        "batches_per_s": batches / elapsed,
        "time_to_first_batch_s": None if first_output is None else first_output - started,
        "stages": per_stage,
        "bottleneck": bottleneck,
        "errors": list(errors.entries),
        "error_count": errors.count,
    }
