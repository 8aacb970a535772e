"""Key orders: what ``Loader.from_source(source, shuffle=...)`` accepts.

An order turns (number of keys, seed, epoch) into this epoch's sequence of keys, before any
payload is read; it is a pure function of its inputs, which is what makes runs deterministic,
shardable and resumable by position. ``shuffle=False`` is :class:`Sequential`, ``True`` is
:class:`Permutation`, ``"chunks"`` is :class:`Chunks` sized from the source's chunk layout.
Samplers (:class:`Weighted`, :class:`ClassBalanced`) are orders too, so they shard and resume
the same way.

``sequence(n, seed, epoch)`` gives the order as a function of the position
(:class:`~aioloader.order.sequence.KeySequence`): what a run uses. :class:`Sequential`,
:class:`Permutation` and :class:`Chunks` compute any block of keys in time and memory that do
not grow with ``n`` (10^10 keys start as fast as 10^3); the samplers draw their keys as one
array, held in the smallest unsigned dtype. ``keys(n, seed, epoch)`` is the whole order as an
array, for small ``n`` and for other code that wants one.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from aioloader.order.chunk_order import ChunkKeys
from aioloader.order.permutation import epoch_rng, index_dtype
from aioloader.order.sequence import ArrayKeys, KeySequence, PermutedKeys, RangeKeys

__all__ = [
    "KeyOrder",
    "Sequential",
    "Permutation",
    "Chunks",
    "Weighted",
    "ClassBalanced",
    "resolve_order",
    "order_read_block",
    "order_sequence",
]

_DEFAULT_CHUNK = 256
_DEFAULT_WINDOW = 4


@runtime_checkable
class KeyOrder(Protocol):
    """``keys(n, seed, epoch)``: this epoch's keys in order; ``describe()``: a JSON-able
    fingerprint, compared when a state is loaded. An order may also offer ``sequence(n, seed,
    epoch)`` (a :class:`~aioloader.order.sequence.KeySequence`: its keys by position), which a
    run then uses instead of ``keys``; ``count(n)``: how many keys it yields when not ``n``;
    ``window_keys(n)``: how many keys one read should take (whole chunk windows)."""

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def order_count(order: Any, n: int) -> int:
    """How many keys ``order`` yields per epoch for a source of ``n`` (samplers may differ)."""
    count = getattr(order, "count", None)
    return n if count is None else count(n)


def order_read_block(order: Any, n: int) -> int | None:
    """How many keys one read takes under ``order`` for a source of ``n`` (its
    ``window_keys``: whole chunk windows), or None when the order does not say."""
    window_keys = getattr(order, "window_keys", None)
    return None if window_keys is None else int(window_keys(n))


def order_sequence(order: Any, n: int, seed: int, epoch: int) -> KeySequence:
    """``order``'s keys for this epoch by position: its ``sequence`` when it has one, else its
    ``keys`` array (an order written before sequences, a torch sampler)."""
    sequence = getattr(order, "sequence", None)
    if sequence is not None:
        return sequence(n, seed, epoch)
    return ArrayKeys(np.asarray(order.keys(n, seed, epoch)))


@dataclass(frozen=True)
class Sequential:
    """The source order. Memory: none (a key is its position)."""

    def sequence(self, n: int, seed: int, epoch: int) -> KeySequence:
        return RangeKeys(n)

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        return np.arange(n, dtype=index_dtype(n))

    def describe(self) -> dict[str, Any]:
        return {"order": "sequential"}


@dataclass(frozen=True)
class Permutation:
    """A full permutation per (seed, epoch): a keyed bijection of ``range(n)`` (see
    :class:`~aioloader.order.permutation.Bijection`). Memory: a few words, whatever ``n``."""

    def sequence(self, n: int, seed: int, epoch: int) -> KeySequence:
        return PermutedKeys(n, seed, epoch)

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        return self.sequence(n, seed, epoch).take(0, n)

    def describe(self) -> dict[str, Any]:
        # "bijection": states saved with the earlier array permutation name another order
        return {"order": "permutation", "keys": "bijection"}


@dataclass(frozen=True)
class Chunks:
    """Chunk shuffling for chunked storage (HDF5 chunks, array blocks, text shards).

    The chunks (``bounds``: start offsets of each chunk, plus the end) are visited in a
    permuted order; each run of ``window`` consecutive chunks in that order is read together
    and its keys permuted, so every read is of whole chunks and samples from ``window``
    chunks mix. ``window`` trades mixing for memory (see :func:`aioloader.order.quality`).

    Memory: chunks of one size (``chunk_size``; a source's ``chunk_rows``) need a few words
    whatever ``n``; explicit ``bounds`` are held as given, plus a table of window starts (one
    entry per window) per epoch. A run holds the keys of at most a few windows at a time.
    """

    bounds: tuple[int, ...] | None = None
    chunk_size: int = _DEFAULT_CHUNK
    window: int = _DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, numbers.Integral) or self.window < 1:
            raise ValueError(f"chunk_window must be an int >= 1, got {self.window!r}")
        if self.bounds is None and (not isinstance(self.chunk_size, numbers.Integral) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be an int >= 1, got {self.chunk_size!r}")

    def chunk_bounds(self, n: int) -> np.ndarray:
        if self.bounds is not None:
            bounds = np.asarray(self.bounds, dtype=np.int64)
            if bounds[0] != 0 or bounds[-1] != n or np.any(np.diff(bounds) <= 0):
                raise ValueError(f"chunk bounds must rise from 0 to {n}, got {bounds[:3]}...{bounds[-2:]}")
            return bounds
        return np.append(np.arange(0, n, self.chunk_size, dtype=np.int64), n) if n else np.zeros(1, np.int64)

    def sequence(self, n: int, seed: int, epoch: int) -> ChunkKeys:
        if self.bounds is not None:
            return ChunkKeys(n, seed, epoch, window=self.window, bounds=self.chunk_bounds(n))
        return ChunkKeys(n, seed, epoch, window=self.window, chunk_size=self.chunk_size)

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        return self.sequence(n, seed, epoch).take(0, n)

    def keys_and_windows(self, n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The keys, and the offsets in them where each window (one read) starts."""
        sequence = self.sequence(n, seed, epoch)
        return sequence.take(0, n), sequence.all_window_starts()

    def window_keys(self, n: int) -> int:
        """Keys in one window of the largest chunks: the read block size for this order."""
        if self.bounds is None:  # chunks of one size, the last one shorter
            return max(1, n) if -(-n // self.chunk_size) <= self.window else self.window * self.chunk_size
        sizes = np.diff(self.chunk_bounds(n))
        return int(np.sort(sizes)[-self.window :].sum()) if len(sizes) else 1

    def describe(self) -> dict[str, Any]:
        chunks = None if self.bounds is None else len(self.bounds) - 1
        described = {"order": "chunks", "chunk_size": self.chunk_size, "chunks": chunks, "window": self.window}
        return {**described, "keys": "bijection"}  # as Permutation's


@dataclass(frozen=True)
class Weighted:
    """``num_samples`` keys drawn with probability proportional to ``weights`` (like torch's
    WeightedRandomSampler), with or without replacement.

    Memory: the weights (8 bytes a key) and each epoch's draws, built as one array when the
    epoch starts (4 bytes a sample up to 2^32 keys, 8 beyond; more while ``numpy`` draws them):
    a draw is not a function of its position, so this order is not for 10^9 keys."""

    weights: Sequence[float] | np.ndarray
    num_samples: int | None = None
    replacement: bool = True

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                "weights must be a non-empty 1-D sequence of finite non-negative numbers, not all 0"
            )
        if self.num_samples is not None and (
            not isinstance(self.num_samples, numbers.Integral) or self.num_samples < 0
        ):
            raise ValueError(f"num_samples must be an int >= 0, got {self.num_samples!r}")
        if not self.replacement and self.num_samples is not None and self.num_samples > np.count_nonzero(w):
            raise ValueError("num_samples exceeds the keys with non-zero weight and replacement=False")

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        w = np.asarray(self.weights, dtype=np.float64)
        if len(w) != n:
            raise ValueError(f"weights has {len(w)} entries for a source of {n} keys")
        count = n if self.num_samples is None else int(self.num_samples)
        if not self.replacement:
            count = min(count, int(np.count_nonzero(w)))
        rng = epoch_rng(seed, epoch, 0x57)
        keys = rng.choice(n, size=count, replace=self.replacement, p=w / w.sum())
        return keys.astype(index_dtype(n))

    def count(self, n: int) -> int:
        count = n if self.num_samples is None else int(self.num_samples)
        return count if self.replacement else min(count, int(np.count_nonzero(np.asarray(self.weights))))

    def describe(self) -> dict[str, Any]:
        return {"order": "weighted", "num_samples": self.num_samples, "replacement": self.replacement}


@dataclass(frozen=True)
class ClassBalanced:
    """Each class equally often: ``labels[key]`` gives a key's class; each draw picks a class
    uniformly, then a key of that class (with replacement across epochs, cycling a per-class
    permutation within one, so small classes repeat only once exhausted).

    Memory: the labels, plus per epoch a permutation of every class's keys and the drawn
    samples, built as arrays when the epoch starts (about 8 bytes a key and 12 a sample): the
    draws are not a function of their position, so this order is not for 10^9 keys."""

    labels: Sequence[int] | np.ndarray
    num_samples: int | None = None

    def __post_init__(self) -> None:
        if np.asarray(self.labels).ndim != 1:
            raise ValueError(
                f"labels must be a 1-D sequence of class labels, got shape {np.shape(self.labels)}"
            )
        if self.num_samples is not None and (
            isinstance(self.num_samples, bool)
            or not isinstance(self.num_samples, numbers.Integral)
            or self.num_samples < 0
        ):
            raise ValueError(f"num_samples must be an int >= 0, got {self.num_samples!r}")

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        labels = np.asarray(self.labels)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries for a source of {n} keys")
        classes, inverse = np.unique(labels, return_inverse=True)
        rng = epoch_rng(seed, epoch, 0xCB)
        count = n if self.num_samples is None else int(self.num_samples)
        members = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
        picks = rng.integers(len(classes), size=count)
        out = np.empty(count, dtype=index_dtype(n))
        for c, keys in enumerate(members):
            where = np.flatnonzero(picks == c)
            out[where] = keys[np.arange(len(where)) % len(keys)]
        return out

    def count(self, n: int) -> int:
        return n if self.num_samples is None else int(self.num_samples)

    def describe(self) -> dict[str, Any]:
        return {"order": "class-balanced", "num_samples": self.num_samples}


def resolve_order(shuffle: Any, source: Any, chunk_window: int | None = None) -> KeyOrder:
    """The order object for ``from_source``'s ``shuffle`` argument (validated; names it)."""
    if shuffle is False or shuffle is None:
        return Sequential()
    if shuffle is True:
        return Permutation()
    if shuffle == "chunks":
        window = _DEFAULT_WINDOW if chunk_window is None else chunk_window
        rows = getattr(source, "chunk_rows", None)
        if not _has_chunk_list(source) and isinstance(rows, numbers.Integral) and rows > 0:
            return Chunks(chunk_size=int(rows), window=window)  # one size: no list of chunks
        return Chunks(bounds=_source_chunk_bounds(source), window=window)
    if isinstance(shuffle, KeyOrder):
        return shuffle
    raise ValueError(f"shuffle must be False, True, 'chunks' or an al.order sampler, got {shuffle!r}")


def _has_chunk_list(source: Any) -> bool:
    return any(callable(getattr(source, name, None)) for name in ("chunk_bounds", "chunks"))


def _source_chunk_bounds(source: Any) -> tuple[int, ...] | None:
    """Chunk start offsets from a source that exposes them: ``chunk_bounds()`` (offsets),
    ``chunks()`` (``(start, stop)`` ranges) or ``chunk_rows`` (a fixed chunk length)."""
    length = len(source)
    for name in ("chunk_bounds", "chunks"):
        method = getattr(source, name, None)
        if callable(method):
            got = list(method())
            if got and isinstance(got[0], range):
                return (*(int(r.start) for r in got), int(got[-1].stop))
            if got and isinstance(got[0], (tuple, list)):
                return (*(int(start) for start, _ in got), int(got[-1][1]))
            return tuple(int(b) for b in got)
    rows = getattr(source, "chunk_rows", None)
    if isinstance(rows, numbers.Integral) and rows > 0:
        return (*range(0, length, int(rows)), length) if length else (0,)
    return None
