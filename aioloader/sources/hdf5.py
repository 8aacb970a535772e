"""``HDF5``: the rows of one or more aligned HDF5 datasets, read in whole row ranges.

The file is opened lazily in the process that reads (and reopened after a fork); the source
pickles without its handle, so it can be built in the parent and read in workers. A block of
keys becomes few reads: ``__getitems__`` sorts the keys, merges those within a chunk (or a small
gap) of each other into row ranges and reads each range with one h5py call per dataset.
``chunk_rows`` and :meth:`HDF5.chunks` expose the layout, for chunk-order shuffling.

Each process checks, when it opens the file, that the datasets still have the shapes and dtypes
recorded when the source was made: a file replaced or rewritten between epochs raises
``DataCorruptionError`` instead of giving short (or empty) blocks of rows.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import h5py
import numpy as np

from aioloader.errors import (
    DataCorruptionError,
    DataFormatError,
    DataNotFoundError,
    os_read_error,
)
from aioloader.sources._handles import PerProcess
from aioloader.sources._modes import DEFAULT_MAX_MEMORY_USAGE, ModalSource
from aioloader.sources._paths import existing_file

__all__ = ["HDF5"]

_READ_UNIT_BYTES = 1 << 20  # rows per read unit of a contiguous (unchunked) dataset
_MERGE_GAP_BYTES = 64 << 10  # read across a gap of rows this small rather than make another call
_CHUNK_CACHE_BYTES = 16 << 20  # h5py's per-dataset chunk cache (default 1 MiB)

_Handle = tuple[h5py.File, tuple[h5py.Dataset, ...]]


def _open_file(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
    except FileNotFoundError:
        raise DataNotFoundError(f"HDF5: no such file: {path!r}") from None
    except PermissionError as exc:
        raise os_read_error(exc, f"HDF5: cannot open {path!r}") from None
    except OSError as exc:
        raise DataFormatError(f"HDF5: cannot open {path!r} as an HDF5 file ({exc})") from None


def _layout(obj: Any) -> str:
    """A dataset's shape and dtype as an error message shows them ("missing" for no dataset)."""
    if not isinstance(obj, h5py.Dataset):
        return "missing"
    return f"shape {obj.shape} {obj.dtype}"


def _open(
    path: str, names: tuple[str, ...], layouts: tuple[tuple[tuple[int, ...], np.dtype], ...] | None = None
) -> _Handle:
    """The file and its datasets ``names``; ``DataCorruptionError`` when one no longer has the
    shape and dtype in ``layouts`` (recorded when the source was made)."""
    file = _open_file(path)
    try:
        for name, (shape, dtype) in zip(names, layouts or (), strict=False):
            obj = file.get(name)
            if not isinstance(obj, h5py.Dataset) or obj.shape != shape or obj.dtype != dtype:
                raise DataCorruptionError(
                    f"HDF5: {path!r} changed since the source was made: dataset {name!r} is now "
                    f"{_layout(obj)}, was shape {shape} {dtype}; make a new HDF5 source to read it"
                )
        return file, tuple(file[name] for name in names)
    except BaseException:
        file.close()
        raise


def _close(handle: _Handle) -> None:
    handle[0].close()


def _dataset_names(file: h5py.File) -> list[str]:
    names: list[str] = []
    file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _check_names(datasets: Any) -> tuple[str, ...]:
    names = (datasets,) if isinstance(datasets, str) else datasets
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"datasets must be a dataset name or a non-empty sequence of names, got {datasets!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"datasets has repeated names: {list(names)}")
    return tuple(names)


class HDF5(ModalSource):
    """Rows of ``datasets`` in the HDF5 file at ``path``: row ``i`` of each, aligned.

    ``datasets``: one name (items are that dataset's rows, as h5py returns them: an array, or a
    numpy scalar for a 1-D dataset) or several (items are tuples of rows, in that order). Every
    dataset must have the same number of rows.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        datasets: str | Sequence[str],
        *,
        mode: str = "lazy",
        max_memory_usage: float = DEFAULT_MAX_MEMORY_USAGE,
    ) -> None:
        self._setup_mode(mode, max_memory_usage)
        self.path = existing_file(path, "path")
        self.datasets = _check_names(datasets)
        self._describe()
        layouts = tuple(zip(self.shapes, self.dtypes, strict=True))
        opener = partial(_open, str(self.path), self.datasets, layouts)
        self._handle: PerProcess[_Handle] = PerProcess(opener, _close)
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._start_mode()

    def _describe(self) -> None:
        """Check the datasets and record their layout (the file is closed again right after)."""
        with _open_file(str(self.path)) as file:
            shapes, dtypes, chunks = [], [], []
            for name in self.datasets:
                obj = file.get(name)
                if not isinstance(obj, h5py.Dataset):
                    present = _dataset_names(file)  # walked only for the message: a file may hold many
                    raise DataFormatError(
                        f"HDF5: {str(self.path)!r} has no dataset {name!r}; datasets there: {present}"
                    )
                if obj.shape is None or len(obj.shape) == 0:
                    raise DataFormatError(
                        f"HDF5: dataset {name!r} in {str(self.path)!r} is scalar, it has no rows"
                    )
                shapes.append(obj.shape)
                dtypes.append(obj.dtype)
                chunks.append(obj.chunks)
        lengths = {name: shape[0] for name, shape in zip(self.datasets, shapes, strict=True)}
        if len(set(lengths.values())) > 1:
            raise DataFormatError(
                f"HDF5: datasets have different numbers of rows, cannot align them: {lengths}"
            )
        self.length = shapes[0][0]
        if self.length == 0:
            raise DataNotFoundError(
                f"HDF5: {', '.join(map(repr, self.datasets))} in {str(self.path)!r} is empty (0 rows)"
            )
        self.shapes: tuple[tuple[int, ...], ...] = tuple(shapes)
        self.dtypes: tuple[np.dtype, ...] = tuple(dtypes)
        self.chunked = any(c is not None for c in chunks)
        row_bytes = sum(d.itemsize * math.prod(s[1:]) for d, s in zip(dtypes, shapes, strict=True))
        gap_rows = max(1, _MERGE_GAP_BYTES // max(1, row_bytes))
        if self.chunked:
            rows = math.lcm(*(c[0] for c in chunks if c is not None))
            gap_rows = min(gap_rows, rows)  # merging within a chunk saves calls, not decompression
        else:
            rows = max(1, _READ_UNIT_BYTES // max(1, row_bytes))
        self._merge_gap = gap_rows
        self.chunk_rows = min(rows, self.length)
        self._row_bytes = row_bytes

    def chunks(self) -> list[range]:
        """Row ranges of ``chunk_rows`` rows (the last may be shorter), covering every row once.

        With a chunked layout each range is whole HDF5 chunks of every dataset (one read
        decompresses each chunk once); otherwise ranges of about 1 MiB.
        """
        step = self.chunk_rows
        return [range(start, min(start + step, self.length)) for start in range(0, self.length, step)]

    # -- reading ---------------------------------------------------------------------------
    def _sources(self) -> tuple[Any, ...]:
        if self._arrays is not None:
            return self._arrays
        return self._handle.get()[1]

    def _length(self) -> int:
        return self.length

    def _unreadable(self, exc: OSError, rows: str, key: Any) -> Exception:
        """The library's error for ``exc`` (h5py's bare ``OSError`` for a chunk that does not
        decompress), naming the file, the datasets, the rows and the key."""
        where = f"HDF5: cannot read {rows} of {list(self.datasets)} in {str(self.path)!r}"
        return os_read_error(exc, where, key=key)

    def _read(self, index: int) -> Any:
        try:
            rows = tuple(d[index] for d in self._sources())
        except OSError as exc:
            raise self._unreadable(exc, f"row {index}", index) from None
        return rows[0] if len(rows) == 1 else rows

    def _read_rows(self, source: Any, unique: np.ndarray, bounds: list[int]) -> np.ndarray:
        """Rows ``unique`` (sorted, distinct) of one dataset: one read per range in ``bounds``."""
        if len(bounds) == 2 and unique[-1] - unique[0] + 1 == len(unique):
            return source[int(unique[0]) : int(unique[-1]) + 1]  # one contiguous run: one read
        out = np.empty((len(unique), *source.shape[1:]), dtype=source.dtype)
        for lo, hi in itertools.pairwise(bounds):
            start, stop = int(unique[lo]), int(unique[hi - 1]) + 1
            block = source[start:stop]
            out[lo:hi] = block if stop - start == hi - lo else block[unique[lo:hi] - start]
        return out

    def _read_many(self, indices: np.ndarray) -> list[Any] | np.ndarray:
        """Rows at ``indices``: one array for a single dataset (batching slices it, rows never
        become Python objects one by one), a list of tuples for several."""
        if len(indices) == 0:
            return []
        unique, inverse = np.unique(indices, return_inverse=True)
        breaks = np.flatnonzero(np.diff(unique) > self._merge_gap) + 1
        bounds = [0, *breaks.tolist(), len(unique)]
        in_order = len(unique) == len(indices) and bool(np.all(indices[:-1] < indices[1:]))
        columns = []
        for source in self._sources():
            try:
                rows = self._read_rows(source, unique, bounds)
            except OSError as exc:  # the read stage reads the keys one by one to name the row
                where = f"rows {int(unique[0])}..{int(unique[-1])}"
                raise self._unreadable(exc, where, indices.tolist()) from None
            columns.append(rows if in_order else rows[inverse])
        if len(columns) == 1:
            return columns[0]
        return list(zip(*(list(c) for c in columns), strict=True))

    def _scan(self) -> Iterator[Any]:
        for rows in self.chunks():
            try:
                columns = [source[rows.start : rows.stop] for source in self._sources()]
            except OSError as exc:
                raise self._unreadable(exc, f"rows {rows.start}..{rows.stop - 1}", rows.start) from None
            if len(columns) == 1:
                yield from columns[0]
            else:
                yield from zip(*columns, strict=True)

    def _estimate_nbytes(self) -> int:
        return self._row_bytes * self.length

    def _load_eager(self) -> None:
        try:
            self._arrays = tuple(d[()] for d in self._handle.get()[1])
        finally:
            self._handle.close()  # no handle is left open in this (parent) process
        return None

    def _close(self) -> None:
        self._handle.close()

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open handle to the file."""
        return self._handle.is_open

    def __repr__(self) -> str:
        return (
            f"HDF5({str(self.path)!r}, {list(self.datasets)}, {self.length} rows, "
            f"chunk_rows={self.chunk_rows}, mode={self.mode!r})"
        )
