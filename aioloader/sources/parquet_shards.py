"""``ParquetShards``: the rows of Parquet files in object storage, row group by row group.

Each URL is a shard. pyarrow reads it in a thread through a file object whose reads are ranged
reads on the loader's event loop (with its retries): the footer first, then, per row group,
only the byte ranges of the selected ``columns`` (pyarrow's ``pre_buffer`` joins neighbouring
ones), so a column left out is never fetched. The next row group is read while the current
one's rows go out. Each row is a sample: a dict of column name to Python value. A file
pyarrow cannot read raises :class:`~aioloader.errors.DataCorruptionError` naming the URL (or
ends the shard under ``on_error="skip"``, reported).

With ``indexed=True`` the footers are read when the source is built and the rows become
indexable: ``shuffle=True`` over all rows, ``shuffle="chunks"`` by row group, rank policies
(:mod:`aioloader.sources._parquet_index`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aioloader.errors import DataCorruptionError
from aioloader.io.store import ObjectStore
from aioloader.sources._parquet_index import IndexedParquet, read_footers, run_blocking
from aioloader.sources._remote_shards import RemoteShards, Report, shard_items

_READ_TIMEOUT_S = 600.0  # a backstop: each read has its own deadline and retries


class _RangedFile(io.RawIOBase):
    """A read-only file for pyarrow's thread: each read is a ranged read run on ``loop``."""

    def __init__(self, store: ObjectStore, url: str, size: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._store, self._url, self._size, self._loop = store, url, size, loop
        self._pos = 0
        self._reading: Any = None  # the read the thread waits for
        self._aborted = False

    def abort(self) -> None:
        """Fail the read the thread waits for and any later one: the shard is being left."""
        self._aborted = True
        reading = self._reading
        if reading is not None:
            reading.cancel()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        if self._aborted:
            raise OSError(f"{self._url}: the read was abandoned")
        future = asyncio.run_coroutine_threadsafe(self._store.read(self._url, self._pos, end), self._loop)
        self._reading = future
        try:
            data = future.result(_READ_TIMEOUT_S)
        finally:
            self._reading = None
        self._pos = end
        return data

    def readall(self) -> bytes:
        return self.read(-1)


def _open(file: _RangedFile, metadata: Any = None) -> Any:
    """pyarrow's reader of ``file``; with the ``metadata`` of an earlier open, the footer is not
    read again."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(file, metadata=metadata, pre_buffer=True)


async def _open_checked(file: _RangedFile, url: str) -> Any:
    """:func:`_open` in a thread; a file pyarrow cannot read is a ``DataCorruptionError`` naming
    ``url`` (a connection's failure, or an error with a cause, passes as it is)."""
    try:
        return await asyncio.to_thread(_open, file)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        if isinstance(exc, (ConnectionError, TimeoutError)) or exc.__cause__ is not None:
            raise
        raise DataCorruptionError(f"{url}: not a readable Parquet file: {exc}", key=(url, None)) from None


def _rows(parquet: Any, group: int, columns: list[str] | None) -> list[dict[str, Any]]:
    return parquet.read_row_group(group, columns=columns).to_pylist()


class ParquetShards(RemoteShards):
    """Rows of the Parquet files at ``urls``; ``columns`` selects the columns read (all by
    default). ``indexed=True``: read every footer now and make the rows indexable (global
    ``shuffle=True``, ``"chunks"`` by row group, the row groups read ahead along the order within
    ``read_budget`` bytes), keeping the last ``row_groups_kept`` row groups read. Other options as :class:`~aioloader.sources.WebDataset`."""

    kind = "parquet"

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        columns: Sequence[str] | None = None,
        indexed: bool = False,
        row_groups_kept: int = 4,
        **options: Any,
    ) -> None:
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise ValueError("ParquetShards needs pyarrow (pip install pyarrow)") from exc
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise TypeError(f"columns must be a sequence of column names, got {columns!r}")
        if isinstance(row_groups_kept, bool) or not isinstance(row_groups_kept, int) or row_groups_kept < 1:
            raise ValueError(f"row_groups_kept must be an int >= 1, got {row_groups_kept!r}")
        super().__init__(urls, **options)
        self.columns = None if columns is None else list(columns)
        self.indexed = bool(indexed)
        self.row_groups_kept = row_groups_kept
        self.sizes: list[int] = []
        self.row_groups: list[list[int]] = []  # rows per row group, per file
        self.group_bytes: list[list[int]] = []  # the selected columns' bytes per row group, per file
        if self.indexed:
            self.sizes, self.row_groups, self.group_bytes = run_blocking(lambda: read_footers(self))

    def __aioloader_source__(self) -> Any:
        return IndexedParquet(self) if self.indexed else self

    def check_columns(self, url: str, names: Sequence[str]) -> None:
        """Raise naming the URL when a selected column is not among the file's ``names``."""
        missing = [c for c in self.columns or () if c not in names]
        if missing:
            raise ValueError(f"{url}: no column {missing} (columns={self.columns})")

    def describe(self) -> str:
        return f"{super().describe()} columns={self.columns}"

    async def _shard_rows(self, store: ObjectStore, url: str) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        size = await store.size(url)
        file = _RangedFile(store, url, size, loop)
        parquet = await _open_checked(file, url)
        self.check_columns(url, parquet.schema_arrow.names)
        groups = parquet.num_row_groups
        ahead: asyncio.Task[list[dict[str, Any]]] | None = None
        try:
            for group in range(groups):
                current = ahead or asyncio.create_task(asyncio.to_thread(_rows, parquet, group, self.columns))
                ahead = None
                try:
                    rows = await current
                except (ConnectionError, TimeoutError):
                    raise
                except Exception as exc:
                    raise DataCorruptionError(
                        f"{url}: row group {group} cannot be read: {exc}", key=(url, f"row group {group}")
                    ) from None
                if group + 1 < groups:  # read the next row group while these rows go out
                    ahead = asyncio.create_task(asyncio.to_thread(_rows, parquet, group + 1, self.columns))
                for row in rows:
                    yield row
        finally:
            file.abort()  # a thread still reading this shard stops at its next read
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead

    async def stream(
        self, shards: Sequence[int], *, skip: int = 0, report: Report | None = None
    ) -> AsyncIterator[tuple[int, int, Any]]:
        store = self._store()
        try:
            for number, shard in enumerate(shards):
                url = self.urls[shard]
                rows = aiter(self._shard_rows(store, url))
                first = skip if number == 0 else 0
                async with contextlib.aclosing(
                    shard_items(rows, skip=first, on_error=self.on_error, report=report)
                ) as indexed:
                    async for index, row in indexed:
                        yield number, index, row
        finally:
            await store.aclose()
