"""The indexable view of :class:`~aioloader.sources.ParquetShards` (``indexed=True``).

Every file's footer says how many rows each row group holds, so the rows of all files are keys
``0 .. N-1`` (file by file, row group by row group) before any row is read: ``shuffle=True`` is
a global permutation of rows, ``shuffle="chunks"`` reads whole row groups (a row group is a
chunk), and the rank policies apply as for a local indexable source.

A row is read with its row group: pyarrow reads the selected columns' byte ranges of the row
group (ranged reads on the loop, neighbouring ranges joined), in a thread. Reads of rows of one
row group waiting at the same time are joined into that one read, and the last
``row_groups_kept`` row groups read on a loop are kept, so rows of a row group read moments
apart (a shuffle buffer, ``shuffle="chunks"``) do not read it again. Before a map stage with
``executor="ray"``, the actors read the rows themselves (:meth:`IndexedParquet.worker_reader`).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aioloader.errors import DataCorruptionError
from aioloader.io.store import ObjectStore


def run_blocking(coro_fn: Any) -> Any:
    """Run a coroutine on a loop of its own (the caller may be inside one)."""
    with ThreadPoolExecutor(1, thread_name_prefix="aioloader-parquet") as pool:
        return pool.submit(asyncio.run, coro_fn()).result()


async def read_footers(dataset: Any) -> tuple[list[int], list[list[int]]]:
    """Sizes and row counts per row group of every file of ``dataset``, read concurrently."""
    from aioloader.sources.parquet_shards import _open_checked, _RangedFile

    store = dataset._store()
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(dataset.max_requests)

    async def one(url: str) -> tuple[int, list[int]]:
        async with limit:
            size = await store.size(url)
            file = _RangedFile(store, url, size, loop)
            try:
                parquet = await _open_checked(file, url)
            finally:
                file.abort()
            dataset.check_columns(url, parquet.schema_arrow.names)
            return size, [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]

    try:
        found = await asyncio.gather(*(one(url) for url in dataset.urls))
    finally:
        await store.aclose()
    return [size for size, _ in found], [groups for _, groups in found]


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
