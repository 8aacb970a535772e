"""The batch stage: cuts the item stream into batches of ``size`` and collates each.

Each batch travels as its own one-entry block (so ``prefetch(n)`` counts batches) whose key and
seq entries are the lists of the members' keys and seqs. A block that is exactly one batch is
collated without copying the lists. A block whose values are one numpy array (an HDF5 or
array read) is cut into batches by slicing: each batch is ``torch.from_numpy`` of a slice,
equal to what :func:`~aioloader.collate.stack` makes of its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

import numpy as np
import torch

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._run.executors import one_intra_op_thread
from aioloader._run.stages.base import DEFAULT_DEPTH, BuildContext, Stage, StageSpec
from aioloader.collate import stack
from aioloader.errors import annotate
from aioloader.monitor.stats import StageStats


class BatchStage(Stage):
    def __init__(self, spec: BatchSpec) -> None:
        self.name = spec.name
        self._size = spec.size
        self._drop_last = spec.drop_last
        self._collate: Callable[[list[Any]], Any] = spec.collate or stack
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(spec.name)
        self._pending: Block | None = None  # the tail of an array block, short of a batch

    async def _emit(self, keys: list[Any], seqs: list[Any], values: list[Any]) -> None:
        await emit_batch(self, self._collate, keys, seqs, values)

    async def _emit_array(self, keys: list[Any], seqs: list[Any], rows: np.ndarray) -> None:
        """A batch sliced out of an array block: one tensor, no per-row Python objects."""
        started = perf_counter()
        if not rows.flags.writeable:  # a read-only memory map: a tensor must own writable memory
            rows = rows.copy()
        batch = torch.from_numpy(np.ascontiguousarray(rows))
        self.stats.busy_s += perf_counter() - started
        self.stats.items_out += 1
        await self.output.put(Block([keys], [seqs], [batch]))

    async def _run_array_block(self, block: Block) -> None:
        size, rows = self._size, block.values
        for start in range(0, len(rows), size):
            stop = min(start + size, len(rows))
            if stop - start < size:
                self._pending = block.slice(start, stop)
                return
            await self._emit_array(block.keys[start:stop], block.seqs[start:stop], rows[start:stop])

    async def run(self) -> None:
        size = self._size
        keys: list[Any] = []
        seqs: list[Any] = []
        values: list[Any] = []
        fast_arrays = self._collate is stack
        async for block in self.input:
            self.stats.items_in += len(block)
            if fast_arrays and isinstance(block.values, np.ndarray) and block.values.dtype.kind in "biuf":
                if values or self._pending is not None:  # join the partial batch first
                    block = self._join_array(keys, seqs, values, block)
                    keys, seqs, values = [], [], []
                await self._run_array_block(block)
                continue
            if self._pending is not None:  # a partial array batch, now joined by list blocks
                keys, seqs, values = (
                    list(self._pending.keys),
                    list(self._pending.seqs),
                    list(self._pending.values),
                )
                self._pending = None
            if not values and len(block) == size:
                await self._emit(block.keys, block.seqs, block.values)
                continue
            keys.extend(block.keys)
            seqs.extend(block.seqs)
            values.extend(block.values)
            # not held while this block's batches wait for room: the consumer may already have
            # (and have dropped) the first of them
            del block
            while len(values) >= size:
                await self._emit(keys[:size], seqs[:size], values[:size])
                del keys[:size], seqs[:size], values[:size]
        if self._pending is not None:
            if not self._drop_last:
                pending = self._pending
                await self._emit_array(pending.keys, pending.seqs, pending.values)
            self._pending = None
        if values and not self._drop_last:
            await self._emit(keys, seqs, values)
        self.output.close()

    def _join_array(self, keys: list[Any], seqs: list[Any], values: list[Any], block: Block) -> Block:
        """The partial batch (an array block's tail, or list items) followed by ``block``."""
        if self._pending is not None:
            head = self._pending
            self._pending = None
            head_rows = head.values
            keys, seqs = list(head.keys), list(head.seqs)
        else:
            head_rows = np.stack([np.asarray(v) for v in values]) if values else block.values[:0]
        rows = np.concatenate([head_rows, block.values])
        return Block([*keys, *block.keys], [*seqs, *block.seqs], rows)


async def emit_batch(
    stage: Any, collate: Callable[[list[Any]], Any], keys: list[Any], seqs: list[Any], values: list[Any]
) -> None:
    """Collate ``values`` into one batch and send it as a one-entry block: what every batching
    stage does with a group (a failure names the stage and the members' keys)."""
    started = perf_counter()
    one_intra_op_thread()  # a collate on the loop computes as in a pool thread or a worker
    try:
        batch = collate(values)
    except Exception as exc:
        raise annotate(exc, stage.name, keys) from None
    stage.stats.busy_s += perf_counter() - started
    stage.stats.items_out += 1
    await stage.output.put(Block([keys], [seqs], [batch]))


@dataclass(frozen=True, slots=True)
class BatchSpec(StageSpec):
    size: int
    collate: Callable[[list[Any]], Any] | None = None
    drop_last: bool = False

    makes_batches: ClassVar[bool] = True
    keeps_count: ClassVar[bool] = False
    output_depth: ClassVar[int | None] = DEFAULT_DEPTH

    def build(self, ctx: BuildContext) -> BatchStage:
        return BatchStage(self)

    def length(self, n: int) -> int:
        return n // self.size if self.drop_last else -(-n // self.size)

    def step_problem(self) -> str | None:
        return None

    def block_hint(self) -> int | None:
        return self.size
