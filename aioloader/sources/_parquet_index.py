"""The indexable view of :class:`~aioloader.sources.ParquetShards` (``indexed=True``).

Every file's footer says how many rows each row group holds, so the rows of all files are keys
``0 .. N-1`` (file by file, row group by row group) before any row is read: ``shuffle=True`` is
a global permutation of rows, ``shuffle="chunks"`` reads whole row groups (a row group is a
chunk), and the rank policies apply as for a local indexable source.

A row is read with its row group: pyarrow reads the selected columns' byte ranges of the row
group (ranged reads on the loop, neighbouring ranges joined), in a thread. Reads of rows of one
row group waiting at the same time are joined into that one read, and the last
``row_groups_kept`` row groups read on a loop are kept, so rows of a row group read moments
apart (a shuffle buffer, ``shuffle="chunks"``) do not read it again. A run reads its rows'
row groups ahead along its key order (:meth:`IndexedParquet.read_ahead`): each one its next
rows need, once, up to ``max_requests`` at once, held until the last of those rows is taken,
within ``read_budget`` bytes (by the selected columns' uncompressed size in the footer).
Before a map stage with ``executor="ray"``, the actors read the rows themselves
(:meth:`IndexedParquet.worker_reader`).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aioloader.errors import DataCorruptionError
from aioloader.io.read_ahead import UnitReadAhead
from aioloader.io.store import ObjectStore


def run_blocking(coro_fn: Any) -> Any:
    """Run a coroutine on a loop of its own (the caller may be inside one)."""
    with ThreadPoolExecutor(1, thread_name_prefix="aioloader-parquet") as pool:
        return pool.submit(asyncio.run, coro_fn()).result()


def _group_bytes(metadata: Any, group: int, columns: list[str] | None) -> int:
    """The uncompressed bytes of the selected ``columns`` (all: None) of row group ``group``."""
    row_group = metadata.row_group(group)
    chunks = (row_group.column(c) for c in range(row_group.num_columns))
    return sum(
        c.total_uncompressed_size for c in chunks if columns is None or c.path_in_schema.split(".")[0] in columns
    )


async def read_footers(dataset: Any) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Sizes, and row counts and bytes (of the selected columns) per row group, of every file
    of ``dataset``, read concurrently."""
    from aioloader.sources.parquet_shards import _open_checked, _RangedFile

    store = dataset._store()
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(dataset.max_requests)

    async def one(url: str) -> tuple[int, list[int], list[int]]:
        async with limit:
            size = await store.size(url)
            file = _RangedFile(store, url, size, loop)
            try:
                parquet = await _open_checked(file, url)
            finally:
                file.abort()
            dataset.check_columns(url, parquet.schema_arrow.names)
            metadata, groups = parquet.metadata, range(parquet.num_row_groups)
            rows = [metadata.row_group(g).num_rows for g in groups]
            return size, rows, [_group_bytes(metadata, g, dataset.columns) for g in groups]

    try:
        found = await asyncio.gather(*(one(url) for url in dataset.urls))
    finally:
        await store.aclose()
    return [f[0] for f in found], [f[1] for f in found], [f[2] for f in found]


class _LoopState:
    """What reads on one event loop share: the store, each file's footer, the row groups read
    last and the reads waiting to be joined."""

    def __init__(self, store: ObjectStore, kept: int) -> None:
        self.store = store
        self.footers: dict[int, asyncio.Future[Any]] = {}  # file -> its footer's metadata
        self.kept: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.limit = kept
        self.pending: dict[tuple[int, int], list[tuple[int, asyncio.Future[Any]]]] = {}


class IndexedParquet:
    """Row ``i`` of the files of an indexed :class:`ParquetShards`, over all of them in order."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        groups: list[list[int]] = dataset.row_groups
        sizes = [n for shard in groups for n in shard]
        self._group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # (shard, row group in shard) of each global row group
        self._group_of = [(shard, g) for shard, counts in enumerate(groups) for g in range(len(counts))]
        self._group_bytes = np.asarray([n for shard in dataset.group_bytes for n in shard], dtype=np.int64)
        self._length = int(self._group_starts[-1])
        self.read_concurrency = dataset.max_requests
        self.read_failures = (dataset.on_error, 1.0 if dataset.on_error == "skip" else 0)
        self._loops: dict[int, _LoopState] = {}

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loops": {}}

    def worker_reader(self) -> Any:
        """What a Ray actor calls to read its task's rows itself (read fusion,
        :mod:`aioloader._run.read_fusion`): a :class:`~aioloader.sources.webdataset.ShardRanges`
        over this view, so the files' bytes never pass through the trainer. None under
        ``on_error="skip"``, whose skipping belongs to the read stage."""
        if self.dataset.on_error != "raise":
            return None
        from aioloader.sources.webdataset import ShardRanges

        return ShardRanges(self)

    def locate(self, key: int) -> tuple[int, int, int]:
        """(file, row group in the file, row in the row group) of row ``key``."""
        if not 0 <= key < self._length:
            raise IndexError(f"row {key} out of range for {self._length} rows")
        group = bisect.bisect_right(self._group_starts, key) - 1
        shard, in_shard = self._group_of[group]
        return shard, in_shard, key - int(self._group_starts[group])

    def read_ahead(self, keys: Iterable[np.ndarray]) -> RowGroupReadAhead:
        """A run's reader of ``keys`` (in the order the read stage asks for them), reading
        their row groups ahead of it."""
        return RowGroupReadAhead(self, keys)

    def units(self, keys: Iterable[np.ndarray]) -> Iterator[tuple[int, int, int]]:
        """``(key, row group, its bytes)`` of each of ``keys``, in order (the global number of
        the row group)."""
        for run in keys:
            run = np.asarray(run, dtype=np.int64)
            if len(run) and (run.min() < 0 or run.max() >= self._length):
                raise IndexError(f"a row key out of range for {self._length} rows")
            groups = np.searchsorted(self._group_starts, run, side="right") - 1
            yield from zip(run.tolist(), groups.tolist(), self._group_bytes[groups].tolist(), strict=True)

    def chunk_bounds(self) -> list[int]:
        """Row group boundaries: ``shuffle="chunks"`` reads one row group's rows together."""
        return [int(b) for b in self._group_starts]

    def __getitem__(self, key: int) -> dict[str, Any]:
        async def one() -> dict[str, Any]:
            try:
                return await self.aget(key)
            finally:
                await self.aclose_io()

        return run_blocking(one)

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(id(loop))
        if state is None:
            state = self._loops[id(loop)] = _LoopState(self.dataset._store(), self.dataset.row_groups_kept)
        return state

    async def aget(self, key: int) -> dict[str, Any]:
        shard, group, row = self.locate(int(key))
        state = self._state()
        table = state.kept.get((shard, group))
        if table is not None:
            state.kept.move_to_end((shard, group))
            return table.slice(row, 1).to_pylist()[0]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting = state.pending.get((shard, group))
        if waiting is not None:  # a read of this row group is gathering: join it
            waiting.append((row, future))
            return await future
        requests = state.pending[(shard, group)] = [(row, future)]
        try:
            try:
                await asyncio.sleep(0)  # let the reads started with this one queue up
            finally:
                del state.pending[(shard, group)]
            table = await self._read_group(state, shard, group)
        except BaseException as exc:  # the reads that joined this one fail with it, never hang
            for _, waiter in requests:
                if waiter.done():
                    continue
                if isinstance(exc, Exception):
                    waiter.set_exception(exc)
                else:
                    waiter.cancel()
            if future.done() and not future.cancelled():
                future.exception()
            raise
        for wanted, waiter in requests:
            if not waiter.done():
                waiter.set_result(table.slice(wanted, 1).to_pylist()[0])
        return await future

    async def _read_group(self, state: _LoopState, shard: int, group: int) -> Any:
        from aioloader.sources.parquet_shards import _open, _RangedFile

        dataset = self.dataset
        url = dataset.urls[shard]
        loop = asyncio.get_running_loop()
        file = _RangedFile(state.store, url, dataset.sizes[shard], loop)
        try:
            footer = state.footers.get(shard)
            if footer is None:  # one footer read per file and loop, however many wait for it
                footer = state.footers[shard] = asyncio.ensure_future(self._footer(state, shard))
            metadata = await asyncio.shield(footer)
            parquet = await asyncio.to_thread(_open, file, metadata)
            table = await asyncio.to_thread(parquet.read_row_group, group, columns=dataset.columns)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:
            if getattr(exc, "key", None) is not None or exc.__cause__ is not None:
                raise
            raise DataCorruptionError(
                f"{url}: row group {group} cannot be read: {exc}", key=(url, f"row group {group}")
            ) from None
        finally:
            file.abort()
        state.kept[(shard, group)] = table
        while len(state.kept) > state.limit:
            state.kept.popitem(last=False)
        return table

    async def _footer(self, state: _LoopState, shard: int) -> Any:
        from aioloader.sources.parquet_shards import _open, _RangedFile

        url = self.dataset.urls[shard]
        file = _RangedFile(state.store, url, self.dataset.sizes[shard], asyncio.get_running_loop())
        try:
            return (await asyncio.to_thread(_open, file)).metadata
        except BaseException:
            state.footers.pop(shard, None)  # a later read tries again
            raise
        finally:
            file.abort()

    async def aclose_io(self) -> None:
        """Close the connections reads on the running loop opened."""
        state = self._loops.pop(id(asyncio.get_running_loop()), None)
        if state is not None:
            for footer in state.footers.values():
                footer.cancel()
            await asyncio.gather(*state.footers.values(), return_exceptions=True)
            await state.store.aclose()


class RowGroupReadAhead:
    """One run's reads of an indexed ``ParquetShards``: the row groups of the run's key order
    read ahead of the read stage (:class:`~aioloader.io.read_ahead.UnitReadAhead`) on the run's
    loop, ``max_requests`` at once, within ``read_budget`` bytes. A key outside the plan is read
    by :meth:`IndexedParquet.aget`."""

    def __init__(self, shards: IndexedParquet, keys: Iterable[np.ndarray]) -> None:
        dataset = shards.dataset
        self._shards = shards
        self.ahead = UnitReadAhead(
            shards.units(keys), self._read, budget=dataset.read_budget, max_requests=dataset.max_requests
        )

    async def _read(self, group: int) -> Any:
        shard, in_shard = self._shards._group_of[group]
        return await self._shards._read_group(self._shards._state(), shard, in_shard)

    async def aget(self, key: int) -> dict[str, Any]:
        table = await self.ahead.take(key)
        if table is None:
            return await self._shards.aget(key)
        _, _, row = self._shards.locate(int(key))
        return table.slice(row, 1).to_pylist()[0]

    async def aclose(self) -> None:
        """Stop reading ahead (the connections are the loop's, closed by ``aclose_io``)."""
        await self.ahead.aclose()
