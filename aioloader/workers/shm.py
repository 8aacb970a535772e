"""Shared-memory transport for results coming back from worker processes.

A result is pickled with protocol 5: numpy arrays (and CPU tensors, reduced to arrays) hand their
buffers out of band, and those of at least :data:`SHM_MIN_BYTES` are copied once into a POSIX
shared-memory segment instead of travelling through the pipe. The pipe carries only the small
pickle and the buffer spans. The parent maps the segment and unpickles arrays as *views* of it,
so nothing is copied again until collation stacks them into a batch.

Segments belong to the worker that made them (:class:`SegmentArena`) and are reused: one is lent
for one result, and the parent hands it back once every view of it is gone (a finalizer on the
result's base array). The parent keeps its mapping of each live segment (:class:`Mappings`), so a
reused segment is neither mapped again nor faulted in again page by page when the consumer
touches it; the arena names the segments it unlinks in its next frame, and the parent forgets
them. Names start with ``aioloader_<parent pid>_<pool>_<spawn>_`` so the pool can sweep every
segment of a dead worker, or of the whole pool at close.
"""

from __future__ import annotations

import _posixshmem
import io
import mmap
import os
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

# Smaller buffers stay in the pickle. A segment is faster than the pipe at every size, but a kept
# result keeps its whole segment lent, so per-item results (which a reservoir or the consumer may
# keep) use one only from an image's size; whole batches, used and dropped as a unit, from 16 KB.
# The measurements behind both: bench/results/design-notes.md.
SHM_MIN_BYTES = 128 * 1024
BATCH_SHM_MIN_BYTES = 16 * 1024
_MIN_SEGMENT = 256 * 1024
_ALIGN = 64
_MAX_FREE = 8  # free segments a worker keeps for reuse; more are unlinked
_SHM_DIR = "/dev/shm"

# segment, its size, the buffers' spans in it, the pickle, segments the arena has unlinked since
Frame = tuple[str | None, int, list[tuple[int, int]], bytes, list[str]]


def unlink(name: str) -> None:
    """Remove a segment's name (its memory goes when the last mapping does); missing is fine."""
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        pass


def sweep(prefix: str) -> list[str]:
    """Unlink every segment whose name starts with ``prefix`` (Linux lists them in /dev/shm)."""
    try:
        names = [n for n in os.listdir(_SHM_DIR) if n.startswith(prefix)]
    except FileNotFoundError:  # pragma: no cover - no /dev/shm (macOS): names are tracked instead
        return []
    for name in names:
        unlink(name)
    return names


def _map(name: str, size: int, *, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size)  # MAP_POPULATE measured no faster
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("map", "name", "reserved", "size", "view")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.map = _map(name, size, create=True)
        self.view = memoryview(self.map)
        self.reserved = 0  # bytes from the start whose memory is taken

    def reserve(self, nbytes: int) -> None:
        """Take the memory of the first ``nbytes`` now (``OSError`` when /dev/shm is full).

        A full /dev/shm (Docker's default is 64 MB) then fails here, where the result can go
        through the pipe instead, not with a SIGBUS that kills the worker when it writes a page
        the file system cannot give. Only what a result uses is taken, not the whole segment
        (rounded up to a power of two, taking it all doubled the /dev/shm a run used)."""
        if nbytes <= self.reserved:
            return
        fd = _posixshmem.shm_open("/" + self.name, os.O_RDWR, mode=0o600)
        try:
            os.posix_fallocate(fd, self.reserved, nbytes - self.reserved)
        finally:
            os.close(fd)
        self.reserved = nbytes

    def close(self) -> None:
        self.view.release()
        self.map.close()
        unlink(self.name)


class SegmentArena:
    """The worker's segments: lent one per result, reused once the parent releases them.

    The lifeline thread may call :meth:`unlink_all` at any moment (the parent died); a lock
    makes creating and registering a segment one step, and a closed arena creates no more,
    so no segment can appear after the clean-up (seen: one created between ``shm_open`` and
    its registration outlived a killed parent).
    """

    def __init__(self, prefix: str, min_bytes: int = SHM_MIN_BYTES) -> None:
        """``min_bytes``: the smallest buffer lent a segment (smaller ones are pickled)."""
        self._prefix = prefix
        self.min_bytes = min_bytes
        self._count = 0
        self._free: list[_Segment] = []
        self._lent: dict[str, _Segment] = {}
        self._dropped: list[str] = []  # unlinked, not yet named to the parent
        self._lock = threading.Lock()
        self._closed = False

    def lend(self, nbytes: int) -> _Segment:
        """A segment of at least ``nbytes``: a free one, or a new one (``OSError`` when the
        shared-memory file system has no room for it)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the segment arena is closed: the parent has gone away")
            fits = [s for s in self._free if s.size >= nbytes]
            if fits:
                segment = min(fits, key=lambda s: s.size)
                self._free.remove(segment)
            else:
                size = max(_MIN_SEGMENT, 1 << (nbytes - 1).bit_length())
                segment = _Segment(f"{self._prefix}{self._count}", size)
                self._count += 1
            try:
                segment.reserve(nbytes)
            except OSError:
                if fits:
                    self._free.append(segment)
                else:
                    segment.close()
                raise
            self._lent[segment.name] = segment
            return segment

    def release(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                segment = self._lent.pop(name, None)
                if segment is not None:
                    self._free.append(segment)
            while len(self._free) > _MAX_FREE:
                segment = self._free.pop(0)
                segment.close()
                self._dropped.append(segment.name)

    def take_dropped(self) -> list[str]:
        """The segments unlinked since the last call (the parent drops its mappings of them)."""
        with self._lock:
            dropped, self._dropped = self._dropped, []
            return dropped

    def unlink_all(self) -> None:
        """Unlink every name (mappings stay valid): the parent has gone away. Idempotent."""
        with self._lock:
            self._closed = True
            for segment in [*self._free, *self._lent.values()]:
                unlink(segment.name)
            sweep(self._prefix)  # a backstop: anything else under this arena's names


def _reduce_tensor(obj: Any) -> Any:
    """CPU tensors travel as numpy arrays (out of band); others by torch's own pickling."""
    import torch

    if obj.device.type != "cpu" or obj.requires_grad or obj.is_sparse or not obj.is_contiguous():
        return NotImplemented
    try:
        array = obj.numpy()
    except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks
        return NotImplemented
    return torch.from_numpy, (array,)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj).__name__ in ("Tensor", "Parameter") and type(obj).__module__.startswith("torch"):
            return _reduce_tensor(obj)
        return NotImplemented


def _pickle_in_band(obj: Any) -> bytes:
    stream = io.BytesIO()
    _Pickler(stream, protocol=5).dump(obj)
    return stream.getvalue()


class _Discard:
    def write(self, data: Any) -> int:
        return len(data)


def check_packable(obj: Any) -> None:
    """Raise what :func:`pack` would raise for ``obj`` (without copying its arrays' bytes)."""
    _Pickler(_Discard(), protocol=5, buffer_callback=lambda _buffer: False).dump(obj)


def pack(obj: Any, arena: SegmentArena | None) -> Frame:
    """Pickle ``obj``; large buffers go into a segment lent by ``arena`` (in-band without one)."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if arena is None or raw.nbytes < arena.min_bytes:
            return True
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=out_of_band).dump(obj)
    if arena is None:
        return None, 0, [], stream.getvalue(), []
    if not buffers:
        return None, 0, [], stream.getvalue(), arena.take_dropped()
    spans = []
    offset = 0
    for raw in buffers:
        spans.append((offset, raw.nbytes))
        offset += -(-raw.nbytes // _ALIGN) * _ALIGN
    try:
        segment = arena.lend(offset)
    except OSError:  # no room in /dev/shm: through the pipe, slower but alive
        return None, 0, [], _pickle_in_band(obj), arena.take_dropped()
    for (start, nbytes), raw in zip(spans, buffers, strict=True):
        segment.view[start : start + nbytes] = raw
    return segment.name, segment.size, spans, stream.getvalue(), arena.take_dropped()


class Mappings:
    """The parent's side: its mapping of each live segment of one or more arenas, reused for
    every result that comes back in that segment. Mapping a segment anew for each result cost
    its pages' faults again whenever the consumer touched them (a 4.8 MB batch read and copied:
    ~540 against ~360 us). A mapping is dropped when its arena says it unlinked the segment, or
    by :meth:`forget`; a result still alive keeps what it views mapped (the mapping is never
    closed here, only let go)."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()  # unpack runs on one thread, forget may come from another

    def unpack(self, frame: Frame, on_release: Callable[[str], None]) -> Any:
        """The object of ``frame``; its arrays are views of the segment, which is handed back
        (``on_release(name)``) when the last of them is gone."""
        name, size, spans, data, dropped = frame
        self.forget(dropped)
        if name is None:
            return pickle.loads(data)
        with self._lock:
            mapping = self._maps.get(name)
        if mapping is None or len(mapping) != size:
            mapping = _map(name, size, create=False)
            with self._lock:
                self._maps[name] = mapping
        # One base array per result: every view of the result is a view of it, so its
        # finalizer runs when the last of them is gone (a memoryview slice would not keep its
        # parent alive, only the mapping, which outlives results here).
        base = np.frombuffer(mapping, dtype=np.uint8, count=max(start + n for start, n in spans))
        weakref.finalize(base, on_release, name).atexit = False
        return pickle.loads(data, buffers=[base[start : start + nbytes] for start, nbytes in spans])

    def forget(self, names: list[str]) -> None:
        """Let go of the mappings of ``names`` (unlinked, or their worker is gone)."""
        if names:
            with self._lock:
                for name in names:
                    self._maps.pop(name, None)

    def forget_prefix(self, prefix: str) -> None:
        """Let go of every mapping whose segment name starts with ``prefix``."""
        with self._lock:
            for name in [n for n in self._maps if n.startswith(prefix)]:
                del self._maps[name]

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()

    def __len__(self) -> int:
        return len(self._maps)


def unpack(frame: Frame, on_release: Callable[[str], None]) -> Any:
    """The object of ``frame`` with a mapping of its own (see :class:`Mappings` for reuse)."""
    return Mappings().unpack(frame, on_release)
