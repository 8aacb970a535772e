"""The filter stage: keeps the items whose predicate is true (inline: predicates are cheap)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

from aioloader._run.channel import Channel
from aioloader._run.stages.base import BuildContext, Stage, StageSpec
from aioloader.errors import annotate
from aioloader.monitor.stats import StageStats


class FilterStage(Stage):
    def __init__(self, spec: FilterSpec) -> None:
        self.name = spec.name
        self._predicate = spec.predicate
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(spec.name)

    async def run(self) -> None:
        predicate, stats = self._predicate, self.stats
        async for block in self.input:
            started = perf_counter()
            stats.items_in += len(block)
            keep: list[int] = []
            for index, value in enumerate(block.values):
                try:
                    if predicate(value):
                        keep.append(index)
                except Exception as exc:
                    raise annotate(exc, self.name, block.keys[index]) from None
            stats.busy_s += perf_counter() - started
            if keep:
                out = block if len(keep) == len(block) else block.take(keep)
                stats.items_out += len(out)
                await self.output.put(out)
        self.output.close()


@dataclass(frozen=True, slots=True)
class FilterSpec(StageSpec):
    predicate: Callable[[Any], bool]

    keeps_count: ClassVar[bool] = False

    def build(self, ctx: BuildContext) -> FilterStage:
        return FilterStage(self)

    def length(self, n: int) -> int:
        raise TypeError(f"len() is not known: stage {self.name!r} changes the item count")

    def block_hint(self) -> int | None:
        return 0
