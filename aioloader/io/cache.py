"""A local cache of whole shards: a directory bounded in bytes, least recently used out first.

Shards are files named by a hash of their URL. A shard is written under a temporary name in
the same directory and renamed into place when complete, so a crash never leaves a partial file
under a shard's name. Eviction and insertion hold an ``flock`` on the directory's lock file,
so several processes and ranks on one machine can share a cache; a reader opens a shard and
keeps the descriptor, so evicting the file under it does not disturb its read. Use refreshes a
shard's modification time: eviction removes the oldest first. The cache persists across
epochs and restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence

_SUFFIX = ".shard"
_LOCK = ".lock"


class ShardCache:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"cache_bytes must be an int >= 1, got {max_bytes!r}")
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        os.makedirs(self.directory, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def path(self, url: str) -> str:
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:40]
        return os.path.join(self.directory, digest + _SUFFIX)

    def check_fits(self, url: str, size: int) -> None:
        """``ValueError`` when one shard cannot fit in the cache (it would never be kept)."""
        if size > self.max_bytes:
            raise ValueError(
                f"cache_bytes={self.max_bytes} is smaller than shard {url} ({size} bytes): "
                "give the cache room for at least one shard"
            )

    def open(self, url: str) -> int | None:
        """A read-only descriptor of the cached shard (the caller closes it), or None."""
        path = self.path(url)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        self.hits += 1
        return fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(os.path.join(self.directory, _LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, url: str, parts: Sequence[bytes]) -> None:
        """Store a whole shard (its bytes in ``parts``), evicting the least recently used."""
        size = sum(len(p) for p in parts)
        self.check_fits(url, size)
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    out.write(part)
            with self._locked():
                self._evict(size)
                os.replace(temporary, self.path(url))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def _evict(self, incoming: int) -> None:
        entries = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    entries.append((stat.st_mtime_ns, stat.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total + incoming <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size

    def used_bytes(self) -> int:
        return sum(e.stat().st_size for e in os.scandir(self.directory) if e.name.endswith(_SUFFIX))
