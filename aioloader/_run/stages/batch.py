"""The batch stage: cuts the item stream into batches of ``size`` and collates each.

Each batch travels as its own one-entry block (so ``prefetch(n)`` counts batches) whose key and
seq entries are the lists of the members' keys and seqs. A block that is exactly one batch is
collated without copying the lists.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._spec import BatchSpec
from aioloader.collate import stack
from aioloader.errors import annotate
from aioloader.monitor.stats import StageStats


class BatchStage:
    def __init__(self, spec: BatchSpec) -> None:
        self.name = spec.name
        self._size = spec.size
        self._drop_last = spec.drop_last
        self._collate: Callable[[list[Any]], Any] = spec.collate or stack
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(spec.name)

    async def _emit(self, keys: list[Any], seqs: list[Any], values: list[Any]) -> None:
        started = perf_counter()
        try:
            batch = self._collate(values)
        except Exception as exc:
            raise annotate(exc, self.name, keys) from None
        self.stats.busy_s += perf_counter() - started
        self.stats.items_out += 1
        await self.output.put(Block([keys], [seqs], [batch]))

    async def run(self) -> None:
        size = self._size
        keys: list[Any] = []
        seqs: list[Any] = []
        values: list[Any] = []
        async for block in self.input:
            self.stats.items_in += len(block)
            if not values and len(block) == size:
                await self._emit(block.keys, block.seqs, block.values)
                continue
            keys.extend(block.keys)
            seqs.extend(block.seqs)
            values.extend(block.values)
            while len(values) >= size:
                await self._emit(keys[:size], seqs[:size], values[:size])
                del keys[:size], seqs[:size], values[:size]
        if values and not self._drop_last:
            await self._emit(keys, seqs, values)
        self.output.close()
