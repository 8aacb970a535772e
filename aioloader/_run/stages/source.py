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
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any

import numpy as np

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader.monitor.stats import StageStats
from aioloader.order.sharding import RankInfo

_PULL_INLINE_UNDER_S = 0.002
_MAX_BLOCK_S = 0.005


class KeySource:
    def __init__(self, keys: np.ndarray, block_size: int, name: str = "source") -> None:
        self.name = name
        self._keys = keys
        self._block_size = block_size
        self.output: Channel
        self.stats = StageStats(name)

    async def run(self) -> None:
        keys, size = self._keys, self._block_size
        for start in range(0, len(keys), size):
            block_keys = keys[start : start + size].tolist()
            seqs = list(range(start, start + len(block_keys)))
            self.stats.items_out += len(block_keys)
            await self.output.put(Block(block_keys, seqs, list(block_keys)))
        self.output.close()


def _pull(iterator: Iterator[Any], limit: int, deadline_s: float) -> tuple[list[Any], bool]:
    """Up to ``limit`` items or until ``deadline_s`` passed; ``True`` when the iterator ended."""
    items: list[Any] = []
    append = items.append
    started = perf_counter()
    for item in iterator:
        append(item)
        if len(items) >= limit or perf_counter() - started > deadline_s:
            return items, False
    return items, True


class IterSource:
    def __init__(self, iterable: Any, block_size: int, rank: RankInfo, name: str = "source") -> None:
        self.name = name
        self._iterable = iterable
        self._block_size = block_size
        self._rank = rank
        self.output: Channel
        self.stats = StageStats(name)

    async def run(self) -> None:
        iterator = iter(self._iterable)
        world, rank = self._rank.world_size, self._rank.rank
        if world > 1:
            iterator = itertools.islice(iterator, rank, None, world)
        loop = asyncio.get_running_loop()
        pool: ThreadPoolExecutor | None = None
        position = 0
        try:
            ended = False
            while not ended:
                if pool is None:
                    started = perf_counter()
                    items, ended = _pull(iterator, self._block_size, _MAX_BLOCK_S)
                    elapsed = perf_counter() - started
                    self.stats.busy_s += elapsed
                    if elapsed > _PULL_INLINE_UNDER_S:
                        pool = ThreadPoolExecutor(1, thread_name_prefix="aioloader-source")
                        self.stats.executor = "thread"
                else:
                    started = perf_counter()
                    items, ended = await loop.run_in_executor(
                        pool, _pull, iterator, self._block_size, _MAX_BLOCK_S
                    )
                    self.stats.busy_s += perf_counter() - started
                if items:
                    seqs = list(range(position, position + len(items)))
                    keys = seqs if world == 1 else [rank + s * world for s in seqs]
                    position += len(items)
                    self.stats.items_out += len(items)
                    await self.output.put(Block(keys, seqs, items))
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.output.close()


class AsyncIterSource:
    def __init__(self, iterable: Any, block_size: int, rank: RankInfo, name: str = "source") -> None:
        self.name = name
        self._iterable = iterable
        self._block_size = block_size
        self._rank = rank
        self.output: Channel
        self.stats = StageStats(name)

    async def run(self) -> None:
        world, rank = self._rank.world_size, self._rank.rank
        iterator: AsyncIterator[Any] = aiter(self._iterable)
        position = 0  # positions in the whole stream; this rank keeps every world-th
        mine = 0
        items: list[Any] = []
        keys: list[int] = []
        seqs: list[int] = []
        try:
            async for item in iterator:
                if position % world == rank:
                    items.append(item)
                    keys.append(position)
                    seqs.append(mine)
                    mine += 1
                position += 1
                if items and (len(items) >= self._block_size or self.output.starved()):
                    self.stats.items_out += len(items)
                    await self.output.put(Block(keys, seqs, items))
                    items, keys, seqs = [], [], []
            if items:
                self.stats.items_out += len(items)
                await self.output.put(Block(keys, seqs, items))
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        self.output.close()
