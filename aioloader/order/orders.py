"""Key orders: what ``Loader.from_source(source, shuffle=...)`` accepts.

An order turns (number of keys, seed, epoch) into this epoch's sequence of keys, before any
payload is read; it is a pure function of its inputs, which is what makes runs deterministic,
shardable and resumable by position. ``shuffle=False`` is :class:`Sequential`, ``True`` is
:class:`Permutation`, ``"chunks"`` is :class:`Chunks` sized from the source's chunk layout.
Samplers (:class:`Weighted`, :class:`ClassBalanced`) are orders too, so they shard and resume
the same way. Keys are held in the smallest unsigned dtype (100M keys in 400 MB).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from aioloader.order.permutation import epoch_permutation, epoch_rng, index_dtype

__all__ = ["KeyOrder", "Sequential", "Permutation", "Chunks", "Weighted", "ClassBalanced", "resolve_order"]

_DEFAULT_CHUNK = 256
_DEFAULT_WINDOW = 4


@runtime_checkable
class KeyOrder(Protocol):
    """``keys(n, seed, epoch)``: this epoch's keys in order; ``describe()``: a JSON-able
    fingerprint, compared when a state is loaded."""

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def order_count(order: Any, n: int) -> int:
    """How many keys ``order`` yields per epoch for a source of ``n`` (samplers may differ)."""
    count = getattr(order, "count", None)
    return n if count is None else count(n)


@dataclass(frozen=True)
class Sequential:
    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        return np.arange(n, dtype=index_dtype(n))

    def describe(self) -> dict[str, Any]:
        return {"order": "sequential"}


@dataclass(frozen=True)
class Permutation:
    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        return epoch_permutation(n, seed, epoch)

    def describe(self) -> dict[str, Any]:
        return {"order": "permutation"}


@dataclass(frozen=True)
class Chunks:
    """Chunk shuffling for chunked storage (HDF5 chunks, array blocks, text shards).

    The chunks (``bounds``: start offsets of each chunk, plus the end) are visited in a
    permuted order; each run of ``window`` consecutive chunks in that order is read together
    and its keys permuted, so every read is of whole chunks and samples from ``window``
    chunks mix. ``window`` trades mixing for memory (see :func:`aioloader.order.quality`).
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

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        return self.keys_and_windows(n, seed, epoch)[0]

    def keys_and_windows(self, n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The keys, and the offsets in them where each window (one read) starts."""
        bounds = self.chunk_bounds(n)
        starts, stops = bounds[:-1], bounds[1:]
        rng = epoch_rng(seed, epoch, 0xC4)
        chunk_order = rng.permutation(len(starts))
        out = np.empty(n, dtype=index_dtype(n))
        window_starts = []
        pos = 0
        for first in range(0, len(chunk_order), self.window):
            group = chunk_order[first : first + self.window]
            keys = np.concatenate([np.arange(starts[c], stops[c]) for c in group])
            rng.shuffle(keys)
            window_starts.append(pos)
            out[pos : pos + len(keys)] = keys
            pos += len(keys)
        return out, np.asarray(window_starts, dtype=np.int64)

    def window_keys(self, n: int) -> int:
        """Keys in one window of the largest chunks: the read block size for this order."""
        sizes = np.diff(self.chunk_bounds(n))
        return int(np.sort(sizes)[-self.window :].sum()) if len(sizes) else 1

    def describe(self) -> dict[str, Any]:
        chunks = None if self.bounds is None else len(self.bounds) - 1
        return {"order": "chunks", "chunk_size": self.chunk_size, "chunks": chunks, "window": self.window}


@dataclass(frozen=True)
class Weighted:
    """``num_samples`` keys drawn with probability proportional to ``weights`` (like torch's
    WeightedRandomSampler), with or without replacement."""

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
    permutation within one, so small classes repeat only once exhausted)."""

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
        bounds = _source_chunk_bounds(source)
        return Chunks(bounds=bounds, window=window)
    if isinstance(shuffle, KeyOrder):
        return shuffle
    raise ValueError(f"shuffle must be False, True, 'chunks' or an al.order sampler, got {shuffle!r}")


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
