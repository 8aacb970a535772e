"""Reading a whole small file on the event loop when the page cache already holds it.

A thread hop per file (aiofiles) costs the parent ~120 us of CPU per file on 2 busy cores
(ImageFolder, 1500 JPEGs of 25 KB: 120-150 us per file, read alone), about ten times the read
itself when the file is cached, as it is from the second epoch on for any dataset that fits in
memory. ``preadv(..., RWF_NOWAIT)`` (Linux 4.14+) reads only what is cached and never waits for
the disk, so the loop tries it first and falls back to the thread when it would block.

``open`` itself may wait on cold metadata (a network file system), and a cold dataset misses the
cache on every file: after :data:`STRIKES` such attempts (slower than :data:`SLOW_S`, or not
cached) with no more than a few good ones between them, the fast path is off for the next
:data:`BACKOFF_FILES` files, so the loop is never held up for long and a cold dataset does not
pay for an attempt per file. A single slow attempt is not enough: on a busy machine the loop
thread is preempted, or waits for the GIL after a system call, now and then (one attempt in
ten backed off on 2 busy cores when a single one was). A file system that does not support the
flag turns it off for good.

:func:`read_files` is the other side: a pool worker reading its task's files itself
(:mod:`aioloader._run.read_fusion`), where blocking is fine but one wait per cold file is not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from time import perf_counter

SLOW_S = 0.002  # an attempt slower than this may have waited on metadata
STRIKES = 3  # bad attempts (slow, or not cached) that turn the fast path off for a while
_FORGIVE = 0.25  # a good attempt takes this much off the count of bad ones
BACKOFF_FILES = 256
_NOWAIT = getattr(os, "RWF_NOWAIT", None)
# read_files: cold files open at once (their reads go to the kernel together); a batch of
# thousands must stay under the descriptor limit (1,024 by default)
COLD_WINDOW = 64


class CachedReader:
    """``read(path)``: the file's bytes when all of them are in the page cache, else None."""

    def __init__(self) -> None:
        self.enabled = _NOWAIT is not None and hasattr(os, "preadv")
        self._skip = 0
        self._strikes = 0.0
        self.hits = 0
        self.misses = 0

    def read(self, path: str) -> bytearray | None:
        """The whole file, read without waiting for a disk; None when that cannot be done
        (read it the slow way). FileNotFoundError propagates."""
        if not self.enabled:
            return None
        if self._skip:
            self._skip -= 1
            return None
        started = perf_counter()
        try:
            data = self._read(path)
        except FileNotFoundError:
            raise
        except BlockingIOError:  # not (all) cached
            data = None
        except OSError:  # EOPNOTSUPP and friends: this file system cannot do it
            self.enabled = False
            return None
        bad = data is None or perf_counter() - started > SLOW_S
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        if bad:
            self._strikes += 1
            if self._strikes >= STRIKES:
                self._strikes = 0.0
                self._skip = BACKOFF_FILES
        else:
            self._strikes = max(0.0, self._strikes - _FORGIVE)
        return data

    @staticmethod
    def _read(path: str) -> bytearray | None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            buffer = bytearray(size)
            done = os.preadv(fd, [buffer], 0, _NOWAIT) if size else 0
        finally:
            os.close(fd)
        return buffer if done == size else None


def read_files(paths: Sequence[str]) -> list[bytes | bytearray]:
    """The whole of each file of ``paths`` (as big as when it was opened), read by the calling
    thread (a pool worker reading its task's files). A file the page cache holds is read at
    once; the others are asked of the kernel together (``POSIX_FADV_WILLNEED`` starts their
    reads, as the loop's concurrent reads do), then read in order, so a cold batch costs about
    one latency rather than one per file; at most :data:`COLD_WINDOW` files are open at a time.
    An ``OSError`` names its file (``filename``), whichever call raised it."""
    data: list[bytes | bytearray] = [b""] * len(paths)
    for start in range(0, len(paths), COLD_WINDOW):
        _read_window(paths, range(start, min(start + COLD_WINDOW, len(paths))), data)
    return data


def _read_window(paths: Sequence[str], window: range, data: list[bytes | bytearray]) -> None:
    cold: list[tuple[int, int, bytearray, int]] = []  # index, fd, buffer, bytes already read
    try:
        for index in window:
            try:
                fd = os.open(paths[index], os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise _named(exc, paths[index]) from None
            try:
                buffer = bytearray(os.fstat(fd).st_size)
                done = _read_cached(fd, buffer)
                if done < len(buffer) and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, done, 0, os.POSIX_FADV_WILLNEED)
            except BaseException as exc:
                os.close(fd)
                raise _named(exc, paths[index]) if isinstance(exc, OSError) else exc from None
            if done == len(buffer):
                os.close(fd)
                data[index] = buffer
            else:
                cold.append((index, fd, buffer, done))
        for index, fd, buffer, done in cold:
            try:
                data[index] = _read_rest(fd, buffer, done)
            except OSError as exc:
                raise _named(exc, paths[index]) from None
    finally:
        for _, fd, _, _ in cold:
            os.close(fd)


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path`` (the same subclass: ``OSError(errno, ...)`` picks it)."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, path)


def _read_cached(fd: int, buffer: bytearray) -> int:
    """Bytes of the file at the front of ``buffer`` that could be read without waiting for a disk."""
    if not buffer or _NOWAIT is None or not hasattr(os, "preadv"):
        return 0
    try:
        return os.preadv(fd, [buffer], 0, _NOWAIT)
    except OSError:  # not cached (EAGAIN), a file system without the flag: the blocking read says
        return 0


def _read_rest(fd: int, buffer: bytearray, done: int) -> bytes | bytearray:
    """``buffer`` (the file's size when opened) filled from ``done`` with blocking reads; a file
    that shrank since gives what it holds now."""
    view = memoryview(buffer)
    try:
        while done < len(buffer):
            n = os.preadv(fd, [view[done:]], done)
            if n == 0:
                return bytes(view[:done])
            done += n
    finally:
        view.release()
    return buffer
