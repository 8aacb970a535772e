"""Per-stage statistics and the run summary returned by ``Loader.stats()``.

A stage counts items in and out and its busy time; the channels around it count the time it
spent blocked waiting for input and for room downstream, and sample their own occupancy.

The bottleneck is the stage that the others wait for. A stage's *utilization* is the share of
its time it spent neither waiting for input nor for room downstream: a stage that limits
throughput always has input (its upstream is blocked on it) and always has room (its downstream
is starved). Busy time alone misleads: a thread stage whose function waits on the GIL is "busy"
while it makes no progress, and an inline stage on a saturated loop looks idle. The consumer
(the training step) is a candidate too: when it rarely waits for a batch, it is the bottleneck
and ``bottleneck`` says ``"consumer"``. Near ties go to the stage with the higher busy fraction.
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
    errors: int = 0
    concurrency: int | None = None  # the current in-flight limit of a tuned stage
    placement: dict[str, Any] | None = None  # what executor="auto" measured and chose
    fused: str | None = None  # the batch stage this map stage runs with (aioloader._run.fusion)
    reads: str | None = None  # the read stage this map stage's workers run (aioloader._run.read_fusion)
    describe_workers: Any = None  # () -> a list of dicts: a Ray stage's actors (aioloader.ray)
    bytes_read: int | None = None  # bytes its workers read from storage (a fused shard stream)
    reorder: Any = None  # a fused shard stream's bound on results held for reordering (HeldGate)
    by_worker: dict[int, dict[str, float]] | None = None  # a fused shard stream's, by worker pid
    # a fused shard stream's measure of who reads (aioloader._run.stream_reads)
    read_choice: dict[str, Any] | None = None

    def snapshot(self, now: float, run_elapsed: float | None = None) -> dict[str, Any]:
        """``run_elapsed``: the run's duration; a stage that finished early was not limiting
        anyone after it ended, so its utilization counts over the whole run."""
        elapsed = max((self.finished or now) - self.started, 1e-9)
        wait_in = self.input.get_wait_s if self.input is not None else 0.0
        wait_out = self.output.put_wait_s if self.output is not None else 0.0
        snapshot = {
            "name": self.name,
            "executor": self.executor,
            "workers": self.workers,
            "items_in": self.items_in,
            "items_out": self.items_out,
            "rate": self.items_out / elapsed,
            "busy": min(self.busy_s / (elapsed * self.workers), 1.0),
            "utilization": max(0.0, elapsed - wait_in - wait_out) / max(elapsed, run_elapsed or 0.0),
            "concurrency": self.concurrency if self.concurrency is not None else self.workers,
            "errors": self.errors,
            "placement": self.placement,
            "fused": self.fused,
            "reads": self.reads,
            "wait_input_s": wait_in,
            "wait_output_s": wait_out,
            "queue_mean": self.output.occupancy_mean() if self.output is not None else 0.0,
            "queue_max": self.output.occupancy_max if self.output is not None else 0,
            "queue_capacity": self.output.capacity if self.output is not None else 0,
        }
        if self.describe_workers is not None:
            snapshot["actors"] = self.describe_workers()
        if self.bytes_read is not None:
            snapshot["bytes_read"] = self.bytes_read
        if self.by_worker is not None:
            snapshot["by_worker"] = [{"pid": pid, **done} for pid, done in sorted(self.by_worker.items())]
        if self.read_choice is not None:
            snapshot["read_choice"] = self.read_choice
        if self.reorder is not None:
            snapshot["reorder_bytes"] = {"peak": self.reorder.peak, "limit": self.reorder.limit}
        return snapshot


class ErrorLog:
    """Failures a stage skipped under ``on_error="skip"``: key, type and message of each."""

    def __init__(self) -> None:
        self.count = 0
        self.by_stage: dict[str, int] = {}
        self.entries: deque[dict[str, Any]] = deque(maxlen=_MAX_ERRORS_KEPT)

    def record(self, stage: str, key: Any, exc: BaseException) -> None:
        self.count += 1
        self.by_stage[stage] = self.by_stage.get(stage, 0) + 1
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


_TIE = 0.05  # utilizations this close are a tie, broken by busy fraction


def bottleneck(per_stage: list[dict[str, Any]], consumer: dict[str, Any] | None) -> str | None:
    """The name of the stage (or ``"consumer"``) the rest of the pipeline waits for."""
    candidates = [(s["name"], s["utilization"], s["busy"]) for s in per_stage]
    if consumer is not None:
        candidates.append(("consumer", consumer["utilization"], consumer["utilization"]))
    if not candidates:
        return None
    top = max(u for _, u, _ in candidates)
    near = [c for c in candidates if c[1] >= top - _TIE]
    return max(near, key=lambda c: (c[2], c[1]))[0]


def pipeline_stats(
    stages: list[StageStats],
    errors: ErrorLog,
    *,
    started: float,
    first_output: float | None,
    samples: int,
    batches: int,
    consumer_wait_s: float | None = None,
    ended: float | None = None,
    resources: dict[str, Any] | None = None,
    timeline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-serialisable summary of a run (see ``Loader.stats``). ``consumer_wait_s``: the
    time the consumer spent waiting for the next block (None: not measured, no consumer entry);
    ``ended``: when the consumer saw the end (the run's clock stops there); ``resources``: a
    :class:`~aioloader.monitor.resources.ProcessSet` sample; ``timeline``: the time series."""
    now = time.perf_counter() if ended is None else ended
    elapsed = max(now - started, 1e-9)
    for stage in stages:
        stage.errors = errors.by_stage.get(stage.name, 0)
    per_stage = [s.snapshot(now, elapsed) for s in stages]
    consumer = None
    if consumer_wait_s is not None and started:
        consumer = {
            "wait_s": consumer_wait_s,
            "utilization": max(0.0, 1.0 - consumer_wait_s / elapsed),
        }
    resources = resources or {}
    return {
        "elapsed_s": elapsed,
        "samples": samples,
        "batches": batches,
        "samples_per_s": samples / elapsed,
        "batches_per_s": batches / elapsed,
        "time_to_first_batch_s": None if first_output is None else first_output - started,
        "stages": per_stage,
        "consumer": consumer,
        "bottleneck": bottleneck(per_stage, consumer),
        "memory": {k: resources[k] for k in ("rss_mb", "percent", "processes") if k in resources},
        "cpu_percent": resources.get("cpu_percent"),
        "errors": list(errors.entries),
        "error_count": errors.count,
        "timeline": timeline,
    }
