"""``Array``: the rows of a numpy array in memory, or of a ``.npy`` file memory-mapped.

``__getitems__`` takes a block of keys with one fancy index (one copy, then row views), so a
batch never costs a Python call per row. A memory-mapped source pickles as its path and maps the
file again in the receiving process, instead of copying the array into the pickle. Each mapping
checks that the file still holds the shape and dtype seen when the source was made: a file
replaced between epochs raises ``DataCorruptionError`` instead of giving short blocks of rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from aioloader.errors import DataCorruptionError, DataFormatError, DataNotFoundError
from aioloader.sources._handles import PerProcess
from aioloader.sources._modes import DEFAULT_MAX_MEMORY_USAGE, ModalSource
from aioloader.sources._paths import existing_file

__all__ = ["Array"]

_SCAN_ROWS_BYTES = 1 << 20


def _map_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataNotFoundError(f"Array: no such file: {path!r}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(f"Array: {path!r} is not a readable .npy file ({exc})") from None


def _map_same_npy(path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``path`` mapped again (in another process, or after ``close()``); ``DataCorruptionError``
    when it no longer holds an array of ``shape`` and ``dtype``."""
    array = _map_npy(path)
    if array.shape != shape or array.dtype != dtype:
        raise DataCorruptionError(
            f"Array: {path!r} changed since the source was made: it now holds shape {array.shape} "
            f"{array.dtype}, was {shape} {dtype}; make a new Array source to read it"
        )
    return array


class Array(ModalSource):
    """Rows (first-axis slices) of ``ndarray_or_npy_path``.

    An array is used as it is (no copy). A path to a ``.npy`` file is memory-mapped read-only in
    ``"lazy"`` mode, loaded into memory in ``"eager"`` mode (after the budget check), read
    front to back in ``"streaming"`` mode and read through the LRU cache in ``"cached"`` mode.
    """

    def __init__(
        self,
        ndarray_or_npy_path: np.ndarray | str | os.PathLike[str],
        *,
        mode: str = "lazy",
        max_memory_usage: float = DEFAULT_MAX_MEMORY_USAGE,
    ) -> None:
        self._setup_mode(mode, max_memory_usage)
        self.path: Path | None = None
        self._array: np.ndarray | None = None
        self._mapped: PerProcess[np.ndarray] | None = None
        source = ndarray_or_npy_path
        if isinstance(source, np.ndarray):
            array = source
            where = "the array"
        elif isinstance(source, (str, os.PathLike)):
            self.path = existing_file(source, "ndarray_or_npy_path")
            array = _map_npy(str(self.path))
            self._mapped = PerProcess(partial(_map_same_npy, str(self.path), array.shape, array.dtype))
            where = repr(str(self.path))
        else:
            raise TypeError(
                f"ndarray_or_npy_path must be a numpy array or a path to a .npy file, got {type(source).__name__}"
            )
        if array.ndim == 0:
            raise DataFormatError(f"Array: {where} is 0-dimensional, it has no rows")
        if len(array) == 0:
            raise DataNotFoundError(f"Array: {where} is empty (0 rows)")
        if self._mapped is None:
            self._array = array
        self.shape: tuple[int, ...] = tuple(array.shape)
        self.dtype: np.dtype = array.dtype
        self._start_mode()

    def _rows(self) -> np.ndarray:
        if self._array is not None or self._mapped is None:
            return self._array  # type: ignore[return-value]
        return self._mapped.get()

    # -- reading ---------------------------------------------------------------------------
    def _length(self) -> int:
        return self.shape[0]

    def _read(self, index: int) -> Any:
        row = self._rows()[index]
        return np.asarray(row) if isinstance(row, np.ndarray) else row

    def _read_many(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` as one array (batching slices it; see the batch stage)."""
        rows = self._rows()
        n = len(indices)
        if n and indices[-1] - indices[0] + 1 == n and bool(np.all(np.diff(indices) == 1)):
            block = np.asarray(rows[int(indices[0]) : int(indices[-1]) + 1])
        else:
            block = rows[indices]  # one fancy index: one copy
        return block

    def _scan(self) -> Iterator[Any]:
        rows = self._rows()
        row_bytes = max(1, rows.itemsize * (rows[0].size if rows.ndim > 1 else 1))
        step = max(1, _SCAN_ROWS_BYTES // row_bytes)
        for start in range(0, len(rows), step):
            yield from np.asarray(rows[start : start + step])

    def _estimate_nbytes(self) -> int:
        return 0 if self._mapped is None else int(self._rows().nbytes)

    def _load_eager(self) -> None:
        if self._mapped is not None:
            self._array = np.array(self._mapped.get())
            self._mapped.close()
        return None

    def _close(self) -> None:
        if self._mapped is not None:
            self._mapped.close()

    def __repr__(self) -> str:
        where = "array" if self.path is None else repr(str(self.path))
        return f"Array({where}, shape={self.shape}, dtype={self.dtype}, mode={self.mode!r})"
