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

Used where nothing else can differ (:func:`aioloader._run.rewrite.fuse_stream`); elsewhere the
source stage streams in the parent.
"""

from __future__ import annotations

import asyncio
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
from aioloader.errors import WorkerCrashError, annotate
from aioloader.monitor.stats import ErrorLog, StageStats
from aioloader.order.sharding import RankInfo
from aioloader.sources._stream_worker import QUEUED, ShardOutput, ShardStreamWork

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
        self._work = ShardStreamWork(dataset, spec.fn)
        self.output: Channel
        self.stats = StageStats(spec.name, workers=self._executor.workers, executor=self._executor.kind)
        self.stats.describe_workers = getattr(self._executor, "describe", None)  # a Ray stage's actors
        self.stats.reads = SOURCE
        self.stats.bytes_read = 0
        self.stats.by_worker = {}
        self._gate: HeldGate | None = None

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()
        self._executor.close()

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
            await self._read_shard(place, skip, known, slot, queue, submitted)
        except Exception as exc:
            queue.put_nowait(_Failed(exc))
        else:
            queue.put_nowait(None)
        finally:
            if not submitted.done():  # failed before its submit: the next shard's turn anyway
                submitted.set_result(None)

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

    async def _emit(self, place: int, slot: int, queue: asyncio.Queue[Any]) -> None:
        self._gate.set_head(self._shards[place])
        while (out := await queue.get()) is not None:
            if isinstance(out, _Failed):
                raise out.error
            await self._hand_on(place, out)
            self._gate.handed_on(slot, out.nbytes)
            if out.error is not None:
                raise annotate(out.error, SOURCE, getattr(out.error, "key", None)) from None

    def _by_worker(self, pid: int) -> dict[str, float]:
        """What the worker ``pid`` did this run: shards, samples and seconds in ``fn`` (a worker
        idle at the end of a run shows as less busy than the others)."""
        return self.stats.by_worker.setdefault(pid, {"shards": 0, "samples": 0, "busy_s": 0.0})

    async def _hand_on(self, place: int, out: ShardOutput) -> None:
        """One part's results downstream, in blocks; ``fn``'s failures under ``on_error``."""
        shard = self._shards[place]
        self.stats.bytes_read += out.bytes_read
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
