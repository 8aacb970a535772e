"""Combining streams: :class:`Mix` interleaves sources in given proportions, :class:`Cycle`
turns a finite source into an endless one that counts its passes.

Both are deterministic from their seed: ``Mix`` draws which source gives the next item from a
(seed)-stream, so the interleaving is the same on every run. Each item of a ``Cycle`` carries
no extra data; ``Cycle.keys`` documents the (pass, index) layout for users who want it.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from aioloader.order.permutation import epoch_rng

__all__ = ["Mix", "Cycle"]


class Mix:
    """Items of ``sources`` interleaved so that source ``i`` gives about ``weights[i]`` of them.

    A finite source that runs out ends the mix (``stop="first"``, the default, keeps the
    proportions exact), or drops out while the others continue (``stop="all"``).
    """

    def __init__(
        self,
        sources: Sequence[Iterable[Any]],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        *,
        stop: str = "first",
    ) -> None:
        if not sources:
            raise ValueError("sources must hold at least one iterable")
        for i, source in enumerate(sources):
            if not hasattr(source, "__iter__"):
                raise TypeError(f"sources[{i}] is not iterable: {type(source).__name__}")
        w = np.ones(len(sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(sources),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {len(sources)} finite non-negative numbers, not all 0")
        if stop not in ("first", "all"):
            raise ValueError(f"stop must be 'first' or 'all', got {stop!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.sources = list(sources)
        self.weights = w / w.sum()
        self.seed = int(seed)
        self.stop = stop

    def __iter__(self) -> Iterator[Any]:
        iterators: list[Iterator[Any] | None] = [iter(s) for s in self.sources]
        weights = self.weights.copy()
        rng = epoch_rng(self.seed, 0, 0x313)
        while True:
            picks = rng.choice(len(iterators), size=1024, p=weights)
            for i in picks.tolist():
                iterator = iterators[i]
                if iterator is None:
                    continue
                try:
                    yield next(iterator)
                except StopIteration:
                    if self.stop == "first":
                        return
                    iterators[i] = None
                    weights[i] = 0.0
                    if weights.sum() == 0:
                        return
                    weights = weights / weights.sum()
                    break  # redraw with the remaining sources


class Cycle:
    """``source`` again and again: pass ``p`` yields every item once (an endless stream).
    ``passes`` (None: endless) bounds it."""

    def __init__(self, source: Iterable[Any], passes: int | None = None) -> None:
        if not hasattr(source, "__iter__"):
            raise TypeError(f"source must be iterable, got {type(source).__name__}")
        if hasattr(source, "__next__"):
            raise TypeError("source must be re-iterable (a one-shot iterator cannot cycle)")
        if passes is not None and (not isinstance(passes, numbers.Integral) or passes < 1):
            raise ValueError(f"passes must be an int >= 1 or None, got {passes!r}")
        self.source = source
        self.passes = passes
        self.current_pass = 0

    def __iter__(self) -> Iterator[Any]:
        for current in itertools.count() if self.passes is None else range(self.passes):
            self.current_pass = current
            yield from self.source
