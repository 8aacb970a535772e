"""The unbatch stage: splits each batch back into items, keeping their keys."""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._run.stages.base import SAMPLE_DEPTH, BuildContext, Stage, StageSpec
from aioloader.collate import uncollate
from aioloader.errors import annotate
from aioloader.monitor.stats import StageStats


class UnbatchStage(Stage):
    def __init__(self, spec: UnbatchSpec) -> None:
        self.name = spec.name
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(spec.name)

    async def run(self) -> None:
        async for block in self.input:
            started = perf_counter()
            keys: list[Any] = []
            seqs: list[Any] = []
            values: list[Any] = []
            for key, seq, batch in zip(block.keys, block.seqs, block.values, strict=True):
                members = key if isinstance(key, list) else None
                try:
                    items = uncollate(batch, len(members) if members is not None else _length(batch))
                except Exception as exc:
                    raise annotate(exc, self.name, key) from None
                if members is not None and len(members) == len(items):
                    keys.extend(members)
                    seqs.extend(seq)
                else:  # a user map changed the batch size: derive sub-keys
                    keys.extend((key if members is None else tuple(members), i) for i in range(len(items)))
                    seqs.extend((seq if members is None else tuple(seq), i) for i in range(len(items)))
                values.extend(items)
            self.stats.items_in += len(block)
            self.stats.busy_s += perf_counter() - started
            if values:
                self.stats.items_out += len(values)
                await self.output.put(Block(keys, seqs, values))
        self.output.close()


def _length(batch: Any) -> int:
    try:
        return len(batch)
    except TypeError:
        raise TypeError(f"unbatch: a batch of type {type(batch).__name__} has no length") from None


@dataclass(frozen=True, slots=True)
class UnbatchSpec(StageSpec):
    unbatches: ClassVar[bool] = True
    keeps_count: ClassVar[bool] = False
    output_depth: ClassVar[int | None] = SAMPLE_DEPTH

    def build(self, ctx: BuildContext) -> UnbatchStage:
        return UnbatchStage(self)

    def length(self, n: int) -> int:
        raise TypeError(f"len() is not known: stage {self.name!r} changes the item count")
