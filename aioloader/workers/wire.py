"""Tasks on the wire to a worker: a small pickle and the large buffers beside it, in one writev.

A task's values are pickled with protocol 5; buffers of at least :data:`OUT_OF_BAND_BYTES` (file
bytes, arrays) are left out of the pickle and written to the pipe straight from where they lie.
One big pickle per task cost the parent a fresh allocation, and so a page fault per 4 KiB, each
time (JPEG batches of 32 files, 900 KB: ~600 faults and ~1 ms per batch, pickled twice), about
as much as the rest of the parent's work per batch. ``bytes`` values (a tar member's data) cannot
go out of band, so the pickler writes into a list of its frames, never joined: a value of at
least a frame (64 KiB) is kept as the object itself, and the frames go out in the one writev.

Frames use ``multiprocessing.connection``'s format (a signed 32-bit length, or -1 and a 64-bit
one), so the worker reads them with ``Connection.recv``/``recv_bytes``: a header
``(task_id, releases, buffer_sizes)``, the pickle, then each buffer (read into a bytearray, so
arrays arrive writable).
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

OUT_OF_BAND_BYTES = 8 * 1024  # smaller buffers stay in the pickle
_MAX_IOVECS = 512  # below IOV_MAX (1024 on Linux)
_PAGE = 4096

Buffer = bytes | memoryview


class _Frames(list):
    """A pickler's file that keeps what it is given: the pickle's frames (up to 64 KiB each) and,
    as themselves, values of at least a frame (a large ``bytes`` is never copied)."""

    write = list.append


class Payload:
    """A task's values, pickled: the pickle (in ``parts``, written as one frame) and the
    out-of-band ``buffers`` it refers to (they keep the original objects alive until the task
    is sent)."""

    __slots__ = ("buffers", "nbytes", "parts")

    def __init__(self, parts: list[Buffer], buffers: list[memoryview]) -> None:
        self.parts = parts
        self.buffers = buffers
        self.nbytes = sum(len(p) for p in parts) + sum(b.nbytes for b in buffers)

    @property
    def head(self) -> bytes:
        """The pickle as one ``bytes`` (for a transport that takes one object: Ray's)."""
        return b"".join(self.parts)

    @property
    def pipe_bytes(self) -> int:
        """Pipe room this task may take: its bytes, frame headers, and part of a page per
        frame (a write may leave the last page of the pipe partly used)."""
        return self.nbytes + (3 + len(self.buffers)) * (_PAGE + 12)


def pack(values: list[Any]) -> Payload:
    """Pickle ``values``, keeping large buffers out of band."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True  # in band
        buffers.append(raw)
        return False

    frames = _Frames()
    pickle.Pickler(frames, protocol=5, buffer_callback=out_of_band).dump(values)
    return Payload(frames, buffers)


def _header(n: int) -> bytes:
    return struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)


def _frame(data: Buffer) -> tuple[bytes, Buffer]:
    return _header(data.nbytes if isinstance(data, memoryview) else len(data)), data


def send(conn: Connection, task_id: int, releases: list[str], payload: Payload) -> None:
    """Write the task to ``conn`` (blocking until all of it is in the pipe)."""
    sizes = [b.nbytes for b in payload.buffers]
    parts: list[Buffer] = [*_frame(pickle.dumps((task_id, releases, sizes)))]
    parts.append(_header(sum(len(p) for p in payload.parts)))  # the pickle: one frame, its parts as they are
    parts.extend(payload.parts)
    for data in payload.buffers:
        parts.extend(_frame(data))
    _write_all(conn.fileno(), parts)


def _write_all(fd: int, parts: Sequence[Buffer]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views[:_MAX_IOVECS])
        while written and views:  # drop what was written; a partial write leaves a tail
            head = views[0]
            if written >= head.nbytes:
                written -= head.nbytes
                views.pop(0)
            else:
                views[0] = head[written:]
                written = 0


def receive(conn: Connection) -> tuple[int, list[str], bytes, list[bytearray]]:
    """The worker's side of :func:`send`: ``(task_id, releases, head, buffers)``; the values
    are ``pickle.loads(head, buffers=buffers)`` (left to the caller, whose errors they are).
    The buffers are writable, so arrays among the values are too, as when pickled in band."""
    task_id, releases, sizes = conn.recv()
    head = conn.recv_bytes()
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        conn.recv_bytes_into(buffer)
        buffers.append(buffer)
    return task_id, releases, head, buffers
