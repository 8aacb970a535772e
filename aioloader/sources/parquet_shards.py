"""``ParquetShards``: the rows of Parquet files in object storage, row group by row group.

Each URL is a shard. A shard's bytes arrive in parts, read ahead within the byte budget; once
whole, pyarrow decodes its row groups one at a time in a thread (only ``columns``, when given)
and each row becomes a sample: a dict of column name to Python value. A file pyarrow cannot
read raises :class:`~aioloader.errors.DataCorruptionError` naming the URL (or ends the shard
under ``on_error="skip"``, reported).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aioloader.errors import DataCorruptionError
from aioloader.sources._remote_shards import RemoteShards


def _row_group(data: bytes, index: int, columns: list[str] | None) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(pa.BufferReader(data)).read_row_group(index, columns=columns)
    return table.to_pylist()


def _row_groups(data: bytes) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(data)).num_row_groups


class ParquetShards(RemoteShards):
    """Rows of the Parquet files at ``urls``; ``columns`` selects the columns read (all by
    default). Other options as :class:`~aioloader.sources.WebDataset`."""

    kind = "parquet"

    def __init__(self, urls: str | Sequence[str], *, columns: Sequence[str] | None = None, **options: Any) -> None:
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise ValueError("ParquetShards needs pyarrow (pip install pyarrow)") from exc
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise TypeError(f"columns must be a sequence of column names, got {columns!r}")
        super().__init__(urls, **options)
        self.columns = None if columns is None else list(columns)

    def describe(self) -> str:
        return f"{super().describe()} columns={self.columns}"

    async def _samples(self, url: str, parts: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        data = b"".join([part async for part in parts])
        try:
            groups = await asyncio.to_thread(_row_groups, data)
        except Exception as exc:  # pyarrow.ArrowInvalid and kin
            raise DataCorruptionError(f"{url}: not a readable Parquet file: {exc}", key=(url, None)) from None
        for group in range(groups):
            try:
                rows = await asyncio.to_thread(_row_group, data, group, self.columns)
            except KeyError as exc:
                raise ValueError(f"{url}: no column {exc} (columns={self.columns})") from None
            except Exception as exc:
                raise DataCorruptionError(
                    f"{url}: row group {group} cannot be read: {exc}", key=(url, f"row group {group}")
                ) from None
            for row in rows:
                yield row
