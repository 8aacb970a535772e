"""Build one run (an epoch) from a Loader spec, and supervise it as one task group.

The first stage to fail records its exception and cancels every other stage; the consumer then
gets that exception (annotated with stage and key) instead of the end of the stream. ``aclose``
cancels and awaits every task and closes every executor the run owns, on every exit path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aioloader._run.block import Block
from aioloader._run.channel import Channel, EndOfChannel
from aioloader._run.decisions import Decisions
from aioloader._run.failures import FailurePolicy
from aioloader._run.fusion import fuse_map_batch
from aioloader._run.interrupt import interrupted
from aioloader._run.read_fusion import fuse_read
from aioloader._run.stages.batch import BatchStage
from aioloader._run.stages.filter import FilterStage
from aioloader._run.stages.map import MapStage
from aioloader._run.stages.shard_source import ShardSource
from aioloader._run.stages.source import AsyncIterSource, IterSource, KeySource
from aioloader._run.stages.unbatch import UnbatchStage
from aioloader._spec import (
    BatchSpec,
    FilterSpec,
    MapSpec,
    Options,
    PrefetchSpec,
    SourceSpec,
    StageSpec,
    UnbatchSpec,
)
from aioloader.monitor.observe import RunMonitor, run_stats
from aioloader.monitor.stats import ErrorLog, StageStats
from aioloader.order.orders import order_sequence, resolve_order
from aioloader.order.reservoir import ReservoirState
from aioloader.order.resume import ResumePoint, remaining_order
from aioloader.order.sequence import KeySequence
from aioloader.order.sharding import RankInfo, resolve_rank, shard_sequence
from aioloader.sources._adapt import AdaptedSource, AsyncIterableSource, IndexableSource, ShardStreamSource

# Channel depth in blocks: sample blocks are small and cheap stages pay a task wake-up per
# empty/full transition, so they get a deeper channel than batches (``prefetch(n)`` sets it).
DEFAULT_DEPTH = 2
SAMPLE_DEPTH = 4
DEFAULT_BLOCK = 64
MAX_CHUNK_BLOCK = 1 << 16
MAX_BLOCK = 1024
# At the end of a run, how long to wait for calls still running in threads (which cannot be
# stopped), within the 2 s a close may take (docs/design.md guarantee 6).
DRAIN_S = 1.5


class Stage(Protocol):
    name: str
    stats: StageStats

    async def run(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Everything a run is built from (the Loader's immutable spec)."""

    source_spec: SourceSpec
    source: AdaptedSource
    stages: tuple[StageSpec, ...]
    options: Options


def block_size_for(pipeline: Pipeline) -> int:
    if pipeline.options.block_size is not None:
        return pipeline.options.block_size
    window_keys = getattr(pipeline.source_spec.order, "window_keys", None)
    if window_keys is not None and isinstance(pipeline.source, IndexableSource):
        return max(1, min(MAX_CHUNK_BLOCK, window_keys(pipeline.source.length)))  # whole chunks per read
    for spec in pipeline.stages:
        if isinstance(spec, BatchSpec):
            return max(1, min(MAX_BLOCK, spec.size))
        if isinstance(spec, FilterSpec):
            break
    return DEFAULT_BLOCK


def epoch_keys(
    pipeline: Pipeline, epoch: int, rank: RankInfo, elastic: list[dict[str, Any]] | None = None
) -> KeySequence:
    """This rank's keys for ``epoch`` of an indexable source, by position: the source's key
    order, less what earlier generations of ranks delivered on an elastic resume, sharded. No
    order is built; its ``cuts`` say where reads should start a new block (chunk windows)."""
    spec, source = pipeline.source_spec, pipeline.source
    if not isinstance(source, IndexableSource):
        raise TypeError("epoch_keys needs an indexable source")
    order = spec.order if spec.order is not None else resolve_order(spec.shuffle, source.obj)
    keys = order_sequence(order, source.length, spec.seed, epoch)
    if elastic:
        keys = remaining_order(keys, elastic)
    return shard_sequence(keys, rank, spec.shard_policy)


def read_policy(stages: Sequence[StageSpec], source: Any = None) -> tuple[str, int | float]:
    """``on_error`` and ``max_failures`` for reading the source: a source that skips what it
    cannot read by its own setting (``read_failures``, as an indexed WebDataset's ``on_error``)
    keeps that; otherwise those of the pipeline's first ``.map`` (the decode), so
    ``on_error="skip"`` there also skips a sample that cannot be read (a file gone or unreadable,
    a bad line), with a budget of its own of the same size."""
    own = getattr(source, "read_failures", None)
    if own is not None and own[0] == "skip":
        return own
    first = next((s for s in stages if isinstance(s, MapSpec)), None)
    return ("raise", 0) if first is None else (first.on_error, first.max_failures)


def read_spec(source: IndexableSource, stages: Sequence[StageSpec] = ()) -> MapSpec:
    """The implicit read stage of an indexable source: keys to samples."""
    on_error, max_failures = read_policy(stages, source.obj)
    policy = {"on_error": on_error, "max_failures": max_failures}
    if source.aget_one is not None:
        return MapSpec(
            name="read", fn=source.aget_one, is_async=True, concurrency=source.read_concurrency, **policy
        )
    if source.get_many is not None:
        return MapSpec(name="read", fn=source.get_many, per_block=True, item_fn=source.get_one, **policy)
    return MapSpec(name="read", fn=source.get_one, **policy)


class Run:
    """One epoch: stages, the channels between them, their tasks. Owned by one consumer."""

    def __init__(
        self,
        pipeline: Pipeline,
        epoch: int,
        decisions: Decisions,
        sink: Any = None,
        runtime: Any = None,
        resume: ResumePoint | None = None,
    ) -> None:
        """``sink``: a consumer-side replacement for the final channel (the sync hand-off),
        made as ``sink(depth)``; by default the run ends in a :class:`Channel`. ``runtime``: the
        Loader's Runtime (long-lived resources such as process pools), None for a bare run.
        ``resume``: where to start in the epoch (``Loader.load_state_dict``)."""
        self.epoch = epoch
        self.seed = pipeline.source_spec.seed
        self.resume = resume
        self.reservoir: Any = None  # the shuffle stage, when the pipeline has one
        # the seqs of the block the consumer is in (not its values: those are the consumer's; a
        # batch kept here after the epoch, or after close(), kept its segment mapped)
        self.current_seqs: list[Any] | None = None
        self.current_count = 0  # how many items of it the consumer has received
        self.completed = False  # the consumer reached the end of the epoch
        self.cancelled = False  # stopped by Loader.close(): the epoch is not complete
        self.epoch_length: int | None = None  # this rank's keys in the epoch (indexable sources)
        self.runtime = runtime
        self.errors = ErrorLog()
        self.rank = resolve_rank(pipeline.source_spec.rank, pipeline.source_spec.world_size)
        self.stages: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._error: BaseException | None = None
        self._closed = False
        self.drain_s = DRAIN_S  # how long aclose() waits for calls still running in threads
        self.started = time.perf_counter()
        self.first_output: float | None = None
        self.samples = 0
        self.batches = 0
        self.on_close: list[Any] = []  # callbacks run once every task has ended
        self.on_stop: list[Any] = []  # callbacks run once the tasks ended, before the drain
        self._drain_cut: asyncio.Event | None = None
        self.options = pipeline.options
        self.consumer_wait_s = 0.0  # time the consumer waited for a block (set by the Loader)
        self.ended: float | None = None  # when the consumer saw the end of the epoch
        self.monitor: RunMonitor | None = None  # time series, memory/CPU, autotuner
        self._io_closers: list[Any] = []  # coroutine functions closing a source's connections
        self._build(pipeline, decisions, sink)

    # -- building --------------------------------------------------------------------------
    def _build(self, pipeline: Pipeline, decisions: Decisions, sink: Any) -> None:
        block = block_size_for(pipeline)
        source = pipeline.source
        expected: int | None = None
        start, prefix = (self.resume.position, self.resume.prefix) if self.resume else (0, [])
        if isinstance(source, IndexableSource):
            keys = epoch_keys(pipeline, self.epoch, self.rank, self.resume.elastic if self.resume else None)
            expected = len(keys)
            self.epoch_length = expected
            self.stages.append(KeySource(keys, block, start=start, prefix=prefix))
            specs: list[StageSpec] = fuse_read(
                source, [read_spec(source, pipeline.stages), *fuse_map_batch(pipeline.stages)]
            )
            closer = getattr(source.obj, "aclose_io", None)
            if closer is not None:  # connections the reads opened on this run's loop
                self._io_closers.append(closer)
        elif isinstance(source, ShardStreamSource):
            self.stages.append(self._shard_source(pipeline, block, start, prefix))
            specs = fuse_map_batch(pipeline.stages)
        else:
            if source.one_shot:
                # A second run would silently lose what the first one read ahead of the consumer.
                if decisions.one_shot_started:
                    raise ValueError(
                        "the source is a one-shot iterator (an iterator or generator object) and "
                        "can be iterated once; pass a re-iterable (a list, a Dataset, an object "
                        "whose __iter__ starts over) to run several epochs"
                    )
                decisions.one_shot_started = True
            stage_type = AsyncIterSource if isinstance(source, AsyncIterableSource) else IterSource
            on_error, max_failures = read_policy(pipeline.stages)
            self.stages.append(
                stage_type(
                    source.obj,
                    block,
                    self.rank,
                    start=start,
                    prefix=prefix,
                    policy=pipeline.source_spec.shard_policy,
                    failures=FailurePolicy("source", on_error, max_failures, self.errors),
                )
            )
            specs = fuse_map_batch(pipeline.stages)
        depth = SAMPLE_DEPTH
        depths = [depth]
        batched = False  # the items are batches here
        for spec in specs:
            if isinstance(spec, MapSpec) and batched:
                spec = dataclasses.replace(spec, on_batches=True)
            batched = (batched or spec.makes_batches) and not isinstance(spec, UnbatchSpec)
            if isinstance(spec, PrefetchSpec):
                depths[-1] = spec.depth
                continue
            if isinstance(spec, BatchSpec):
                depth = DEFAULT_DEPTH
            elif isinstance(spec, UnbatchSpec):
                depth = SAMPLE_DEPTH
            self.stages.append(self._make_stage(spec, decisions, expected))
            depths.append(depth)
            if isinstance(spec, (FilterSpec, BatchSpec, UnbatchSpec)):
                expected = None
        if self.resume is not None:  # the budget spent before the resume point stays spent
            for stage in self.stages:
                policy = getattr(stage, "failure_policy", None)
                if policy is not None and policy.carries_over:
                    policy.resume(self.resume.failures.get(stage.name, 0))
        for upstream, downstream, depth in zip(self.stages, self.stages[1:], depths, strict=False):
            channel = Channel(depth, f"{upstream.name}->{downstream.name}")
            upstream.output = channel
            downstream.input = channel
            upstream.stats.output = channel
            downstream.stats.input = channel
        last = self.stages[-1]
        final_depth = depths[len(self.stages) - 1]
        if sink is not None:  # the sync hand-off: sized in bytes unless prefetch(n) set it
            explicit = bool(specs) and isinstance(specs[-1], PrefetchSpec)
            self.output = sink(final_depth, adaptive=not explicit)
        else:
            self.output = Channel(final_depth, f"{last.name}->consumer")
        last.output = self.output
        last.stats.output = self.output

    def _shard_source(self, pipeline: Pipeline, block: int, start: int, prefix: list[int]) -> ShardSource:
        spec = pipeline.source_spec
        if self.rank.world_size > 1 and spec.shard_policy != "uneven":
            raise ValueError(
                f"shard_policy={spec.shard_policy!r} needs equal sample counts per rank, which a "
                "shard stream does not know before reading it: use shard_policy='uneven', or give "
                "the source an index (al.sources.write_shards writes one)"
            )
        return ShardSource(
            pipeline.source.obj,
            block,
            self.rank,
            epoch=self.epoch,
            seed=spec.seed,
            shuffle=spec.shuffle is not False,
            errors=self.errors,
            start=start,
            prefix=prefix,
        )

    def _make_stage(self, spec: StageSpec, decisions: Decisions, expected: int | None) -> Stage:
        if isinstance(spec, MapSpec):
            return MapStage(
                spec,
                errors=self.errors,
                decisions=decisions,
                expected_items=expected,
                epoch=self.epoch,
                seed=self.seed,
                rank=self.rank.rank,
                runtime=self.runtime,
            )
        if isinstance(spec, FilterSpec):
            return FilterStage(spec)
        if isinstance(spec, BatchSpec):
            return BatchStage(spec)
        if isinstance(spec, UnbatchSpec):
            return UnbatchStage(spec)
        factory = getattr(spec, "make_stage", None)
        if factory is not None:  # stage kinds added by other modules (device, shuffle, ...)
            return factory(self)
        raise TypeError(f"unknown stage spec {spec!r}")

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.started = time.perf_counter()
        self.monitor = RunMonitor(self)
        self.monitor.start(loop)
        for stage in self.stages:
            stage.stats.started = self.started
            self._tasks.append(loop.create_task(self._guard(stage), name=f"aioloader:{stage.name}"))

    async def _guard(self, stage: Stage) -> None:
        try:
            await stage.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)
        finally:
            stage.stats.finished = time.perf_counter()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        fail = getattr(self.output, "fail", None)
        if fail is not None:
            fail(self._error)
        else:
            self.output.close()

    async def wait(self) -> None:
        """Until every stage has ended (normally, by failure or cancelled)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        """Stop the run from outside (``Loader.close()``): the consumer sees a quiet end at
        once, takes no more of what was queued, and the epoch is not complete, so
        ``state_dict()`` resumes after the last batch it was handed."""
        self.cancelled = True
        for task in self._tasks:
            task.cancel()
        abort = getattr(self.output, "abort", None)
        if abort is not None:
            abort()
        else:
            self.output.close()

    def release_error(self) -> None:
        """The consumer has the run's error now: drop this reference to it. The error's
        traceback holds the consumer's frames, the Loader's among them, and the Loader's
        finalizer reaches this run through the Runtime, so keeping the error would keep the
        Loader alive, and with it its loop thread and worker processes."""
        self._error = None

    async def next_block(self) -> Block:
        """The next output block; ``StopAsyncIteration`` at the end; the run's error if it failed."""
        if self.cancelled:
            raise StopAsyncIteration
        try:
            block = await self.output.get()
        except EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None
        self.note_delivered(block)
        return block

    # -- resume state ----------------------------------------------------------------------
    def attach_reservoir(self, stage: Any) -> None:
        if self.reservoir is not None:
            raise ValueError("a pipeline can have one .shuffle(buffer_size) stage")
        self.reservoir = stage

    def resume_reservoir(self) -> ReservoirState | None:
        if self.resume is None or self.resume.reservoir is None:
            return None
        return ReservoirState.from_json(self.resume.reservoir)

    def delivered_next(self) -> int:
        """The output seq after the last item the consumer received."""
        seqs = self.current_seqs
        if seqs is None or not self.current_count:
            if self.resume is None:
                return 0
            if self.resume.reservoir is not None:
                return int(self.resume.reservoir["emitted"])
            return self.resume.position
        seq = seqs[self.current_count - 1]
        while isinstance(seq, list):  # a batch: its members, in order
            seq = seq[-1]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"cannot locate the consumer in the epoch: a stage renumbered items ({seq!r})")
        return seq + 1

    def position_state(self) -> dict[str, Any]:
        """Where this run's consumer is: position, buffer prefix and reservoir counters.
        Call it on the run's loop thread while stages may still run."""
        delivered = self.delivered_next()
        if self.reservoir is None:
            where = {"position": delivered, "prefix": [], "reservoir": None}
        else:
            state = self.reservoir.state_at(delivered)
            position = 0 if state.last_input is None else int(state.last_input) + 1
            where = {
                "position": position,
                "prefix": [int(s) for s in state.slots],
                "reservoir": state.to_json(),
            }
        where["epoch_done"] = (
            self.epoch_length is not None and where["position"] >= self.epoch_length and not where["prefix"]
        )
        where["failures"] = self._failures_before(where["position"], delivered)
        return where

    def _failures_before(self, position: int, delivered: int) -> dict[str, int]:
        """Per stage whose count budget carries over a resume: the items before the resume
        point it skipped (a stage that skipped none is left out). A stage before the shuffle buffer numbers items by source position
        (the source resumes at ``position``; the buffer's items never failed); one after it,
        by the buffer's output (the consumer received up to ``delivered``)."""
        out = {}
        cut = position
        for stage in self.stages:
            if stage is self.reservoir:
                cut = delivered
            policy = getattr(stage, "failure_policy", None)
            if policy is not None and policy.carries_over:
                failed = policy.failed_before(cut)
                if failed:  # none: left out (the read stage's policy is there whenever a map skips)
                    out[stage.name] = failed
        return out

    def note_delivered(self, block: Block) -> None:
        """Count a block the consumer received (called from the consumer's thread). The
        iteration then advances ``current_count`` item by item as it hands them out."""
        previous = self.current_seqs
        if previous is not None and self.reservoir is not None:
            self.current_count = len(previous)
            self.reservoir.trim(self.delivered_next())
        self.current_seqs = block.seqs
        self.current_count = 0
        if self.first_output is None:
            self.first_output = time.perf_counter()
        self.batches += len(block)
        self.samples += sum(len(k) if isinstance(k, list) else 1 for k in block.keys)

    async def aclose(self) -> None:
        """Cancel and await every task; close the executors. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.monitor is not None:
            self.monitor.stop()
        for task in self._tasks:
            task.cancel()
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for stage in self.stages:
                close = getattr(stage, "close", None)
                if close is not None:
                    close()
            if interrupted():  # Ctrl-C under asyncio.run: calls blocked in threads are not waited for
                self.drain_s = 0.0
            drains = [stage.drain(self.drain_s) for stage in self.stages if hasattr(stage, "drain")]
            closers = [closer() for closer in self._io_closers]
            try:
                await _finish(self._drain(drains, closers))
            finally:
                for callback in self.on_close:
                    callback(self)

    async def _drain(self, drains: list[Any], closers: list[Any]) -> None:
        """The source's connection closers, to their end (then the ``on_stop`` callbacks),
        beside the stages' drains, which :meth:`stop_draining` (Ctrl-C) cuts short."""
        self._drain_cut = cut = asyncio.Event()
        if self.drain_s <= 0:
            cut.set()
        gathered = asyncio.ensure_future(asyncio.gather(*drains))
        stop = asyncio.ensure_future(cut.wait())
        try:
            await asyncio.gather(*closers)
            for callback in self.on_stop:
                callback()
            await asyncio.wait([gathered, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            gathered.cancel()
            await asyncio.gather(gathered, stop, return_exceptions=True)

    def stop_draining(self) -> None:
        """Ctrl-C (on the loop thread): stop waiting for calls running in threads, which cannot
        be stopped (their threads are daemons: they do not hold the process's exit)."""
        self.drain_s = 0.0
        if self._drain_cut is not None:
            self._drain_cut.set()

    def stats(self) -> dict[str, Any]:
        return run_stats(self)


async def _finish(awaitable: Any) -> None:
    """Await ``awaitable`` (bounded, a clean-up) to its end even when cancelled meanwhile, then
    re-raise the cancellation: a sync consumer that stops cancels the run's driver while it
    closes, and the wait for threads must not be cut short by that."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError
