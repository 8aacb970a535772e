"""``ImageFolder``: image files under a root folder, one class per sub-folder.

Items are ``(raw_bytes, label)`` (or ``raw_bytes`` alone for a flat folder), read with async file
I/O on the event loop (``aget``: straight from the page cache when it holds the file, else
aiofiles in a thread); decoding is a separate step
(:func:`aioloader.transforms.decode_image`) so it can run in threads or processes. The raw bytes
are a :class:`FileBytes`, a ``bytes`` that remembers its file and key for error messages.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiofiles.ospath
import numpy as np

from aioloader._spec import check_positive_int
from aioloader.errors import DataNotFoundError, os_read_error
from aioloader.sources._cached_read import CachedReader, read_files
from aioloader.sources._modes import DEFAULT_MAX_MEMORY_USAGE, ModalSource
from aioloader.sources._paths import existing_dir

__all__ = ["ImageFolder", "FileBytes", "ImageFiles", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_ITEM_OVERHEAD = 160  # bytes object, tuple and label, for the eager estimate


class FileBytes(bytes):
    """The bytes of one file, with the ``path`` and ``key`` they were read from."""

    path: str
    key: Any

    def __new__(cls, data: bytes, path: str, key: Any) -> FileBytes:
        obj = super().__new__(cls, data)
        obj.path = path
        obj.key = key
        return obj

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # protocol 5: the bytes can travel out of band (to a worker, without a copy)
        data = pickle.PickleBuffer(self) if protocol >= 5 else bytes(self)
        return (FileBytes, (data, self.path, self.key))


def _read_whole_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# aiofiles runs this in the loop's executor as one task: open, read and close in one thread hop
# (``aiofiles.open`` + ``read`` + ``close`` take three; on 2 cores that cost 3-5x the CPU per file).
_read_file = aiofiles.ospath.wrap(_read_whole_file)


def _check_extensions(extensions: Any) -> tuple[str, ...] | None:
    if extensions is None:
        return None
    if isinstance(extensions, str):
        extensions = (extensions,)
    if isinstance(extensions, (tuple, list, set, frozenset)) and not extensions:
        raise ValueError("extensions is empty, so no file would be kept; pass None to keep every file")
    if not isinstance(extensions, (tuple, list, set, frozenset)) or not all(
        isinstance(e, str) and e for e in extensions
    ):
        raise TypeError(
            f"extensions must be a sequence of suffixes like ('.jpg', '.png'), got {extensions!r}"
        )
    return tuple(sorted({e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}))


def _matches(name: str, extensions: tuple[str, ...] | None) -> bool:
    if name.startswith("."):
        return False
    return extensions is None or name.lower().endswith(extensions)


def _unvisited(dirpath: str, names: list[str], visited: set[tuple[int, int]]) -> list[str]:
    """The sub-folders of ``dirpath`` to walk into: not hidden, and not a folder already walked
    (a symlink back up the tree would otherwise list the same files again at every depth)."""
    kept = []
    for name in sorted(names):
        if name.startswith("."):
            continue
        try:
            info = os.stat(os.path.join(dirpath, name))
        except OSError:  # vanished, or a dangling link: nothing to walk
            continue
        if (info.st_dev, info.st_ino) not in visited:
            visited.add((info.st_dev, info.st_ino))
            kept.append(name)
    return kept


def _files_under(folder: Path, extensions: tuple[str, ...] | None) -> list[str]:
    """Matching files under ``folder`` (recursively, following links to folders, each folder
    once), sorted, as paths relative to it."""
    found = []
    root = os.stat(folder)
    visited = {(root.st_dev, root.st_ino)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = _unvisited(dirpath, dirnames, visited)
        rel = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if _matches(name, extensions):
                found.append(name if rel == "." else os.path.join(rel, name))
    return found


class ImageFolder(ModalSource):
    """Images under ``root``: ``root/<class>/**/<file>``, or files directly in a flat ``root``.

    ``classes`` is the sorted list of sub-folder names (hidden ones skipped) and an item's label
    is its class's index in it. A root without sub-folders gives unlabelled items (the bytes
    alone) and ``classes == []``. ``extensions``: the file suffixes to keep (case-insensitive;
    ``None`` keeps every file). ``mode``: see :mod:`aioloader.sources._modes`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
        mode: str = "lazy",
        max_memory_usage: float = DEFAULT_MAX_MEMORY_USAGE,
        read_concurrency: int = 16,
    ) -> None:
        self._setup_mode(mode, max_memory_usage)
        self.root = existing_dir(root, "root")
        self.extensions = _check_extensions(extensions)
        self.read_concurrency = check_positive_int(read_concurrency, "read_concurrency")
        self.classes = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        files: list[str] = []
        labels: list[int] = []
        if self.classes:
            for label, name in enumerate(self.classes):
                found = _files_under(self.root / name, self.extensions)
                files += [os.path.join(name, f) for f in found]
                labels += [label] * len(found)
        else:
            files = sorted(
                e.name for e in os.scandir(self.root) if e.is_file() and _matches(e.name, self.extensions)
            )
        if not files:
            wanted = "files" if self.extensions is None else f"files ending in {', '.join(self.extensions)}"
            where = f" (looked in sub-folders {self.classes})" if self.classes else ""
            raise DataNotFoundError(f"ImageFolder: no {wanted} under {str(self.root)!r}{where}; it is empty")
        self.files = files
        self._cached = CachedReader()
        self.labels: np.ndarray | None = np.asarray(labels, dtype=np.int64) if self.classes else None
        self._start_mode()

    @property
    def targets(self) -> list[int]:
        """Every item's label, in index order (torchvision's name); empty when unlabelled."""
        return [] if self.labels is None else self.labels.tolist()

    def path(self, index: int) -> Path:
        """The file of item ``index``."""
        return self.root / self.files[self._check_index(index)]

    # -- reading ---------------------------------------------------------------------------
    def _length(self) -> int:
        return len(self.files)

    def _item(self, index: int, path: str, data: bytes) -> Any:
        return _item(self.labels, index, path, data)

    def _missing(self, index: int, path: str) -> DataNotFoundError:
        return _missing(index, path)

    def _read(self, index: int) -> Any:
        path = os.path.join(self.root, self.files[index])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise self._missing(index, path) from None
        except OSError as exc:
            raise _unreadable(exc, index, path) from None
        return self._item(index, path, data)

    async def _aread(self, index: int) -> Any:
        path = os.path.join(self.root, self.files[index])
        try:
            data = self._cached.read(path)  # on the loop when the page cache has it all
            if data is None:
                data = await _read_file(path)
        except FileNotFoundError:
            raise self._missing(index, path) from None
        except OSError as exc:
            raise _unreadable(exc, index, path) from None
        return self._item(index, path, data)

    async def aget(self, key: int) -> Any:
        """Item ``key``, read with async file I/O (the read stage runs these on the loop)."""
        return await self._aget(key)

    def worker_reader(self) -> ImageFiles | None:
        """What a pool's worker (a process or a thread) calls to read its task's items itself
        (:mod:`aioloader._run.read_fusion`), so the files' bytes never pass through the loop.
        None unless the mode is "lazy" (eager and cached items live in this process's memory)
        and items are read as this class reads them (a subclass that reads its own way keeps
        its reads in the read stage)."""
        if self.mode != "lazy" or any(
            getattr(type(self), name) is not getattr(ImageFolder, name) for name in _READ_PATH
        ):
            return None
        return ImageFiles(str(self.root), self.files, self.labels)

    def _scan(self) -> Iterator[Any]:
        for index in range(len(self.files)):
            yield self._read(index)

    def _estimate_nbytes(self) -> int:
        total = 0
        for index, name in enumerate(self.files):
            path = os.path.join(self.root, name)
            try:
                total += os.stat(path).st_size + _ITEM_OVERHEAD
            except FileNotFoundError:
                raise self._missing(index, path) from None
        return total

    def __repr__(self) -> str:
        kind = f"{len(self.classes)} classes" if self.classes else "unlabelled"
        return f"ImageFolder({str(self.root)!r}, {len(self.files)} files, {kind}, mode={self.mode!r})"


_READ_PATH = ("aget", "_aget", "_aread", "_item", "__getitem__")  # what a worker's read stands for


def _item(labels: np.ndarray | None, index: int, path: str, data: bytes | bytearray) -> Any:
    raw = FileBytes(data, path, index)
    return raw if labels is None else (raw, int(labels[index]))


def _missing(index: int, path: str) -> DataNotFoundError:
    return DataNotFoundError(f"ImageFolder: file {path!r} (key {index}) is gone", key=index)


def _unreadable(exc: OSError, index: int, path: str) -> Exception:
    """The library's error for ``exc``, raised reading the file of key ``index``."""
    if isinstance(exc, FileNotFoundError):
        return _missing(index, path)
    return os_read_error(exc, f"ImageFolder: cannot read file {path!r}", key=index)


class ImageFiles:
    """An ``ImageFolder``'s files as a pool worker reads them (``ImageFolder.worker_reader``):
    keys -> the items ``aget`` gives. It holds only the root, the file list and the labels, so
    it pickles whatever else the source holds (a lambda transform, a lock)."""

    def __init__(self, root: str, files: list[str], labels: np.ndarray | None) -> None:
        self.root = root
        self.files = files
        self.labels = labels

    def __call__(self, keys: Sequence[int]) -> list[Any]:
        indices = [int(key) for key in keys]
        paths = [os.path.join(self.root, self.files[index]) for index in indices]
        try:
            data = read_files(paths)
        except OSError as exc:  # read_files names the file
            if exc.filename not in paths:
                raise
            index = indices[paths.index(exc.filename)]
            raise _unreadable(exc, index, exc.filename) from None
        return [_item(self.labels, i, path, raw) for i, path, raw in zip(indices, paths, data, strict=True)]

    def __repr__(self) -> str:
        return f"ImageFiles({self.root!r}, {len(self.files)} files)"
