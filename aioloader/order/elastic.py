"""Elastic resume by position: an epoch's order less what an earlier world of ranks took.

A generation of ``W`` ranks sharded an order of ``n`` keys: rank ``r`` took the positions
``r, r + W, ...`` and had received its first ``p_r`` of them when the states were saved
(``"drop"`` never handed out the tail past ``W * (n // W)``; ``"pad"`` wrapped its last round to
the start). What no rank received is, position by position, rank ``r``'s rounds ``p_r`` up to
the end of its share. :class:`RemainingKeys` lists those positions in order without building
them: the rounds split into at most ``2W + 1`` segments in which the same ranks are still
active, so the i-th remaining position is a division in its segment, and the few positions
that ``"pad"``'s wrapped round took a second time are skipped by a search over at most ``W``
numbers. Memory is O(W) per generation, whatever ``n``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from aioloader.order.sequence import NO_CUTS, KeySequence, as_positions

__all__ = ["RemainingKeys"]

_CACHED_SEGMENTS = 8


class RemainingKeys:
    """The keys of ``keys`` at the positions no rank of a ``world``-rank generation (sharding
    with ``policy``) received, in their order. ``positions[r]``: how many keys rank ``r`` had
    received, or ``None`` when it received its whole share."""

    def __init__(self, keys: KeySequence, world: int, policy: str, positions: Sequence[int | None]) -> None:
        self._keys = keys
        self._world = world
        n = len(keys)
        ranks = np.arange(world, dtype=np.int64)
        own = np.maximum(0, -(-(n - ranks) // world))  # rank r's positions below n
        ends = np.full(world, n // world, dtype=np.int64) if policy == "drop" else own
        share = {"uneven": own, "drop": ends, "pad": np.full(world, -(-n // world) if n else 0)}[policy]
        got = np.array([share[r] if p is None else p for r, p in enumerate(positions)], dtype=np.int64)
        over = np.flatnonzero(got > share)
        if over.size:
            r = int(over[0])
            raise ValueError(
                f"state['elastic'] says rank {r} of {world} received {int(got[r])} keys, "
                f"more than its share of {int(share[r])}: the state is corrupted"
            )
        self._first = np.minimum(got, ends)  # each rank's first round not received
        self._ends = ends
        # segments of rounds [bounds[k], bounds[k + 1]) in which the same ranks are active
        self._bounds = np.unique(np.concatenate((self._first, ends)))
        widths = np.diff(self._bounds)
        starts = self._bounds[:-1]  # active: first <= b < end, and first <= end always
        self._active_counts = np.searchsorted(np.sort(self._first), starts, side="right") - np.searchsorted(
            np.sort(ends), starts, side="right"
        )
        sizes = widths * self._active_counts
        self._segment_starts = np.concatenate(([0], np.cumsum(sizes)))
        self._segments: OrderedDict[int, np.ndarray] = OrderedDict()
        # "pad": the wrapped last round took positions near the start again
        wrapped = [
            (r + world * j) % n for r in range(world) for j in range(int(ends[r]), int(got[r])) if n
        ]
        skipped = [x for x in sorted(set(wrapped)) if self._first[x % world] <= x // world < ends[x % world]]
        ranks_of_skipped = self._rank_in_union(np.array(skipped, dtype=np.int64))
        self._skipped = ranks_of_skipped - np.arange(len(skipped))  # see _union_index
        self._length = int(self._segment_starts[-1]) - len(skipped)

    def __len__(self) -> int:
        return self._length

    def _rank_in_union(self, positions: np.ndarray) -> np.ndarray:
        """How many not-received positions come before each of ``positions``."""
        ranks = np.arange(self._world, dtype=np.int64)
        rounds = -(-(positions[:, None] - ranks[None, :]) // self._world)  # rounds of r below x
        counted = np.clip(rounds, self._first[None, :], self._ends[None, :]) - self._first[None, :]
        return counted.sum(axis=1)

    def _union_index(self, indices: np.ndarray) -> np.ndarray:
        """Index among the not-received positions, counting the skipped ones too."""
        if not len(self._skipped):
            return indices
        return indices + np.searchsorted(self._skipped, indices, side="right")

    def _active(self, segment: int) -> np.ndarray:
        """The ranks still receiving in a segment, in rank order (a few segments kept)."""
        active = self._segments.get(segment)
        if active is None:
            bound = self._bounds[segment]
            active = np.flatnonzero((self._first <= bound) & (self._ends > bound))
            self._segments[segment] = active
            if len(self._segments) > _CACHED_SEGMENTS:
                self._segments.popitem(last=False)
        return active

    def _positions(self, indices: np.ndarray) -> np.ndarray:
        """The positions in the order of the remaining keys at ``indices``."""
        union = self._union_index(np.asarray(indices, dtype=np.int64))
        segment = np.searchsorted(self._segment_starts[:-1], union, side="right") - 1
        offset = union - self._segment_starts[segment]
        count = self._active_counts[segment]
        rounds = self._bounds[segment] + offset // count
        which = offset % count
        ranks = np.empty_like(union)
        for k in np.unique(segment).tolist():
            where = segment == k
            ranks[where] = self._active(k)[which[where]]
        return ranks + self._world * rounds

    def at(self, positions: np.ndarray | range) -> np.ndarray:
        return self._keys.at(self._positions(as_positions(positions)))

    def take(self, start: int, stop: int) -> np.ndarray:
        return self.at(np.arange(start, stop, dtype=np.int64))

    def cuts(self, start: int, stop: int) -> np.ndarray:
        return NO_CUTS
