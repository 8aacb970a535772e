"""An epoch's keys as a function of the position: what a run reads its keys from.

A :class:`KeySequence` gives the key at any position of one epoch's order without building the
order: ``take(start, stop)`` and ``at(positions)`` compute a block of keys with numpy, so the
time to the first key and the memory held do not grow with the number of keys. Orders make them
(``KeyOrder.sequence``); sharding (:class:`~aioloader.order.sharding.ShardedKeys`) and elastic
resume (:class:`~aioloader.order.elastic.RemainingKeys`) wrap them, position arithmetic on top
of position arithmetic. A sampler whose draws are not a function of the position
(``Weighted``, ``ClassBalanced``, a torch sampler) is held as an array (:class:`ArrayKeys`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from aioloader.order.permutation import Bijection, index_dtype

__all__ = ["KeySequence", "RangeKeys", "PermutedKeys", "ArrayKeys", "NO_CUTS", "positions", "as_positions"]

NO_CUTS = np.zeros(0, dtype=np.int64)


@runtime_checkable
class KeySequence(Protocol):
    """One epoch's keys in order, by position.

    ``at(positions)``: the keys at an int64 array of positions in ``[0, len)`` (or a ``range``
    of them, which a sequence may compute from without building it); ``take(start,
    stop)``: the keys of a span; ``cuts(start, stop)``: the positions in ``(start, stop)`` where
    a read should begin a new block (a chunk window), as an int64 array, usually empty."""

    def __len__(self) -> int: ...

    def at(self, positions: np.ndarray | range) -> np.ndarray: ...

    def take(self, start: int, stop: int) -> np.ndarray: ...

    def cuts(self, start: int, stop: int) -> np.ndarray: ...


def positions(start: int, stop: int) -> np.ndarray:
    """The positions ``start..stop-1`` as int64."""
    return np.arange(start, stop, dtype=np.int64)


def as_positions(positions: np.ndarray | range) -> np.ndarray:
    """``positions`` (an array or a ``range``) as an int64 array; a range through ``np.arange``,
    where ``np.asarray`` would convert it one Python int at a time."""
    if isinstance(positions, range):
        return np.arange(positions.start, positions.stop, positions.step, dtype=np.int64)
    return np.asarray(positions, dtype=np.int64)


class RangeKeys:
    """``0, 1, ..., n-1``: the source order."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._dtype = index_dtype(n)

    def __len__(self) -> int:
        return self._n

    def at(self, positions: np.ndarray | range) -> np.ndarray:
        if isinstance(positions, range):
            return np.arange(positions.start, positions.stop, positions.step, dtype=self._dtype)
        return np.asarray(positions).astype(self._dtype)

    def take(self, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop, dtype=self._dtype)

    def cuts(self, start: int, stop: int) -> np.ndarray:
        return NO_CUTS


class PermutedKeys:
    """A full permutation of ``range(n)``, seeded by (seed, epoch, stream): key ``i`` is
    :class:`~aioloader.order.permutation.Bijection` of ``i``."""

    def __init__(self, n: int, seed: int, epoch: int, *stream: int) -> None:
        self._bijection = Bijection(n, seed, epoch, *stream)
        self._dtype = index_dtype(n)

    def __len__(self) -> int:
        return len(self._bijection)

    def at(self, positions: np.ndarray | range) -> np.ndarray:
        return self._bijection(positions, dtype=self._dtype)

    def take(self, start: int, stop: int) -> np.ndarray:
        return self.at(range(start, stop))

    def cuts(self, start: int, stop: int) -> np.ndarray:
        return NO_CUTS


class ArrayKeys:
    """A materialised order (a sampler's draws): the array is the sequence."""

    def __init__(self, keys: np.ndarray) -> None:
        self._keys = np.asarray(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def at(self, positions: np.ndarray | range) -> np.ndarray:
        return self._keys[as_positions(positions)]

    def take(self, start: int, stop: int) -> np.ndarray:
        return self._keys[start:stop]

    def cuts(self, start: int, stop: int) -> np.ndarray:
        return NO_CUTS
