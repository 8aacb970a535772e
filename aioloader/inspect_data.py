"""``aioloader inspect PATH``: what a dataset holds, read without loading it all.

A folder of images (count, classes and their sizes, one decoded sample), an HDF5 file (every
dataset's shape, dtype and chunks, one row), a text or JSON-lines file (line count, one line,
the keys of a record), a ``.npy`` array (shape, dtype, one row, memory-mapped).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["describe", "render"]

_PREVIEW = 200  # characters of a sample shown


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 3] + "..."


def _array_sample(row: Any) -> dict[str, Any]:
    row = np.asarray(row)
    summary: dict[str, Any] = {"shape": list(row.shape), "dtype": str(row.dtype)}
    if row.size and np.issubdtype(row.dtype, np.number):
        summary.update(min=float(row.min()), max=float(row.max()), mean=float(row.mean()))
    summary["preview"] = _preview(row.ravel()[:8].tolist())
    return summary


def _images(root: Path) -> dict[str, Any]:
    from PIL import Image

    from aioloader.sources import ImageFolder

    source = ImageFolder(root)
    counts = Counter(source.targets)
    classes = {name: counts.get(i, 0) for i, name in enumerate(source.classes)}
    first = root / source.files[0]
    with Image.open(first) as img:
        sample = {"file": source.files[0], "format": img.format, "mode": img.mode, "size": list(img.size)}
        sample["decoded"] = _array_sample(np.asarray(img.convert("RGB")))
    close = getattr(source, "close", None)
    if close is not None:
        close()
    return {"kind": "image folder", "count": len(source.files), "classes": classes, "sample": sample}


def _hdf5(path: Path) -> dict[str, Any]:
    import h5py

    datasets: dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                entry: dict[str, Any] = {
                    "shape": list(obj.shape),
                    "dtype": str(obj.dtype),
                    "chunks": list(obj.chunks) if obj.chunks else None,
                    "compression": obj.compression,
                }
                if obj.shape and obj.shape[0]:
                    entry["sample"] = _array_sample(obj[0])
                datasets[name] = entry

        f.visititems(visit)
    count = max((d["shape"][0] for d in datasets.values() if d["shape"]), default=0)
    return {"kind": "hdf5", "count": count, "datasets": datasets}


def _text(path: Path) -> dict[str, Any]:
    count = 0
    first = None
    with path.open("rb") as f:
        for line in f:
            if first is None:
                first = line.rstrip(b"\r\n").decode("utf-8", "replace")
            count += 1
    info: dict[str, Any] = {"kind": "text lines", "count": count, "sample": _preview(first)}
    if path.suffix in (".jsonl", ".ndjson") and first:
        record = json.loads(first)
        info["kind"] = "json lines"
        if isinstance(record, dict):
            info["keys"] = {k: type(v).__name__ for k, v in record.items()}
    return info


def _npy(path: Path) -> dict[str, Any]:
    array = np.load(path, mmap_mode="r")
    info: dict[str, Any] = {
        "kind": "npy array",
        "count": int(array.shape[0]) if array.ndim else 1,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "bytes": int(array.nbytes),
    }
    if array.ndim and array.shape[0]:
        info["sample"] = _array_sample(array[0])
    return info


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-serialisable description of the dataset at ``path``."""
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"path {str(target)!r} does not exist")
    if target.is_dir():
        info = _images(target)
    elif target.suffix in (".h5", ".hdf5", ".hdf"):
        info = _hdf5(target)
    elif target.suffix == ".npy":
        info = _npy(target)
    elif target.suffix in (".txt", ".text", ".jsonl", ".ndjson", ".csv", ".tsv"):
        info = _text(target)
    else:
        raise ValueError(
            f"path {str(target)!r}: unknown kind; expected a folder of images, .h5/.hdf5, .npy, "
            ".txt or .jsonl"
        )
    return {"path": str(target), **info}


def render(info: dict[str, Any]) -> str:
    """``describe``'s result as indented text."""
    lines: list[str] = []

    def walk(value: Any, indent: int, key: str) -> None:
        pad = "  " * indent
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            for k, v in value.items():
                walk(v, indent + 1, str(k))
        else:
            lines.append(f"{pad}{key}: {value}")

    for k, v in info.items():
        walk(v, 0, k)
    return "\n".join(lines)
