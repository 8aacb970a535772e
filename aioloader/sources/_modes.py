"""Loading modes shared by every file-backed source: lazy, eager, streaming, cached.

A file source subclasses :class:`ModalSource` and implements a few primitives (``_length``,
``_read``, ``_read_many``, ``_scan``, ``_estimate_nbytes``, optionally ``_aread``); this module
turns them into the four modes, so the mode logic exists once:

- ``"lazy"`` (default): each item is read from the file when asked for.
- ``"eager"``: everything is loaded when the source is built, after checking that it fits in
  the memory budget (``max_memory_usage`` x available memory); ``MemoryError`` when it does not.
- ``"streaming"``: the file is read front to back in constant memory. The source then is a
  stream, not an indexable: ``Loader.from_source`` takes its :meth:`~ModalSource.stream` view
  (through the ``__aioloader_source__`` hook), and ``source[i]`` raises ``TypeError``.
- ``"cached"``: lazy reads through an LRU cache bounded in bytes by the memory budget; its hit
  rate is in :meth:`~ModalSource.cache_stats`.

Every mode gives the same items in the same order. ``source.stream()`` (and ``iter(source)``)
reads sequentially in any mode.
"""

from __future__ import annotations

import numbers
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from aioloader.monitor.memory import MemoryMonitor, check_fraction

__all__ = [
    "MODES",
    "DEFAULT_MAX_MEMORY_USAGE",
    "ByteLRU",
    "ModalSource",
    "ReadFailure",
    "SourceStream",
    "sizeof",
]

MODES = ("lazy", "eager", "streaming", "cached")
DEFAULT_MAX_MEMORY_USAGE = 0.5
_MISSING: Any = object()


def sizeof(value: Any) -> int:
    """Approximate bytes held by a sample (payload plus object headers), for cache accounting."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 112
    if isinstance(value, (bytes, bytearray, str)):
        return sys.getsizeof(value)
    if isinstance(value, np.generic):
        return int(value.itemsize) + 32
    if isinstance(value, (tuple, list)):
        return sys.getsizeof(value) + sum(sizeof(v) for v in value)
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(sizeof(k) + sizeof(v) for k, v in value.items())
    nbytes = getattr(value, "nbytes", None)  # torch tensors and other array types
    if isinstance(nbytes, int):
        return nbytes + 112
    return sys.getsizeof(value)


def _detach(value: Any) -> Any:
    """``value`` holding no view into a bigger buffer (so the cache holds what it counts)."""
    if isinstance(value, np.ndarray) and value.base is not None:
        return value.copy()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ByteLRU:
    """A thread-safe LRU map whose values' total size stays at most ``capacity`` bytes.

    A value larger than the whole capacity is not stored. Pickles as an empty cache of the
    same capacity (each process fills its own).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.peak_nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Any) -> Any:
        """The cached value, or the module's missing marker (counted as a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return _MISSING
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Any, value: Any, nbytes: int | None = None) -> None:
        size = sizeof(value) if nbytes is None else int(nbytes)
        if size > self.capacity:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            while self._entries and self.nbytes + size > self.capacity:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.nbytes -= evicted
                self.evictions += 1
            self._entries[key] = (value, size)
            self.nbytes += size
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else 0.0,
            "items": len(self._entries),
            "bytes": self.nbytes,
            "peak_bytes": self.peak_nbytes,
            "capacity_bytes": self.capacity,
            "evictions": self.evictions,
        }

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"])  # type: ignore[misc]


class ReadFailure:
    """What a tolerant stream yields in place of an item it could not read: the error, naming
    the file and key. The stream goes on after it (the source stage skips and records it)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"ReadFailure({self.error!r})"


class SourceStream:
    """A source read front to back: an iterable (a fresh pass per ``iter``), not an indexable.

    ``Loader.from_source`` treats it as a stream; each epoch iterates it again. Its
    :meth:`tolerating_failures` twin yields a :class:`ReadFailure` where an item cannot be read
    and goes on (the source stage uses it under ``on_error="skip"``).
    """

    def __init__(self, source: ModalSource, *, tolerant: bool = False) -> None:
        self.source = source
        self.tolerant = tolerant

    def __iter__(self) -> Iterator[Any]:
        if self.tolerant and self.source._items is None:
            return self.source._scan_tolerant()
        return iter(self.source)

    def tolerating_failures(self) -> SourceStream:
        """This stream, giving what it cannot read as :class:`ReadFailure` items."""
        return SourceStream(self.source, tolerant=True)

    def shards(self) -> list[Any] | None:
        """The source's independent parts (a text source's files), when it has them."""
        shards = getattr(self.source, "shards", None)
        if shards is None:
            return None
        return shards(tolerant=True) if self.tolerant else shards()

    def __repr__(self) -> str:
        return f"<stream of {self.source!r}>"


class ModalSource:
    """Base of the file sources: the four loading modes over a subclass's read primitives.

    Subclasses call :meth:`_setup_mode` first in ``__init__`` and :meth:`_start_mode` last.
    """

    mode: str
    max_memory_usage: float
    _items: Sequence[Any] | None
    _cache: ByteLRU | None

    # -- subclass primitives ---------------------------------------------------------------
    def _length(self) -> int:
        raise NotImplementedError

    def _read(self, index: int) -> Any:
        """Item ``index`` (already checked to be in range)."""
        raise NotImplementedError

    def _read_many(self, indices: np.ndarray) -> list[Any]:
        """Items at ``indices`` (in range, any order, repeats allowed), in that order."""
        return [self._read(int(i)) for i in indices]

    def _scan(self) -> Iterator[Any]:
        """Every item in index order, in constant memory."""
        raise NotImplementedError

    def _scan_tolerant(self) -> Iterator[Any]:
        """``_scan``, with a :class:`ReadFailure` in place of an item that cannot be read, going
        on after it where the source can (by default it cannot: the error is raised)."""
        return self._scan()

    def _estimate_nbytes(self) -> int:
        """Memory that eager loading would take."""
        raise NotImplementedError

    def _load_eager(self) -> Sequence[Any] | None:
        """Load everything: return the items, or ``None`` when the subclass now serves
        ``_read``/``_read_many`` from memory itself (arrays)."""
        return list(self._scan())

    def _close(self) -> None:
        """Release file handles held by this process."""

    # -- mode setup ------------------------------------------------------------------------
    def _setup_mode(self, mode: Any, max_memory_usage: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.mode = mode
        self.max_memory_usage = check_fraction(max_memory_usage, "max_memory_usage")
        self._items = None
        self._cache = None

    def _start_mode(self) -> None:
        if self.mode == "eager":
            needed = int(self._estimate_nbytes())
            monitor = MemoryMonitor(self.max_memory_usage)
            if not monitor.check_memory_constraint(needed):
                available = monitor.get_memory_stats()["available_gb"] * 2**30
                raise MemoryError(
                    f"{type(self).__name__}(mode='eager') would load about {_format_bytes(needed)}, more "
                    f"than the memory budget of {_format_bytes(monitor.budget_bytes())} "
                    f"(max_memory_usage={self.max_memory_usage} x {_format_bytes(available)} available); "
                    "use mode='lazy', 'cached' or 'streaming', or raise max_memory_usage"
                )
            self._items = self._load_eager()
        elif self.mode == "cached":
            self._cache = ByteLRU(MemoryMonitor(self.max_memory_usage).budget_bytes())

    # -- the indexable protocol ------------------------------------------------------------
    def __len__(self) -> int:
        return self._length()

    def _check_index(self, key: Any) -> int:
        if self.mode == "streaming":
            raise TypeError(
                f"{type(self).__name__}(mode='streaming') is read sequentially: iterate it "
                "(or pass it to Loader.from_source); use mode='lazy' for random access"
            )
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise TypeError(f"{type(self).__name__} indices must be integers, got {type(key).__name__}")
        n = self._length()
        index = int(key) + n if key < 0 else int(key)
        if not 0 <= index < n:
            raise IndexError(f"{type(self).__name__} index {key} out of range for {n} items")
        return index

    def _check_indices(self, keys: Sequence[Any]) -> np.ndarray:
        if self.mode == "streaming":
            self._check_index(0)  # raises the streaming TypeError
        indices = np.asarray(keys)
        if indices.dtype.kind not in "iu":
            if indices.size == 0:
                return np.empty(0, dtype=np.int64)
            raise TypeError(f"{type(self).__name__} indices must be integers, got {indices.dtype}")
        indices = indices.astype(np.int64, copy=False).reshape(-1)
        n = self._length()
        if not indices.size:
            return indices
        if isinstance(keys, list) and len(keys) == indices.size:
            # a run's block of keys: Python's min and max of tens of ints cost less than two
            # numpy reductions (and the negative keys' pass below is skipped when there are none)
            lowest, highest = min(keys), max(keys)
        else:
            lowest, highest = int(indices.min()), int(indices.max())
        if lowest < -n or highest >= n:
            bad = indices[(indices < -n) | (indices >= n)][0]
            raise IndexError(f"{type(self).__name__} index {bad} out of range for {n} items")
        return indices if lowest >= 0 else np.where(indices < 0, indices + n, indices)

    def __getitem__(self, key: Any) -> Any:
        index = self._check_index(key)
        if self._items is not None:
            return self._items[index]
        cache = self._cache
        if cache is None:
            return self._read(index)
        value = cache.get(index)
        if value is _MISSING:
            value = _detach(self._read(index))
            cache.put(index, value)
        return value

    def __getitems__(self, keys: Sequence[Any]) -> Sequence[Any]:
        """Items at ``keys`` with one call (the torch batched-fetch protocol); array sources
        return one numpy array whose rows are the items."""
        indices = self._check_indices(keys)
        if self._items is not None:
            items = self._items
            return [items[i] for i in indices.tolist()]
        cache = self._cache
        if cache is None:
            return self._read_many(indices)
        results = [cache.get(i) for i in indices.tolist()]
        missing = [j for j, value in enumerate(results) if value is _MISSING]
        if missing:
            values = self._read_many(indices[missing])
            for j, value in zip(missing, values, strict=True):
                value = _detach(value)
                results[j] = value
                cache.put(int(indices[j]), value)
        return results

    async def _aget(self, key: Any) -> Any:
        """The async read path, for subclasses with an ``_aread`` coroutine (exposed as ``aget``)."""
        index = self._check_index(key)
        if self._items is not None:
            return self._items[index]
        cache = self._cache
        if cache is None:
            return await self._aread(index)
        value = cache.get(index)
        if value is _MISSING:
            value = _detach(await self._aread(index))
            cache.put(index, value)
        return value

    async def _aread(self, index: int) -> Any:
        return self._read(index)

    # -- streams ---------------------------------------------------------------------------
    def stream(self) -> SourceStream:
        """A sequential view: iterable, each pass reading the file front to back."""
        return SourceStream(self)

    def __iter__(self) -> Iterator[Any]:
        if self._items is not None:
            return iter(self._items)
        return self._scan()

    def __aioloader_source__(self) -> Any:
        """What ``Loader.from_source`` adapts: the stream view in streaming mode, else the source."""
        return self.stream() if self.mode == "streaming" else self

    # -- cache and lifetime ----------------------------------------------------------------
    def cache_stats(self) -> dict[str, Any] | None:
        """In cached mode: hits, misses, ``hit_rate``, ``bytes``, ``capacity_bytes`` (this
        process's cache); ``None`` in the other modes."""
        return None if self._cache is None else self._cache.stats()

    @property
    def hit_rate(self) -> float | None:
        """The cache hit rate so far (cached mode), else ``None``."""
        return None if self._cache is None else self._cache.stats()["hit_rate"]

    def close(self) -> None:
        """Close the file handles this process holds (they reopen on the next read)."""
        self._close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
