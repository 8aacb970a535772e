"""Source stages: the head of the graph.

- :class:`KeySource` emits blocks of keys of an indexable source in epoch order (already
  permuted and sharded); the read stage after it turns keys into samples.
- :class:`IterSource` pulls a sync iterable. It starts pulling inline and moves the pulls to a
  thread once one block takes longer than a few milliseconds (file or network iterators).
- :class:`AsyncIterSource` pulls an async iterable on the loop and emits a partial block as soon
  as the stage downstream is starved, so slow streams are not held back to fill blocks.

Keys of a stream are positions in it; streams are sharded by position (``pos % world == rank``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from time import perf_counter
from typing import Any

import numpy as np

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._run.failures import FailurePolicy
from aioloader._run.stages.base import Stage
from aioloader._run.threads import DaemonThreadPool
from aioloader.errors import DataNotFoundError, annotate
from aioloader.monitor.stats import StageStats
from aioloader.order.sequence import KeySequence
from aioloader.order.sharding import RankInfo
from aioloader.order.stream_shard import RoundSharder
from aioloader.sources._modes import ReadFailure

_PULL_INLINE_UNDER_S = 0.002
_MAX_BLOCK_S = 0.005
# Keys computed per call of the order: enough to spread numpy's per-call cost over many blocks,
# few enough that the first batch does not wait for them.
_KEY_RUN = 4096
_NO_KEYS = np.zeros(0, dtype=np.int64)


class KeySource(Stage):
    """Blocks of keys in epoch order, from position ``start``; a resumed run first sends the
    ``prefix`` positions (the shuffle buffer's content when the state was taken).

    ``keys`` is the rank's :class:`~aioloader.order.sequence.KeySequence`: keys are computed a
    run of positions at a time, never for the whole epoch. Blocks hold ``block_size`` keys and
    end early where the sequence cuts (a chunk window ends), so a read covers one window."""

    def __init__(
        self,
        keys: KeySequence,
        block_size: int,
        name: str = "source",
        *,
        start: int = 0,
        prefix: list[int] = (),
    ) -> None:
        self.name = name
        self._keys = keys
        self._block_size = block_size
        self._start = start
        self._prefix = list(prefix)
        self.output: Channel
        self.stats = StageStats(name)

    async def run(self) -> None:
        keys, size = self._keys, self._block_size
        for first in range(0, len(self._prefix), size):
            seqs = self._prefix[first : first + size]
            block_keys = keys.at(np.asarray(seqs, dtype=np.int64)).tolist()
            self.stats.items_out += len(block_keys)
            await self.output.put(Block(block_keys, seqs, list(block_keys)))
        run_start, run_keys = 0, _NO_KEYS  # keys computed ahead, from position run_start
        for start, stop in self._spans(len(keys), size):
            if stop > run_start + len(run_keys):
                run_start = start
                run_keys = keys.take(start, min(len(keys), start + max(stop - start, _KEY_RUN)))
            block_keys = run_keys[start - run_start : stop - run_start].tolist()
            seqs = list(range(start, stop))
            self.stats.items_out += len(block_keys)
            await self.output.put(Block(block_keys, seqs, list(block_keys)))
        self.output.close()

    def keys_in_order(self) -> Iterator[np.ndarray]:
        """The keys :meth:`run` will send, in order, a run of them at a time (for a source
        that reads ahead of the read stage), computed lazily."""
        if self._prefix:
            yield self._keys.at(np.asarray(self._prefix, dtype=np.int64))
        for start in range(self._start, len(self._keys), _KEY_RUN):
            yield self._keys.take(start, min(len(self._keys), start + _KEY_RUN))

    def _spans(self, n: int, size: int) -> Iterator[tuple[int, int]]:
        """Block spans from the start position: ``size`` keys, cut where the sequence cuts
        (chunk windows: one read per window)."""
        begin = self._start
        while begin < n:
            end = min(begin + size, n)
            cuts = self._keys.cuts(begin, end)
            if len(cuts):
                end = int(cuts[0])
            yield begin, end
            begin = end


class _PullFailed(Exception):
    """The iterator raised after yielding ``items`` in this pull."""

    def __init__(self, items: list[Any], error: BaseException) -> None:
        super().__init__(error)
        self.items = items
        self.error = error


def _pull(iterator: Iterator[Any], limit: int, deadline_s: float) -> tuple[list[Any], bool]:
    """Up to ``limit`` items or until ``deadline_s`` passed; ``True`` when the iterator ended."""
    items: list[Any] = []
    append = items.append
    started = perf_counter()
    try:
        for item in iterator:
            append(item)
            if len(items) >= limit or perf_counter() - started > deadline_s:
                return items, False
    except Exception as exc:
        raise _PullFailed(items, exc) from None
    return items, True


def _replay(iterator: Iterator[Any], stop: int, wanted: list[int]) -> tuple[list[Any], int]:
    """Pull positions ``0..stop-1`` and keep those in ``wanted``, in ``wanted``'s order; also
    how many positions the iterator had (fewer than ``stop`` when it ended early)."""
    index = {position: i for i, position in enumerate(wanted)}
    kept: list[Any] = [None] * len(wanted)
    pulled = 0
    for position, item in zip(range(stop), iterator, strict=False):
        pulled = position + 1
        slot = index.get(position)
        if slot is not None:
            kept[slot] = item
    return kept, pulled


class _StreamSource(Stage):
    """What the sync and async stream sources share: this rank's slice of the stream and, on a
    resumed run, the replay up to ``start`` keeping the ``prefix`` positions (a stream cannot
    seek; those are the shuffle buffer's items, sent first)."""

    def __init__(
        self,
        iterable: Any,
        block_size: int,
        rank: RankInfo,
        name: str = "source",
        *,
        start: int = 0,
        prefix: list[int] = (),
        policy: str = "drop",
        failures: FailurePolicy | None = None,
    ) -> None:
        self.name = name
        self.failure_policy = failures
        self._start = start
        self._prefix = list(prefix)
        self._policy = policy
        self._iterable = iterable
        self._block_size = block_size
        self._rank = rank
        self.output: Channel
        self.stats = StageStats(name)

    def _key(self, seq: int) -> int:
        """The stream position of this rank's item number ``seq``."""
        world = self._rank.world_size
        return seq if world == 1 else self._rank.rank + seq * world

    def _ended_early(self, count: int) -> DataNotFoundError:
        """The error for a stream that ended after ``count`` of this rank's items on a resumed
        run, before its resume position: what the state refers to is no longer there, and the
        shuffle buffer's items cannot be read again (a placeholder or a quiet end would lose them)."""
        key = self._key(count)
        error = DataNotFoundError(
            f"stage {self.name!r}: the stream {self._iterable!r} ended after {count} items"
            f"{'' if self._rank.world_size == 1 else f' of rank {self._rank.rank}'}, before position "
            f"{self._start} where the state resumes it: the source holds less than when the state "
            "was saved (a file cut shorter, a generator that yields fewer items)",
            stage=self.name,
            key=key,
        )
        return annotate(error, self.name, key)

    async def _emit_prefix(self, kept: list[Any]) -> None:
        block = Block([self._key(s) for s in self._prefix], list(self._prefix), kept)
        if self.failure_policy is not None and any(isinstance(v, ReadFailure) for v in kept):
            # a buffered item the source can no longer read (the file changed since the state)
            block = self._skip_failures(self.failure_policy, block)
        self.stats.items_out += len(block)
        await self.output.put(block)

    def _skip_failures(self, policy: FailurePolicy, block: Block) -> Block:
        """``block`` without its read failures, each recorded under ``policy`` (which raises
        past the budget)."""
        policy.seen += len(block)
        keep = []
        for i, item in enumerate(block.values):
            if isinstance(item, ReadFailure):
                policy.fail(block.keys[i], item.error, block.seqs[i])
            else:
                keep.append(i)
        return block if len(keep) == len(block) else block.take(keep)


def _shards(iterable: Any) -> list[Any] | None:
    """A stream's independent parts (``shards()``: a text source's files), if it has them."""
    shards = getattr(iterable, "shards", None)
    parts = shards() if callable(shards) else None  # None: this source has no such parts
    return None if parts is None else list(parts)


def _shard_stream(iterator: Iterator[Any], sharder: RoundSharder) -> Iterator[Any]:
    for item in iterator:
        yield from sharder.push(item)
    yield from sharder.finish()


class IterSource(_StreamSource):
    """A sync iterable, pulled inline until a pull is slow, then in a thread.

    Under ``on_error="skip"`` (the first map's, see :func:`~aioloader._run.graph.read_policy`),
    a stream that offers ``tolerating_failures()`` (a text source) is read through it: an item
    it cannot read comes as a :class:`~aioloader.sources._modes.ReadFailure` in its position,
    skipped and recorded with its key under the failure budget, and the stream goes on."""

    _pull: Future[Any] | None = None  # the pull running in the thread, if any

    def _readable(self) -> tuple[Any, bool]:
        """The iterable to read and whether it gives read failures as items."""
        policy = self.failure_policy
        tolerant = getattr(self._iterable, "tolerating_failures", None)
        if policy is None or policy.on_error != "skip" or not callable(tolerant):
            return self._iterable, False
        return tolerant(), True

    async def run(self) -> None:
        world, rank = self._rank.world_size, self._rank.rank
        iterable, tolerant = self._readable()
        shards = _shards(iterable) if world > 1 and self._policy == "uneven" else None
        if shards is not None and len(shards) >= world:
            # whole parts (files) per rank: each rank reads only its own
            iterator = itertools.chain.from_iterable(shards[rank::world])
        elif world > 1:
            iterator = _shard_stream(iter(iterable), RoundSharder(rank, world, self._policy))
        else:
            iterator = iter(iterable)
        pool: DaemonThreadPool | None = None
        position = 0
        if self._start:
            replay = DaemonThreadPool(1, "aioloader-source")  # a daemon: never holds the exit
            try:
                self._pull = replay.submit(_replay, iterator, self._start, self._prefix)
                kept, pulled = await asyncio.wrap_future(self._pull)
            finally:
                replay.shutdown()
            if pulled < self._start:
                raise self._ended_early(pulled)
            if self._prefix:
                await self._emit_prefix(kept)
            position = self._start
        try:
            ended = False
            while not ended:
                started = perf_counter()
                try:
                    if pool is None:
                        items, ended = _pull(iterator, self._block_size, _MAX_BLOCK_S)
                    else:
                        self._pull = pool.submit(_pull, iterator, self._block_size, _MAX_BLOCK_S)
                        items, ended = await asyncio.wrap_future(self._pull)
                except _PullFailed as failed:
                    key = position + len(failed.items)
                    raise annotate(
                        failed.error, self.name, key if world == 1 else rank + key * world
                    ) from None
                elapsed = perf_counter() - started
                self.stats.busy_s += elapsed
                if pool is None and elapsed > _PULL_INLINE_UNDER_S:
                    # a slow iterator (files, network) would block the loop: pull in a thread
                    pool = DaemonThreadPool(1, "aioloader-source")
                    self.stats.executor = "thread"
                if items:
                    seqs = list(range(position, position + len(items)))
                    keys = seqs if world == 1 else [rank + s * world for s in seqs]
                    position += len(items)
                    block = Block(keys, seqs, items)
                    if tolerant and self.failure_policy is not None:
                        block = self._skip_failures(self.failure_policy, block)
                    self.stats.items_out += len(block)
                    if len(block):
                        await self.output.put(block)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        self.output.close()

    async def drain(self, timeout: float) -> None:
        """At the end of the run: wait, up to ``timeout`` seconds, for a pull still running in
        the thread, so the iterator is not being advanced after ``Loader.close()`` returned."""
        if self._pull is not None and not self._pull.done():
            await asyncio.wait([asyncio.wrap_future(self._pull)], timeout=timeout)


class AsyncIterSource(_StreamSource):
    """An async iterable, pulled on the loop; a partial block goes out when the next stage is
    starved, so slow streams are not held back to fill blocks."""

    async def run(self) -> None:
        world, rank = self._rank.world_size, self._rank.rank
        iterator: AsyncIterator[Any] = aiter(self._iterable)
        sharder = RoundSharder(rank, world, self._policy) if world > 1 else None
        position = 0  # positions in the whole stream
        mine = 0  # this rank's positions (seqs)
        items: list[Any] = []
        keys: list[int] = []
        seqs: list[int] = []
        start, prefix = self._start, self._prefix
        wanted = {seq: i for i, seq in enumerate(prefix)}
        kept: list[Any] = [None] * len(prefix)
        prefix_sent = False
        try:
            while True:
                try:
                    pulled = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise annotate(exc, self.name, position) from None
                position += 1
                for item in [pulled] if sharder is None else sharder.push(pulled):
                    if mine < start:  # replaying up to a resume point: keep the buffer's items
                        slot = wanted.get(mine)
                        if slot is not None:
                            kept[slot] = item
                        mine += 1
                        if mine == start and prefix:
                            await self._emit_prefix(kept)
                            prefix_sent = True
                        continue
                    items.append(item)
                    keys.append(self._key(mine))
                    seqs.append(mine)
                    mine += 1
                if items and (len(items) >= self._block_size or self.output.starved()):
                    self.stats.items_out += len(items)
                    await self.output.put(Block(keys, seqs, items))
                    items, keys, seqs = [], [], []
            for item in [] if sharder is None else sharder.finish():  # a partial last round
                if mine >= start:
                    items.append(item)
                    keys.append(self._key(mine))
                    seqs.append(mine)
                elif wanted.get(mine) is not None:
                    kept[wanted[mine]] = item
                mine += 1
            if mine < start:
                raise self._ended_early(mine)
            if prefix and not prefix_sent:  # the resume point was in the last round
                await self._emit_prefix(kept)
            if items:
                self.stats.items_out += len(items)
                await self.output.put(Block(keys, seqs, items))
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and iterator is not self._iterable:
                await aclose()
        self.output.close()
