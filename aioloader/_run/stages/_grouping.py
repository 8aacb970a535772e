"""What the length-aware batching stages share (``batch_by_tokens``, ``bucket``, ``pack``): the
length function's checks, collation annotated with the members' keys, one batch per block,
and a ``length`` for ``len(loader)`` that says the count is not known.

Their items have different lengths by design, so the default collate pads (:func:`al.collate.pad`)
where ``.batch`` stacks."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from aioloader._run.channel import Channel
from aioloader._run.stages.base import Stage
from aioloader._run.stages.batch import emit_batch
from aioloader.collate import pad
from aioloader.errors import annotate
from aioloader.monitor.stats import StageStats


def unknown_length(name: str) -> TypeError:
    """What a spec's ``length(n)`` raises: the number of batches depends on the data."""
    return TypeError(f"len() is not known: stage {name!r} makes batches whose count depends on the data")


class GroupStage(Stage):
    """Base of a stage that groups items into batches; subclasses write ``run()``."""

    def __init__(self, name: str, collate: Callable[[list[Any]], Any] | None) -> None:
        self.name = name
        self._collate: Callable[[list[Any]], Any] = collate or pad
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(name)

    def measure(self, length: Callable[[Any], int], key: Any, value: Any) -> int:
        """``length(value)`` as a non-negative int; errors name the stage and the key."""
        try:
            n = length(value)
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
                raise TypeError(f"length must return an int >= 0, got {n!r}")
        except Exception as exc:
            raise annotate(exc, self.name, key) from None
        return int(n)

    async def emit(self, keys: list[Any], seqs: list[Any], values: list[Any]) -> None:
        await emit_batch(self, self._collate, keys, seqs, values)
