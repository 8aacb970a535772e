"""The chunk-shuffled order (``shuffle="chunks"``) as a function of the position.

The chunks are visited in the order of a seeded bijection over the chunk numbers; each run of
``window`` consecutive chunks in that order is one window, read together, and its keys come in
a seeded permutation of their own (one per window). The key at a position is found from the
window that holds the position: with chunks of one size (the last may be shorter) the window
starts are arithmetic, O(1) memory; with explicit chunk bounds (a source's own layout, already
held as a list) a table of window starts, one entry per window, is built once per epoch. A
window's keys (at most ``window`` chunks) are built when a position in it is first asked for.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from aioloader.order.permutation import Bijection, epoch_rng, index_dtype
from aioloader.order.sequence import NO_CUTS, as_positions

__all__ = ["ChunkKeys"]

_STREAM = 0xC4  # the chunk order's stream of (seed, epoch, ...); each window's mix adds its number
_CACHED_WINDOWS = 4


class ChunkKeys:
    """The keys of ``n`` items in chunks, in chunk-shuffled order, by position.

    ``chunk_size``: chunks of that many keys (the last one the remainder), or ``bounds``: the
    start of each chunk plus ``n`` (already checked). ``window``: chunks per window."""

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int,
        *,
        window: int,
        chunk_size: int | None = None,
        bounds: np.ndarray | None = None,
    ) -> None:
        self._n = n
        self._seed, self._epoch = seed, epoch
        self._window = window
        self._dtype = index_dtype(n)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        if bounds is None:
            size = int(chunk_size or 1)
            self._size = size
            self._count = -(-n // size)
            self._bounds = None
        else:
            self._size = 0
            self._count = len(bounds) - 1
            self._bounds = np.asarray(bounds, dtype=np.int64)
        self._chunks = Bijection(self._count, seed, epoch, _STREAM)
        self._windows = -(-self._count // window)
        if self._bounds is None:
            # every window holds window * size keys, but the one holding the short last chunk
            # holds ``short`` fewer, and the windows after it start ``short`` earlier
            last = self._count - 1
            self._short = self._count * self._size - n
            self._short_window = int(self._chunks.inverse(np.array([last]))[0]) // window if n else 0
            self._starts = None
        else:
            sizes = np.diff(self._bounds)[self._chunks(np.arange(self._count, dtype=np.uint64))]
            ends = np.cumsum(sizes)
            self._starts = np.concatenate(([0], ends[window - 1 :: window]))[: self._windows]
            self._starts = np.append(self._starts, n)

    def __len__(self) -> int:
        return self._n

    # -- windows --------------------------------------------------------------------------
    def window_starts(self, windows: np.ndarray) -> np.ndarray:
        """The position where each window begins (``windows`` may include the count: ``n``)."""
        windows = np.asarray(windows, dtype=np.int64)
        if self._starts is not None:
            return self._starts[windows]
        starts = windows * (self._window * self._size)
        starts -= np.where(windows > self._short_window, self._short, 0)
        return np.minimum(starts, self._n)

    def window_of(self, positions: np.ndarray) -> np.ndarray:
        """The window holding each position."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._starts is not None:
            return np.searchsorted(self._starts, positions, side="right") - 1
        span = self._window * self._size
        after = self._short_window * span + span - self._short  # where the next window starts
        return np.where(positions < after, positions // span, (positions + self._short) // span)

    def _window_keys(self, window: int) -> np.ndarray:
        """The keys of one window in their mixed order (built once, a few kept)."""
        cached = self._cache.get(window)
        if cached is not None:
            self._cache.move_to_end(window)
            return cached
        first = window * self._window
        chunks = self._chunks(np.arange(first, min(first + self._window, self._count), dtype=np.uint64))
        chunks = chunks.astype(np.int64)
        if self._bounds is not None:
            starts, stops = self._bounds[chunks], self._bounds[chunks + 1]
        else:
            starts = chunks * self._size
            stops = np.minimum(starts + self._size, self._n)
        sizes = stops - starts
        # the chunks' ranges, concatenated: each key is its chunk's start plus its offset in it
        offsets = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
        keys = (offsets + np.arange(int(sizes.sum()), dtype=np.int64)).astype(self._dtype)
        epoch_rng(self._seed, self._epoch, _STREAM, window).shuffle(keys)
        self._cache[window] = keys
        if len(self._cache) > _CACHED_WINDOWS:
            self._cache.popitem(last=False)
        return keys

    # -- the sequence ---------------------------------------------------------------------
    def at(self, positions: np.ndarray | range) -> np.ndarray:
        positions = as_positions(positions)
        out = np.empty(len(positions), dtype=self._dtype)
        if not len(positions):
            return out
        windows = self.window_of(positions)
        offsets = positions - self.window_starts(windows)
        first, last = int(windows.min()), int(windows.max())
        if first == last:
            out[:] = self._window_keys(first)[offsets]
            return out
        for window in np.unique(windows).tolist():
            where = windows == window
            out[where] = self._window_keys(window)[offsets[where]]
        return out

    def take(self, start: int, stop: int) -> np.ndarray:
        return self.at(np.arange(start, stop, dtype=np.int64))

    def cuts(self, start: int, stop: int) -> np.ndarray:
        """Window starts in ``(start, stop)``."""
        if stop - start < 2:
            return NO_CUTS
        first, last = self.window_of(np.array([start, stop - 1]))
        if first == last:
            return NO_CUTS
        return self.window_starts(np.arange(int(first) + 1, int(last) + 1))

    def all_window_starts(self) -> np.ndarray:
        """Every window's start (one entry per window: for a whole-epoch array)."""
        return self.window_starts(np.arange(self._windows))
