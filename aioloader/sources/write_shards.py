"""``write_shards``: samples from any loader or iterable into WebDataset tar shards plus an index.

The shards are what ``webdataset.ShardWriter`` writes (one tar member per field, named
``<key>.<ext>``, members of a sample together), so the ``webdataset`` package reads them
unchanged. The index (``index.json`` beside them) lists each shard's size and the byte offset
of every sample, which makes the shards indexable: ``al.sources.WebDataset(index=...)``.

A shard is closed before it would pass ``max_bytes`` (a sample larger than that gets a shard of
its own) or hold ``max_count`` samples. Each file is written under a temporary name and renamed
when complete, so a crash never leaves a partial shard under its final name.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from aioloader.sources.webdataset import INDEX_FORMAT

_MTIME = 0  # fixed, so the same samples give the same bytes


def _encode(value: Any, where: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.ndarray, dict, list, np.generic)):
        raise TypeError(
            f"write_shards: {where} is a {type(value).__name__}; give bytes, str, a number, a "
            "dict/list (written as JSON) or a numpy array (written as .npy)"
        )
    if isinstance(value, (int, float, np.generic)):
        return str(value.item() if isinstance(value, np.generic) else value).encode()
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return buffer.getvalue()
    return json.dumps(value).encode("utf-8")


def _sample_dict(sample: Any, position: int, fields: Sequence[str] | None) -> dict[str, Any]:
    if isinstance(sample, dict):
        out = dict(sample)
    elif fields is not None and isinstance(sample, (tuple, list)):
        if len(sample) != len(fields):
            raise ValueError(f"write_shards: sample {position} has {len(sample)} parts, fields names {len(fields)}")
        out = dict(zip(fields, sample, strict=True))
    else:
        raise TypeError(
            f"write_shards: sample {position} is a {type(sample).__name__}; give dicts of "
            "{extension: value}, or tuples with fields=('jpg', 'cls', ...)"
        )
    out.setdefault("__key__", f"{position:09d}")
    return out


class _Shard:
    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = f"{path}.partial-{os.getpid()}"
        self.file = open(self.partial, "wb")  # noqa: SIM115 - closed by finish() or abort()
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.offsets: list[int] = []

    def add(self, members: list[tuple[str, bytes]]) -> None:
        self.offsets.append(self.tar.offset)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _MTIME, 0o444
            info.uname = info.gname = "aioloader"
            self.tar.addfile(info, io.BytesIO(data))

    def finish(self) -> dict[str, Any]:
        end = self.tar.offset
        self.tar.close()
        self.file.close()
        os.replace(self.partial, self.path)
        return {"url": self.path, "bytes": os.path.getsize(self.path), "offsets": [*self.offsets, end]}

    def abort(self) -> None:
        self.tar.close()
        self.file.close()
        os.unlink(self.partial)


def write_shards(
    samples: Iterable[Any],
    pattern: str | os.PathLike[str],
    *,
    max_bytes: int = 256 << 20,
    max_count: int | None = None,
    fields: Sequence[str] | None = None,
    index: str | os.PathLike[str] | None = None,
) -> str:
    """Write ``samples`` (dicts ``{"__key__": ..., "jpg": bytes, "cls": 3}``, or tuples named
    by ``fields``; a loader's items work) to shards named ``pattern % shard_number``
    (``"out/train-%06d.tar"``) and return the index's path (``index``, by default
    ``index.json`` in the shards' folder)."""
    pattern = os.fspath(pattern)
    try:
        pattern % 0
    except TypeError:
        raise ValueError(f"pattern must hold one %d-style field for the shard number, got {pattern!r}") from None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
        raise ValueError(f"max_bytes must be an int >= 1024, got {max_bytes!r}")
    if max_count is not None and (isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1):
        raise ValueError(f"max_count must be an int >= 1 or None, got {max_count!r}")
    folder = os.path.dirname(pattern) or "."
    os.makedirs(folder, exist_ok=True)
    index_path = os.fspath(index) if index is not None else os.path.join(folder, "index.json")
    shards: list[dict[str, Any]] = []
    current: _Shard | None = None
    try:
        for position, sample in enumerate(samples):
            record = _sample_dict(sample, position, fields)
            key = str(record.pop("__key__"))
            if "." in key.rsplit("/", 1)[-1]:
                raise ValueError(f"write_shards: sample key {key!r} has a dot; a reader would split it there")
            members = [
                (f"{key}.{ext}", _encode(value, f"sample {key!r} field {ext!r}"))
                for ext, value in record.items()
                if not ext.startswith("__")
            ]
            size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
            if current is not None and (
                current.tar.offset + size + 1024 > max_bytes
                or (max_count is not None and len(current.offsets) >= max_count)
            ):
                shards.append(current.finish())
                current = None
            if current is None:
                current = _Shard(pattern % len(shards))
            current.add(members)
        if current is not None:
            shards.append(current.finish())
            current = None
    finally:
        if current is not None:
            current.abort()
    base = os.path.dirname(os.path.abspath(index_path))
    for shard in shards:  # named relative to the index, so the folder can move as a whole
        shard["url"] = os.path.relpath(os.path.abspath(shard["url"]), base)
    partial = f"{index_path}.partial-{os.getpid()}"
    with open(partial, "w") as out:
        json.dump({"format": INDEX_FORMAT, "shards": shards}, out)
    os.replace(partial, index_path)
    return index_path
