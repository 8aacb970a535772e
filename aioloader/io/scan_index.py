"""The byte ranges of samples found by reading tar shards once, kept in a local file.

A :class:`~aioloader.sources.WebDataset` without an index streams its shards; given
``scan_index=PATH`` it records each shard it reads whole and sound (its size and every
sample's first byte, the last sample's end) in that file, in the format of the index
``write_shards`` writes. When the file covers every shard, the next ``WebDataset`` built over
the same URLs is indexable (``shuffle=True`` by ranged reads, rank policies), without another
pass over the data.

Several processes and ranks may record into one file: each update holds an ``flock`` on a lock
file beside it, merges with what is there and replaces the file by a rename, so a reader never
sees half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from aioloader.io.urls import local_path, protocol_of

INDEX_FORMAT = "aioloader.wds-index/1"


class ScanIndex:
    """The scan index file at ``path`` (created on the first record)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        if protocol_of(path) != "file":
            raise ValueError(f"scan_index must be a local path, got {path}")
        self.path = local_path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """url -> ``{"url", "bytes", "offsets"}`` for the shards recorded so far."""
        try:
            with open(self.path, encoding="utf-8") as file:
                doc = json.load(file)
        except FileNotFoundError:
            return {}
        if doc.get("format") != INDEX_FORMAT:
            raise ValueError(f"scan_index {self.path} is not an aioloader shard index")
        return {entry["url"]: entry for entry in doc["shards"]}

    def covering(self, urls: Sequence[str]) -> list[dict[str, Any]] | None:
        """The entries of ``urls`` in order, or None while some shard has not been scanned."""
        known = self.load()
        entries = [known.get(url) for url in urls]
        return None if any(e is None for e in entries) else entries  # type: ignore[return-value]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with open(self.path + ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def record(self, url: str, size: int, offsets: Sequence[int]) -> None:
        """Add (or replace) one shard: ``offsets`` are its samples' first bytes and, last, the
        end of its last sample."""
        with self._locked():
            known = self.load()
            known[url] = {"url": url, "bytes": int(size), "offsets": [int(o) for o in offsets]}
            temporary = f"{self.path}.tmp-{os.getpid()}"
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump({"format": INDEX_FORMAT, "shards": list(known.values())}, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
