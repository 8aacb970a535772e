"""``Loader.prefetch(n)``: a spec that builds no stage; it sets the depth of the channel before
it, so ``n`` outputs of the stage before wait ahead of the next one (or of the consumer)."""

from __future__ import annotations

from dataclasses import dataclass

from aioloader._run.stages.base import StageSpec


@dataclass(frozen=True, slots=True)
class PrefetchSpec(StageSpec):
    depth: int

    def one_to_one(self) -> bool:
        return True

    def step_problem(self) -> str | None:
        return None

    def upstream_depth(self) -> int | None:
        return self.depth
