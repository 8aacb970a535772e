"""The token-budget batch stage: consecutive items grouped so that no batch costs more than
``max_tokens`` (``padded=True``: batch size x longest length, what a padded batch holds;
``padded=False``: the sum of lengths, what a packed batch holds).

An item longer than the budget on its own goes alone in its batch. Batches keep the input
order, so the output is a pure function of the input sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

from aioloader._run.stages._grouping import GroupStage, unknown_length
from aioloader._run.stages.base import BuildContext, StageSpec
from aioloader._spec import check_callable, check_positive_int


@dataclass(frozen=True, slots=True)
class TokenBatchSpec(StageSpec):
    makes_batches: ClassVar[bool] = True
    max_tokens: int
    length_fn: Callable[[Any], int] = len
    collate: Callable[[list[Any]], Any] | None = None
    padded: bool = True
    max_batch_size: int | None = None

    def length(self, n: int) -> int:
        """For ``len(loader)``: the batch count depends on the data."""
        raise unknown_length(self.name)

    def build(self, ctx: BuildContext) -> TokenBatchStage:
        return TokenBatchStage(self)


class TokenBatchStage(GroupStage):
    def __init__(self, spec: TokenBatchSpec) -> None:
        super().__init__(spec.name, spec.collate)
        self._spec = spec

    async def run(self) -> None:
        spec = self._spec
        budget, padded, cap = spec.max_tokens, spec.padded, spec.max_batch_size
        keys: list[Any] = []
        seqs: list[Any] = []
        values: list[Any] = []
        longest = total = 0
        async for block in self.input:
            self.stats.items_in += len(block)
            started = perf_counter()
            for key, seq, value in zip(block.keys, block.seqs, block.values, strict=True):
                n = self.measure(spec.length_fn, key, value)
                if values:
                    cost = max(longest, n) * (len(values) + 1) if padded else total + n
                    if cost > budget or (cap is not None and len(values) >= cap):
                        self.stats.busy_s += perf_counter() - started
                        await self.emit(keys, seqs, values)
                        started = perf_counter()
                        keys, seqs, values = [], [], []
                        longest = total = 0
                keys.append(key)
                seqs.append(seq)
                values.append(value)
                longest = max(longest, n)
                total += n
            self.stats.busy_s += perf_counter() - started
        if values:
            await self.emit(keys, seqs, values)
        self.output.close()


def token_batch_spec(
    max_tokens: int,
    length: Callable[[Any], int],
    collate: Callable[[list[Any]], Any] | None,
    padded: bool,
    max_batch_size: int | None,
) -> TokenBatchSpec:
    """Validate ``Loader.batch_by_tokens`` arguments (naming each) and build the spec."""
    check_positive_int(max_tokens, "max_tokens")
    check_callable(length, "length")
    if collate is not None:
        check_callable(collate, "collate")
    if not isinstance(padded, bool):
        raise TypeError(f"padded must be a bool, got {padded!r}")
    if max_batch_size is not None:
        check_positive_int(max_batch_size, "max_batch_size")
    return TokenBatchSpec("batch_by_tokens", max_tokens, length, collate, padded, max_batch_size)
