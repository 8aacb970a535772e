"""The source stage of a shard stream (a :class:`~aioloader.sources.WebDataset` without an index).

Each epoch visits the shards in a seeded order (``shuffle=True`` or ``"chunks"``; the given
order otherwise); rank ``r`` of ``W`` reads shards ``r, r + W, ...`` of that order and no
other (``shard_policy="uneven"``: sample counts are unknown before reading, so equal counts
per rank need an index).

A sample's key is ``(shard, index in shard)``. Its seq packs the shard's place in this rank's
order and the index: ``place * SHARD_STRIDE + index``. Seqs grow along the stream, so a
resume state's position (the seq after the last delivered sample) names the shard and the
sample to resume at: the resumed run reads from that shard on, never the shards before it, and
the shuffle buffer's saved items (``prefix``) are read again from their shards first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._run.stages.base import Stage
from aioloader.errors import annotate
from aioloader.monitor.stats import ErrorLog, StageStats
from aioloader.order.permutation import epoch_permutation
from aioloader.order.sharding import RankInfo

SHARD_STRIDE = 1 << 32  # samples per shard, at most


def rank_shards(count: int, *, shuffle: bool, seed: int, epoch: int, rank: RankInfo) -> list[int]:
    """This rank's shards for ``epoch``, in reading order."""
    order = epoch_permutation(count, seed, epoch) if shuffle else np.arange(count)
    return [int(s) for s in order[rank.rank :: rank.world_size]]


class ShardSource(Stage):
    def __init__(
        self,
        dataset: Any,
        block_size: int,
        rank: RankInfo,
        name: str = "source",
        *,
        epoch: int,
        seed: int,
        shuffle: bool,
        errors: ErrorLog,
        start: int = 0,
        prefix: list[int] = (),
    ) -> None:
        self.name = name
        self._dataset = dataset
        self._block_size = block_size
        self._shards = rank_shards(dataset.num_shards, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank)
        self._errors = errors
        self._start = start
        self._prefix = list(prefix)
        self.output: Channel
        self.stats = StageStats(name)

    def _report(self, key: Any, exc: BaseException) -> None:
        self._errors.record(self.name, key, exc)

    async def _read_prefix(self) -> None:
        """The shuffle buffer's saved items, read again from their shards, in the saved order."""
        wanted: dict[int, set[int]] = {}
        for seq in self._prefix:
            place, index = divmod(seq, SHARD_STRIDE)
            wanted.setdefault(place, set()).add(index)
        found: dict[int, Any] = {}
        for place, indices in sorted(wanted.items()):
            last = max(indices)
            samples = aiter(self._dataset.stream([self._shards[place]], report=self._report))
            try:
                async for _, index, sample in samples:
                    if index in indices:
                        found[place * SHARD_STRIDE + index] = sample
                    if index >= last:
                        break
            finally:
                await samples.aclose()
        missing = [s for s in self._prefix if s not in found]
        if missing:
            place, index = divmod(missing[0], SHARD_STRIDE)
            raise ValueError(
                f"the resume state's shuffle buffer holds sample {index} of shard "
                f"{self._dataset.urls[self._shards[place]]}, which it no longer has"
            )
        keys = [self._key(s) for s in self._prefix]
        self.stats.items_out += len(keys)
        await self.output.put(Block(keys, list(self._prefix), [found[s] for s in self._prefix]))

    def _key(self, seq: int) -> tuple[int, int]:
        place, index = divmod(seq, SHARD_STRIDE)
        return (self._shards[place], index)

    async def run(self) -> None:
        if self._prefix:
            await self._read_prefix()
        first, skip = divmod(self._start, SHARD_STRIDE)
        shards = self._shards[first:]
        items: list[Any] = []
        keys: list[Any] = []
        seqs: list[int] = []
        samples = aiter(self._dataset.stream(shards, skip=skip, report=self._report))
        try:
            while True:
                try:
                    number, index, sample = await anext(samples)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise annotate(exc, self.name, getattr(exc, "key", None)) from None
                items.append(sample)
                keys.append((shards[number], index))
                seqs.append((first + number) * SHARD_STRIDE + index)
                if len(items) >= self._block_size or self.output.starved():
                    self.stats.items_out += len(items)
                    await self.output.put(Block(keys, seqs, items))
                    items, keys, seqs = [], [], []
            if items:
                self.stats.items_out += len(items)
                await self.output.put(Block(keys, seqs, items))
        finally:
            await samples.aclose()
        self.output.close()
