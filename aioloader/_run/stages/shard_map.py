"""A shard stream and the process map after it in one stage: the workers read the shards.

``Loader.from_source(WebDataset(urls)).map(fn, executor="process")`` without an index would
stream each shard through the parent (download, tar parsing) and send every sample's bytes to
a worker. Here the parent keeps only the order: this rank's shards in their seeded order (as
:mod:`aioloader._run.stages.shard_source`), one task per shard for the stage's process pool,
a few per worker ahead (a worker reads its queued shards ahead). The worker streams its shard and runs ``fn`` on its samples
(:mod:`aioloader.sources._stream_worker`), sending the results back a block at a time; the
parent hands them on in shard order, so the items, keys and seqs are those of the unfused
stages, and ``state_dict()`` and resume are unchanged: a resumed run's first task is the open
shard from its next sample on (the worker reads that shard's consumed part again, as the
unfused stream does), then the shards after it. The parent looks up the shards' sizes ahead
(HEAD requests, no sample bytes), so a worker's first read of a shard starts at once.

Memory: the parent holds the parts received and not yet handed on (the shards behind a slow
one), within the source's ``reorder_bytes`` (:mod:`aioloader._run.held_gate`): past it, a
worker on a shard other than the one handed on waits before its next sample (and the worker
on that one, past it in its own shard's results: the consumer is behind). Process workers
only: the segment is on this machine, and Ray's actors may not be.

Failures: ``fn``'s go through the map's ``on_error`` with the sample's key; a corrupt member
skipped under the source's ``on_error="skip"`` is reported by stage ``"source"`` with its key
``(url, member)``; a missing shard (``DataNotFoundError`` naming the URL) or a corrupt one
under ``"raise"`` ends the run after that shard's samples before the damage. A worker that
dies mid-shard loses only the block it was on: the shard is given to a worker again from the
first sample not yet received (read again from the shard's start), at most
:data:`~aioloader.workers.executor.MAX_ATTEMPTS` times, so nothing is lost or doubled.

With ``executor="ray"`` the stage's Ray actors read the shards the same way (the same work,
:class:`~aioloader.sources._stream_worker.ShardStreamWork`, in each actor, its parts sent back
by a Ray streaming call: :meth:`aioloader.ray._actor.MapActor.run_parts`), but an actor reads
no queued shard ahead (Ray gives a running call no view of the calls queued behind it). A dead
actor's shard is read again from its first sample not received.

By default (``read_in_workers=None``, worker processes) the stage reads the run's first shard
in the parent, sending its samples to the pool in chunks, and ``fn``'s CPU on the first chunk
decides who reads the other shards (:mod:`aioloader._run.stream_reads`): the workers, as
above, or the parent, which streams them in order through one reader and sends their samples
in chunks (a chunk whose worker dies is sent again). Each shard's chunks all enter the pool
before the next shard's task, and the parent reads no further while the gate would hold a
worker on that shard back, so the bound and the progress argument above hold in both modes.

Used where nothing else can differ (:func:`aioloader._run.rewrite.fuse_stream`); elsewhere the
source stage streams in the parent.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import deque
from typing import Any

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._run.executors import external_executor
from aioloader._run.failures import FailurePolicy
from aioloader._run.held_gate import HeldGate
from aioloader._run.stages.base import Stage
from aioloader._run.stages.map import MapSpec
from aioloader._run.stages.shard_source import SHARD_STRIDE, rank_shards
from aioloader._run.stream_reads import PROBE_SAMPLES, ParentReads, sample_bytes, workers_read_faster
from aioloader.errors import WorkerCrashError, annotate
from aioloader.monitor.stats import ErrorLog, StageStats
from aioloader.order.sharding import RankInfo
from aioloader.sources._stream_worker import QUEUED, SampleChunk, ShardOutput, ShardStreamWork

__all__ = ["ShardMapStage"]

SOURCE = "source"  # the stage that names read failures, as when the source streams


class _Failed:
    """A shard's job failed: raised when the shard's turn comes."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ShardMapStage(Stage):
    def __init__(
        self,
        dataset: Any,
        spec: MapSpec,
        block_size: int,
        rank: RankInfo,
        *,
        epoch: int,
        seed: int,
        shuffle: bool,
        errors: ErrorLog,
        runtime: Any,
        start: int = 0,
        measure: Any = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._dataset = dataset
        self._block_size = block_size
        self._shards = rank_shards(dataset.num_shards, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank)
        self._errors = errors
        self._start = start
        self.failure_policy = FailurePolicy(spec.name, spec.on_error, spec.max_failures, errors)
        self._executor = _shard_executor(spec, runtime)
        self._runtime = runtime
        self._work = ShardStreamWork(dataset, spec.fn)
        self.output: Channel
        self.stats = StageStats(spec.name, workers=self._executor.workers, executor=self._executor.kind)
        self.stats.describe_workers = getattr(self._executor, "describe", None)  # a Ray stage's actors
        self.stats.reads = SOURCE
        self.stats.bytes_read = 0
        self.stats.by_worker = {}
        self._gate: HeldGate | None = None
        # read_in_workers=None: the first shard read by the parent decides who reads the others
        # (aioloader._run.stream_reads); ``measure`` keeps the decision for the Loader's later runs
        self._measure = measure
        self._workers_read: asyncio.Future[bool] | None = None
        self._parent_reads: list[ParentReads] = []
        self._held: dict[int, int] = {}  # place -> bytes received and not handed on
        self._head = -1  # the place handed on now
        self._progress = asyncio.Event()  # set (and replaced) as results are handed on
        # the parent's chunks in the pool at most: its reads wait for the workers beyond it
        self._chunks = asyncio.Semaphore(self._executor.workers * self._executor.tasks_per_worker)
        self.stats.read_choice = None

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()
        self._executor.close()
        decided = None if self._measure is None else self._measure.stream_reads.get(self.name)
        if decided is False and self._runtime is not None:
            # later runs are built unfused, with a pool of their own: this one's workers go now
            self._runtime.release(f"{self._executor.pool_key}:{self.spec.name}")

    async def run(self) -> None:
        first, skip = divmod(self._start, SHARD_STRIDE)
        places = list(range(first, len(self._shards)))
        # each worker's running and queued shards (it reads the queued ones ahead), and one
        # waiting in the pool for the first worker that finishes a shard
        ahead = self._executor.workers * self._executor.tasks_per_worker + 1
        store = self._dataset._store() if self._dataset.cache is None else None
        sizes: dict[int, asyncio.Task[int | None]] = {}
        jobs: deque[tuple[int, int, asyncio.Queue[Any], asyncio.Task[None]]] = deque()
        self._gate = self.stats.reorder = HeldGate(self._dataset.reorder_bytes, slots=ahead + 1)
        loop = asyncio.get_running_loop()
        submitted: asyncio.Future[None] | None = None  # the previous shard's task is in the pool
        self._store = store
        if self._measure is not None:
            self._workers_read = loop.create_future()
        try:
            for at, place in enumerate(places):
                self._look_up_sizes(store, places[at : at + 2 * ahead], sizes)
                queue: asyncio.Queue[Any] = asyncio.Queue()
                slot = self._gate.open_slot(place)  # the place that had it was handed on
                after, submitted = submitted, loop.create_future()
                turn = (after, submitted)
                job = asyncio.create_task(
                    self._job(place, skip if at == 0 else 0, sizes[place], slot, queue, turn)
                )
                jobs.append((place, slot, queue, job))
                if len(jobs) >= ahead:
                    await self._emit(*jobs.popleft()[:3])
            while jobs:
                await self._emit(*jobs.popleft()[:3])
        finally:
            pending = [job for *_, job in jobs] + list(sizes.values())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for reads in self._parent_reads:
                await reads.aclose()
            if store is not None:
                await store.aclose()
            self._gate.close()  # lifted first: a worker still on one of this run's shards ends it
        self.output.close()

    def _look_up_sizes(
        self, store: Any, places: list[int], sizes: dict[int, asyncio.Task[int | None]]
    ) -> None:
        """Start the HEADs of the shards at ``places`` not looked up yet (none with a cache:
        a cached shard needs none, a worker looks up the others)."""
        for place in places:
            if place not in sizes:
                url = self._dataset.urls[self._shards[place]]
                sizes[place] = asyncio.create_task(_size(store, url))

    async def _job(
        self,
        place: int,
        skip: int,
        size: asyncio.Task[int | None],
        slot: int,
        queue: asyncio.Queue[Any],
        turn: tuple[asyncio.Future[None] | None, asyncio.Future[None]],
    ) -> None:
        """Shard ``place`` read and mapped by the pool (its results counted in the gate's
        ``slot``), its parts put in ``queue`` as they come, then None (or the error, raised in
        order by :meth:`_emit`). ``turn``: the previous shard's task is in the pool, this one's.

        The tasks enter the pool in shard order, whichever size lookup answers first: a
        worker's queue is then in shard order, so the shard handed on is never queued behind
        one the gate holds back (both workers waited for it for good)."""
        after, submitted = turn
        try:
            known = await size
            if after is not None:
                await asyncio.shield(after)
            if self._workers_read is not None and (
                after is None or not await asyncio.shield(self._workers_read)
            ):
                await self._read_in_parent(place, skip, slot, queue, submitted, probe=after is None)
            else:
                await self._read_shard(place, skip, known, slot, queue, submitted)
        except Exception as exc:
            queue.put_nowait(_Failed(exc))
        else:
            queue.put_nowait(None)
        finally:
            if not submitted.done():  # failed before its submit: the next shard's turn anyway
                submitted.set_result(None)
            if after is None:  # the first shard ended before it measured: the parent reads
                self._decide(None, [])

    async def _read_shard(
        self,
        place: int,
        skip: int,
        size: int | None,
        slot: int,
        queue: asyncio.Queue[Any],
        submitted: asyncio.Future[None],
    ) -> None:
        from aioloader.workers import wire
        from aioloader.workers.executor import MAX_ATTEMPTS

        shard = self._shards[place]
        pool = self._executor.pool_for(self._work)
        loop = asyncio.get_running_loop()
        received = [skip]  # the shard's samples before this index are in the queue

        def got(out: ShardOutput) -> None:
            received[0] = max(received[0], out.next_index)
            self._gate.received(out.nbytes)
            queue.put_nowait(out)

        def on_part(out: ShardOutput) -> None:  # on the pool's I/O thread
            loop.call_soon_threadsafe(got, out)

        detail = ""
        for _ in range(MAX_ATTEMPTS):
            # Ray's actors may be on other machines: the bound is the process pool's
            gate = (self._gate.name, self._gate.slots, slot) if self._executor.kind == "process" else None
            value = (shard, received[0], size, self._block_size, gate)
            future = pool.submit(wire.pack([value]), None, label=[(shard, received[0])], on_part=on_part)
            if not submitted.done():
                submitted.set_result(None)
            outcome = await asyncio.wrap_future(future)
            if outcome.kind == "ok":
                outputs, _, busy = outcome.value
                self.stats.busy_s += busy
                self._by_worker(outputs[0].worker)["shards"] += 1
                got(outputs[0])
                return
            if outcome.kind != "crash":  # an error of the work itself, or a stall given up
                raise outcome.value
            detail = outcome.value  # the parts received stay; the rest is read again
            # read again, the shard may wait in the pool behind a worker the bound holds back
            self._gate.lift()
        url = self._dataset.urls[shard]
        raise WorkerCrashError(
            f"stage {self.name!r}: {self._executor.runner} died each of the {MAX_ATTEMPTS} times it read "
            f"shard {url} (from sample {received[0]}; last: {detail}); giving up on it",
            stage=self.name,
            key=(shard, received[0]),
        )

    async def _read_in_parent(
        self,
        place: int,
        skip: int,
        slot: int,
        queue: asyncio.Queue[Any],
        submitted: asyncio.Future[None],
        *,
        probe: bool,
    ) -> None:
        """Shard ``place`` streamed by the parent, its samples sent to the pool in chunks (the
        probe's first one small: ``fn``'s times on it decide who reads the other shards). Its
        chunks all enter the pool before the next shard's task (``submitted`` is set after
        the last), so no shard's task the gate holds back is ahead of one of them."""
        reads = self._parent_reads_for(place, skip)
        shard = self._shards[place]
        chunks: deque[tuple[asyncio.Task[ShardOutput], list[Any]]] = deque()
        size = PROBE_SAMPLES if probe else self._block_size
        sizes: list[int] = []
        error: BaseException | None = None
        next_index = skip
        try:
            while True:
                self._forward(place, chunks, queue, slot)
                await self._room(place)
                try:
                    taken = await reads.take(place, size)
                except Exception as exc:  # a missing or corrupt shard: after its samples
                    error = exc
                    taken = []
                if not taken:
                    break
                indices = [index for index, _ in taken]
                samples = [sample for _, sample in taken]
                next_index = indices[-1] + 1
                await self._chunks.acquire()  # released as the chunk's task ends
                task = asyncio.create_task(self._chunk(shard, SampleChunk(indices, samples)))
                task.add_done_callback(lambda _: self._chunks.release())
                if probe and not sizes:
                    sizes = [sample_bytes(sample) for sample in samples]
                    task.add_done_callback(lambda done, sizes=sizes: self._decide(done, sizes))
                chunks.append((task, reads.drain_reports()))
                size = self._block_size
            if not submitted.done():
                submitted.set_result(None)
            if probe and not sizes:  # no sample to measure: the parent reads (the default before)
                self._decide(None, [])
            while chunks:
                await asyncio.wait({chunks[0][0]})
                self._forward(place, chunks, queue, slot)
            got = ShardOutput(next_index=next_index, error=error)
            got.reports = reads.drain_reports()
            self._received(place, slot, got, queue)
        finally:
            for task, _ in chunks:
                task.cancel()
            await asyncio.gather(*(task for task, _ in chunks), return_exceptions=True)
            if probe:  # ended before its first chunk was done: the parent reads
                self._decide(None, [])

    def _parent_reads_for(self, place: int, skip: int) -> ParentReads:
        """The parent's stream that reads ``place``: the probe shard alone, then one over the
        rest of the run's shards (started when the first of them is read)."""
        for reads in self._parent_reads:
            if reads.covers(place):
                return reads
        first = self._parent_reads == []
        places = [place] if first else list(range(place, len(self._shards)))
        shards = [self._shards[p] for p in places]
        reads = ParentReads(self._dataset, shards, places, skip=skip, store=self._store)
        self._parent_reads.append(reads)
        return reads

    def _decide(self, done: asyncio.Task[ShardOutput] | None, sizes: list[int]) -> None:
        """Who reads the shards after the probe, from its first chunk (the parent when that
        chunk failed or there was none: nothing measured, nothing kept for later runs)."""
        if self._workers_read is None or self._workers_read.done():
            return
        out = None if done is None or done.cancelled() or done.exception() is not None else done.result()
        times = [] if out is None else out.fn_times or []
        workers = self._executor.workers
        in_workers = workers_read_faster(sizes, times, workers)
        if times:
            self._measure.stream_reads[self.name] = in_workers
            self.stats.read_choice = {
                "workers_read": in_workers,
                "sample_bytes": sum(sizes) / len(sizes),
                "fn_s": statistics.median(times),
                "workers": workers,
            }
        self._workers_read.set_result(in_workers)

    async def _chunk(self, shard: int, chunk: SampleChunk) -> ShardOutput:
        """``fn`` on the samples of ``chunk`` in the pool; sent again if its worker dies."""
        from aioloader.workers import wire
        from aioloader.workers.executor import MAX_ATTEMPTS

        pool = self._executor.pool_for(self._work)
        detail = ""
        for _ in range(MAX_ATTEMPTS):
            label = [(shard, index) for index in chunk.indices]
            outcome = await asyncio.wrap_future(pool.submit(wire.pack([chunk]), None, label=label))
            if outcome.kind == "ok":
                outputs, _, busy = outcome.value
                self.stats.busy_s += busy
                return outputs[0]
            if outcome.kind != "crash":
                raise outcome.value
            detail = outcome.value
            self._gate.lift()  # sent again, it may wait in the pool behind a held-back worker
        url = self._dataset.urls[shard]
        raise WorkerCrashError(
            f"stage {self.name!r}: {self._executor.runner} died each of the {MAX_ATTEMPTS} times it mapped "
            f"samples {chunk.indices[0]}..{chunk.indices[-1]} of shard {url} (last: {detail}); giving up on them",
            stage=self.name,
            key=(shard, chunk.indices[0]),
        )

    def _forward(
        self,
        place: int,
        chunks: deque[tuple[asyncio.Task[ShardOutput], list[Any]]],
        queue: asyncio.Queue[Any],
        slot: int,
    ) -> None:
        """The chunks done at the front of ``chunks`` into ``queue``, in order (a chunk's
        error is raised: the job puts it in the queue)."""
        while chunks and chunks[0][0].done():
            task, reports = chunks.popleft()
            out = task.result()
            out.reports = reports + out.reports
            self._received(place, slot, out, queue)

    def _received(self, place: int, slot: int, out: ShardOutput, queue: asyncio.Queue[Any]) -> None:
        """A part the parent read into the queue, counted at the gate as a worker's are."""
        self._gate.received(out.nbytes, slot=slot)
        self._held[place] = self._held.get(place, 0) + out.nbytes
        queue.put_nowait(out)

    async def _room(self, place: int) -> None:
        """Wait while the gate would hold back a worker on ``place``: the parent reads a
        shard behind the head no further while the results held are at the bound, the head's
        while its own are (the consumer is behind)."""
        while True:
            held = self._held.get(place, 0) if place == self._head else self._gate.held
            if held < self._gate.limit:
                return
            await self._progress.wait()

    async def _emit(self, place: int, slot: int, queue: asyncio.Queue[Any]) -> None:
        self._gate.set_head(self._shards[place])
        self._head = place
        self._wake()
        while (out := await queue.get()) is not None:
            if isinstance(out, _Failed):
                raise out.error
            await self._hand_on(place, out)
            self._gate.handed_on(slot, out.nbytes)
            if place in self._held:
                self._held[place] -= out.nbytes
            self._wake()
            if out.error is not None:
                raise annotate(out.error, SOURCE, getattr(out.error, "key", None)) from None

    def _wake(self) -> None:
        """Results were handed on (or the head moved): the parent's reads waiting look again."""
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _by_worker(self, pid: int) -> dict[str, float]:
        """What the worker ``pid`` did this run: shards, samples and seconds in ``fn`` (a worker
        idle at the end of a run shows as less busy than the others)."""
        return self.stats.by_worker.setdefault(pid, {"shards": 0, "samples": 0, "busy_s": 0.0})

    async def _hand_on(self, place: int, out: ShardOutput) -> None:
        """One part's results downstream, in blocks; ``fn``'s failures under ``on_error``."""
        shard = self._shards[place]
        self.stats.bytes_read += out.bytes_read
        if out.worker:  # (not the end of a shard the parent read)
            mine = self._by_worker(out.worker)
            mine["busy_s"] += out.fn_s
            mine["samples"] += len(out.indices)
        for key, exc in out.reports:
            self._errors.record(SOURCE, key, exc)
        failed = dict(out.failures)
        self.stats.items_in += len(out.indices)
        self.failure_policy.seen += len(out.indices)
        for begin in range(0, len(out.indices), self._block_size):
            keys: list[Any] = []
            seqs: list[int] = []
            values: list[Any] = []
            for at in range(begin, min(begin + self._block_size, len(out.indices))):
                index = out.indices[at]
                key, seq = (shard, index), place * SHARD_STRIDE + index
                exc = failed.get(at)
                if exc is not None:
                    self.failure_policy.fail(key, exc, seq)
                    continue
                keys.append(key)
                seqs.append(seq)
                values.append(out.results[at])
            if keys:
                self.stats.items_out += len(keys)
                await self.output.put(Block(keys, seqs, values))


async def _size(store: Any, url: str) -> int | None:
    return None if store is None else await store.size(url)


def _shard_executor(spec: MapSpec, runtime: Any) -> Any:
    """The process (or Ray) executor of the stage's pool: a pool of its own (its work is the
    shard task, not the map's chunk), started at the first shard and kept by the Loader."""
    factory = external_executor(spec.executor)
    if factory is None:  # registered by aioloader.workers (and aioloader.ray)
        raise ValueError(f"executor {spec.executor!r} is not available")
    executor = factory(spec, runtime)
    executor.pool_key = "shard-stream-pool"
    if spec.executor == "process":
        executor.tasks_per_worker = 1 + QUEUED
        executor.spread = True  # shards dealt in turn: the workers start together and end together
    return executor
