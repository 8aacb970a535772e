"""Build one run (an epoch) from a Loader spec, and supervise it as one task group.

Each stage is built by its spec (``spec.build(ctx)``, the contract of
:mod:`aioloader._run.stages.base`) from a :class:`~aioloader._run.stages.base.BuildContext`;
what the consumer received and the resume cursor are the run's
:class:`~aioloader._run.delivery.Delivery`.

The first stage to fail records its exception and cancels every other stage; the consumer then
gets that exception (annotated with stage and key) instead of the end of the stream. ``aclose``
cancels and awaits every task and closes every executor the run owns, on every exit path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aioloader._run.block import Block
from aioloader._run.channel import Channel, EndOfChannel
from aioloader._run.decisions import Decisions
from aioloader._run.delivery import Delivery
from aioloader._run.failures import FailurePolicy
from aioloader._run.interrupt import interrupted
from aioloader._run.rewrite import fuse_map_batch, fuse_read, fuse_stream
from aioloader._run.stages.base import DEFAULT_DEPTH, SAMPLE_DEPTH, BuildContext, Stage, StageSpec
from aioloader._run.stages.map import MapSpec
from aioloader._run.stages.shard_map import ShardMapStage
from aioloader._run.stages.shard_source import ShardSource
from aioloader._run.stages.source import AsyncIterSource, IterSource, KeySource
from aioloader._run.stream_reads import reads_measured
from aioloader._spec import Options, SourceSpec
from aioloader.monitor.observe import RunMonitor, run_stats
from aioloader.monitor.stats import ErrorLog
from aioloader.order.orders import order_read_block, order_sequence, resolve_order
from aioloader.order.resume import ResumePoint, remaining_order
from aioloader.order.sequence import KeySequence
from aioloader.order.sharding import RankInfo, resolve_rank, shard_sequence
from aioloader.sources._adapt import AdaptedSource, AsyncIterableSource, IndexableSource, ShardStreamSource

if TYPE_CHECKING:
    from aioloader._run.bridge import Handoff

__all__ = ["DEFAULT_BLOCK", "DEFAULT_DEPTH", "SAMPLE_DEPTH", "Pipeline", "Run"]

DEFAULT_BLOCK = 64
MAX_CHUNK_BLOCK = 1 << 16
MAX_BLOCK = 1024
# At the end of a run, how long to wait for calls still running in threads (which cannot be
# stopped), within the 2 s a close may take (docs/design.md guarantee 6).
DRAIN_S = 1.5


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
    if isinstance(pipeline.source, IndexableSource):
        window = order_read_block(pipeline.source_spec.order, pipeline.source.length)
        if window is not None:
            return max(1, min(MAX_CHUNK_BLOCK, window))  # whole chunks per read
    for spec in pipeline.stages:
        hint = spec.block_hint()
        if hint:
            return max(1, min(MAX_BLOCK, hint))
        if hint is not None:
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


def read_policy(
    stages: Sequence[StageSpec], own: tuple[str, int | float] | None = None
) -> tuple[str, int | float]:
    """``on_error`` and ``max_failures`` for reading the source: a source that skips what it
    cannot read by its own setting (``own``: its ``read_failures``, as an indexed WebDataset's
    ``on_error``) keeps that; otherwise those of the pipeline's first ``.map`` (the decode), so
    ``on_error="skip"`` there also skips a sample that cannot be read (a file gone or unreadable,
    a bad line), with a budget of its own of the same size."""
    if own is not None and own[0] == "skip":
        return own
    lent = (s.source_failures() for s in stages)
    return next((policy for policy in lent if policy is not None), ("raise", 0))


def read_spec(
    source: IndexableSource, stages: Sequence[StageSpec] = (), *, aget: Callable[[Any], Any] | None = None
) -> MapSpec:
    """The implicit read stage of an indexable source: keys to samples (``aget``: the run's
    read-ahead reader's, in place of the source's)."""
    on_error, max_failures = read_policy(stages, source.read_failures)
    policy = {"on_error": on_error, "max_failures": max_failures}
    aget = aget or source.aget_one
    if aget is not None:
        return MapSpec(name="read", fn=aget, is_async=True, concurrency=source.read_concurrency, **policy)
    if source.get_many is not None:
        return MapSpec(name="read", fn=source.get_many, per_block=True, item_fn=source.get_one, **policy)
    return MapSpec(name="read", fn=source.get_one, trial_runs=False, **policy)


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
        on_close: Callable[[Run], None] | None = None,
    ) -> None:
        """``sink``: a consumer-side replacement for the final channel (the sync hand-off),
        made as ``sink(depth)``; by default the run ends in a :class:`Channel`. ``runtime``: the
        Loader's Runtime (long-lived resources such as process pools), None for a bare run.
        ``resume``: where to start in the epoch (``Loader.load_state_dict``). ``on_close``:
        called with the run once every task has ended."""
        self.epoch = epoch
        self.seed = pipeline.source_spec.seed
        self.resume = resume
        self.delivery = Delivery(resume)
        self.cancelled = False  # stopped by Loader.close(): the epoch is not complete
        self.runtime = runtime
        self.errors = ErrorLog()
        self.rank = resolve_rank(pipeline.source_spec.rank, pipeline.source_spec.world_size)
        self.stages: list[Stage] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._error: BaseException | None = None
        self._closed = False
        self.drain_s = DRAIN_S  # how long aclose() waits for calls still running in threads
        self.started = time.perf_counter()
        self.first_output: float | None = None
        self.samples = 0
        self.batches = 0
        self.on_close: list[Any] = [] if on_close is None else [on_close]  # once every task ended
        self.on_stop: list[Any] = []  # callbacks run once the tasks ended, before the drain
        self._drain_cut: asyncio.Event | None = None
        self.options = pipeline.options
        self.monitor: RunMonitor | None = None  # time series, memory/CPU, autotuner
        self._io_closers: list[Any] = []  # coroutine functions closing a source's connections
        # the run's end: a Channel, or the consumer's Handoff; both close, fail(exc) and abort()
        self.output: Channel | Handoff
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
            self.delivery.epoch_length = expected
            key_source = KeySource(keys, block, start=start, prefix=prefix)
            self.stages.append(key_source)
            ahead = None if source.read_ahead is None else source.read_ahead(key_source.keys_in_order())
            if ahead is not None:  # reads this run's keys ahead, in their order
                self._io_closers.append(ahead.aclose)
            read = read_spec(source, pipeline.stages, aget=None if ahead is None else ahead.aget)
            specs: list[StageSpec] = fuse_read(source, [read, *fuse_map_batch(pipeline.stages)])
            if source.aclose_io is not None:  # connections the reads opened on this run's loop
                self._io_closers.append(source.aclose_io)
        elif isinstance(source, ShardStreamSource):
            fused = fuse_stream(source, pipeline.stages, prefix=prefix)
            measure = fused is not None and reads_measured(source.worker_stream, fused.executor)
            if measure and decisions.stream_reads.get(fused.name) is False:
                fused = None  # an earlier run's first shard measured the parent's reads faster
            if fused is not None:  # the map's workers read the shards
                measured = decisions.stream_reads.get(fused.name)
                self.stages.append(
                    self._shard_map(
                        pipeline, fused, block, start, decisions if measure and measured is None else None
                    )
                )
                specs = fuse_map_batch(pipeline.stages[1:])
            else:
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
        ctx = BuildContext(
            epoch=self.epoch,
            seed=self.seed,
            rank=self.rank,
            errors=self.errors,
            decisions=decisions,
            runtime=self.runtime,
            resume=self.resume,
        )
        # the last spec that builds a stage feeds the consumer (a prefetch after it builds none)
        feeding = max((i for i, spec in enumerate(specs) if spec.upstream_depth() is None), default=-1)
        for index, spec in enumerate(specs):
            if batched:
                spec = spec.after_batches()
            batched = (batched or spec.makes_batches) and not spec.unbatches
            sized = spec.upstream_depth()
            if sized is not None:
                depths[-1] = sized
                continue
            if spec.output_depth is not None:
                depth = spec.output_depth
            stage = spec.build(replace(ctx, expected_items=expected, feeds_consumer=index == feeding))
            if spec.renumbers:
                self.delivery.attach_reservoir(stage)
            self.stages.append(stage)
            depths.append(depth)
            if not spec.keeps_count:
                expected = None
        if self.resume is not None:  # what each stage held at the resume point (its budget spent)
            for stage in self.stages:
                stage.load_state_dict(self.delivery.saved_part(stage))
        for upstream, downstream, depth in zip(self.stages, self.stages[1:], depths, strict=False):
            channel = Channel(depth, f"{upstream.name}->{downstream.name}")
            upstream.output = channel
            downstream.input = channel
            upstream.stats.output = channel
            downstream.stats.input = channel
        last = self.stages[-1]
        final_depth = depths[len(self.stages) - 1]
        if sink is not None:  # the sync hand-off: sized in bytes unless prefetch(n) set it
            explicit = bool(specs) and specs[-1].upstream_depth() is not None
            self.output = sink(final_depth, adaptive=not explicit)
        else:
            self.output = Channel(final_depth, f"{last.name}->consumer")
        last.output = self.output
        last.stats.output = self.output

    def _check_shard_policy(self, pipeline: Pipeline) -> None:
        spec = pipeline.source_spec
        if self.rank.world_size > 1 and spec.shard_policy != "uneven":
            raise ValueError(
                f"shard_policy={spec.shard_policy!r} needs equal sample counts per rank, which a "
                "shard stream does not know before reading it: use shard_policy='uneven', or give "
                "the source an index (al.sources.write_shards writes one)"
            )

    def _shard_map(
        self, pipeline: Pipeline, map_spec: MapSpec, block: int, start: int, measure: Decisions | None
    ) -> ShardMapStage:
        self._check_shard_policy(pipeline)
        spec = pipeline.source_spec
        return ShardMapStage(
            pipeline.source.worker_stream,
            map_spec,
            block,
            self.rank,
            epoch=self.epoch,
            seed=spec.seed,
            shuffle=spec.shuffle is not False,
            errors=self.errors,
            runtime=self.runtime,
            start=start,
            measure=measure,
        )

    def _shard_source(self, pipeline: Pipeline, block: int, start: int, prefix: list[int]) -> ShardSource:
        self._check_shard_policy(pipeline)
        spec = pipeline.source_spec
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
        self.output.fail(self._error)

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
        self.output.abort()

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

    # -- delivery --------------------------------------------------------------------------
    @property
    def reservoir(self) -> Any:
        """The shuffle stage, when the pipeline has one."""
        return self.delivery.reservoir

    def position_state(self) -> dict[str, Any]:
        """Where this run's consumer is (see :meth:`Delivery.position_state`); on the loop thread."""
        return self.delivery.position_state(self.stages)

    def note_delivered(self, block: Block) -> None:
        """Count a block the consumer received (called from the consumer's thread). The
        iteration then advances ``delivery.current_count`` item by item as it hands them out."""
        self.delivery.received(block)
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
                stage.close()
            if interrupted():  # Ctrl-C under asyncio.run: calls blocked in threads are not waited for
                self.drain_s = 0.0
            drains = [stage.drain(self.drain_s) for stage in self.stages]
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
