"""``aioloader inspect PATH``: what a dataset holds, read without loading it all.

A folder of images (count, classes and their sizes, one decoded sample), an HDF5 file (every
dataset's shape, dtype and chunks, one row), a text or JSON-lines file (line count, one line,
the keys of a record), a ``.npy`` array (shape, dtype, one row, memory-mapped).

A sample that does not decode (an image, an HDF5 row, a first JSON record) is reported in the
description, naming the file; a file that cannot be opened as its kind at all (a ``.h5`` that is
not HDF5) raises ``DataCorruptionError`` naming it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from aioloader.errors import DataCorruptionError

__all__ = ["describe", "render"]

_PREVIEW = 200  # characters of a sample shown
_IMAGES_TRIED = 10  # image files tried for a sample that decodes


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


def _image_sample(path: Path, name: str) -> dict[str, Any]:
    """Format, mode and size of the image at ``path``, and its decoded pixels."""
    from PIL import Image

    with Image.open(path) as img:
        sample = {"file": name, "format": img.format, "mode": img.mode, "size": list(img.size)}
        sample["decoded"] = _array_sample(np.asarray(img.convert("RGB")))
    return sample


def _first_decodable(root: Path, files: list[str]) -> tuple[dict[str, Any] | str, dict[str, str]]:
    """The first of ``files`` (at most ``_IMAGES_TRIED``) that decodes, described, and the error
    of each one before it that does not (by file name)."""
    unreadable: dict[str, str] = {}
    for name in files[:_IMAGES_TRIED]:
        try:
            return _image_sample(root / name, name), unreadable
        except Exception as exc:  # PIL raises many types for a bad file (OSError, SyntaxError, ...)
            unreadable[name] = f"{type(exc).__name__}: {exc}"
    return f"none of the first {len(unreadable)} files decodes", unreadable


def _images(root: Path) -> dict[str, Any]:
    from aioloader.sources import ImageFolder

    source = ImageFolder(root)
    try:
        counts = Counter(source.targets)
        classes = {name: counts.get(i, 0) for i, name in enumerate(source.classes)}
        sample, unreadable = _first_decodable(root, list(source.files))
        count = len(source.files)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    info: dict[str, Any] = {"kind": "image folder", "count": count, "classes": classes, "sample": sample}
    if unreadable:
        info["unreadable"] = unreadable
    return info


def _dataset_entry(obj: Any) -> dict[str, Any]:
    """Shape, dtype, chunks and compression of an HDF5 dataset, and its first row."""
    entry: dict[str, Any] = {
        "shape": list(obj.shape),
        "dtype": str(obj.dtype),
        "chunks": list(obj.chunks) if obj.chunks else None,
        "compression": obj.compression,
    }
    if obj.shape and obj.shape[0]:
        try:
            entry["sample"] = _array_sample(obj[0])
        except (OSError, ValueError, TypeError) as exc:  # a corrupt chunk, a missing filter
            entry["sample"] = f"unreadable: {type(exc).__name__}: {exc}"
    return entry


def _hdf5(path: Path) -> dict[str, Any]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataCorruptionError(f"{str(path)!r} cannot be opened as an HDF5 file: {exc}") from None
    datasets: dict[str, Any] = {}
    with f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets[name] = _dataset_entry(obj)

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
        info["kind"] = "json lines"
        try:
            record = json.loads(first)
        except ValueError as exc:
            info["error"] = f"line 1 of {str(path)!r} is not valid JSON: {exc}"
            return info
        if isinstance(record, dict):
            info["keys"] = {k: type(v).__name__ for k, v in record.items()}
    return info


def _npy(path: Path) -> dict[str, Any]:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise DataCorruptionError(f"{str(path)!r} cannot be read as a .npy array: {exc}") from None
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
