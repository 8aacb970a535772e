"""``WebDataset``: samples of WebDataset tar shards, local or in object storage.

Without an index the shards are streamed: each epoch visits them in a seeded shard order
(``shuffle=True``), each rank reading only its own shards, many ranged reads in flight ahead of
the consumer within a byte budget (:mod:`aioloader.io.prefetch`). A sample's key is
``(shard, index in shard)``; a resumed run seeks to the shard it stopped in and reads only
that shard's consumed part again (:mod:`aioloader._run.stages.shard_source`).

With an index (``al.sources.write_shards`` writes one) the source is indexable: it knows every
sample's byte range, so ``shuffle=True`` is a global permutation read by ranged reads of single
samples, read ahead of the consumer along the run's order within ``read_budget`` bytes,
neighbours joined into one request (:mod:`aioloader.io.read_ahead`); ``shuffle="chunks"``
reads whole shards (or windows of ``chunk_size`` samples) at once, and rank sharding follows
the three policies.

A sample is a dict as the ``webdataset`` package makes it: ``__key__``, ``__url__`` and one
``bytes`` value per member extension (``jpg``, ``cls`` ...).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aioloader.errors import DataCorruptionError, DataFormatError
from aioloader.io.cache import ShardCache
from aioloader.io.prefetch import ShardPrefetcher
from aioloader.io.read_ahead import ReadAhead
from aioloader.io.scan_index import INDEX_FORMAT, ScanIndex
from aioloader.io.store import CLIENTS, ObjectStore, Retry
from aioloader.io.tar_stream import SampleGrouper, TarParser
from aioloader.io.urls import expand_urls, protocol_of

_MiB = 1 << 20
_COALESCE_GAP = 64 * 1024  # neighbours closer than this are read in one request

Report = Callable[[Any, BaseException], None]


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _run_blocking(coro_fn: Callable[[], Any]) -> Any:
    """Run a coroutine on a loop of its own (the caller may be inside one)."""
    with ThreadPoolExecutor(1, thread_name_prefix="aioloader-index") as pool:
        return pool.submit(asyncio.run, coro_fn()).result()


def _join(base: str, name: str) -> str:
    if "://" in name or os.path.isabs(name):
        return name
    if protocol_of(base) == "file":
        return os.path.join(os.path.dirname(base.removeprefix("file://")), name)
    return base.rsplit("/", 1)[0] + "/" + name


class WebDataset:
    """WebDataset tar shards at ``urls`` (paths, ``file://``, ``http(s)://``, ``s3://``,
    ``gs://``, ``az://``, ``hf://``; braces and globs expand), or those an ``index`` names.

    ``storage_options``: per protocol, options for its fsspec filesystem (``{"s3":
    {"endpoint_url": ...}}``). ``part_size``: bytes per ranged read; ``read_budget``: bytes
    read ahead and not yet consumed; ``max_requests``: reads in flight. Indexed, the samples
    are read ahead along the run's order in requests of neighbouring samples of at most
    ``read_budget / max_requests`` bytes (and ``part_size``). ``retry``: an
    :class:`aioloader.io.Retry`. ``on_error="skip"``: a corrupt or truncated shard ends there,
    reported in ``stats()["errors"]`` with the key ``(url, member)``, and the epoch goes on.
    ``client``: ``"fsspec"`` (default) or ``"obstore"``, which reads the
    same URLs through obstore (``storage_options`` then take obstore's option names).
    ``cache``, ``cache_bytes``: a local directory keeping up to that many bytes of whole
    shards, reused across epochs, restarts and processes (:mod:`aioloader.io.cache`).
    ``scan_index``: a local file where the stream records the byte ranges of the samples of
    each shard it reads whole; once it covers every shard, a ``WebDataset`` built over the
    same URLs is indexable, as with ``index`` (:mod:`aioloader.io.scan_index`).
    ``read_in_workers``: a stream followed by ``.map(fn, executor="process")`` (or ``"ray"``)
    is read by the map's workers, each streaming its shards itself (the shards' bytes never
    pass through the parent, :mod:`aioloader._run.stages.shard_map`) with True, by the parent
    (sending each sample to a worker) with False; None (the default): Ray actors read, and for
    worker processes the run's first shard measures which is faster (the parent reads it, the
    workers time ``fn``): the workers read the other shards when passing a sample's bytes on
    would cost the parent more than a worker's share of ``fn`` (large samples, a cheap ``fn``),
    else the parent does (:mod:`aioloader._run.stream_reads`, docs/remote.md).
    ``reorder_bytes``: read in worker processes, the most bytes of their results the parent
    holds to hand them on in shard order (the shards behind a slow one, at most twice it: those
    and the shard handed on); past it, a worker ahead of the shard handed on waits.
    """

    def __init__(
        self,
        urls: str | Sequence[str] | None = None,
        *,
        index: str | None = None,
        storage_options: dict[str, dict[str, Any]] | None = None,
        part_size: int = 8 * _MiB,
        read_budget: int = 64 * _MiB,
        max_requests: int = 64,
        retry: Retry | None = None,
        on_error: str = "raise",
        chunk_size: int | None = None,
        cache: str | os.PathLike[str] | None = None,
        cache_bytes: int | None = None,
        client: str = "fsspec",
        scan_index: str | os.PathLike[str] | None = None,
        read_in_workers: bool | None = None,
        reorder_bytes: int = 256 * _MiB,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError("storage_options must be a dict of protocol -> options")
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
        if read_in_workers is not None and not isinstance(read_in_workers, bool):
            raise TypeError(f"read_in_workers must be a bool or None, got {read_in_workers!r}")
        self.read_in_workers = read_in_workers
        self.reorder_bytes = _positive("reorder_bytes", reorder_bytes)
        self.client = client
        self.storage_options = dict(storage_options or {})
        self.part_size = _positive("part_size", part_size)
        self.read_budget = _positive("read_budget", read_budget)
        self.max_requests = _positive("max_requests", max_requests)
        self.chunk_size = None if chunk_size is None else _positive("chunk_size", chunk_size)
        self.retry = retry or Retry()
        self.on_error = on_error
        self.sizes: list[int | None]
        self.offsets: list[np.ndarray] | None = None
        self.scan_index = None if scan_index is None else ScanIndex(scan_index)
        if index is not None:
            if urls is not None:
                raise ValueError("pass urls or index, not both: the index names its shards")
            if scan_index is not None:
                raise ValueError("pass index or scan_index, not both")
            self.urls, self.sizes, self.offsets = self._load_index(os.fspath(index))
        elif urls is None:
            raise ValueError("WebDataset needs urls or an index")
        else:
            self.urls = expand_urls(urls, options=self.storage_options)
            self.sizes = [None] * len(self.urls)
            scanned = None if self.scan_index is None else self.scan_index.covering(self.urls)
            if scanned is not None:  # every shard was read once: indexable
                self.sizes = [int(e["bytes"]) for e in scanned]
                self.offsets = [np.asarray(e["offsets"], dtype=np.int64) for e in scanned]
        self.cache = self._make_cache(cache, cache_bytes)

    def _make_cache(self, cache: Any, cache_bytes: int | None) -> ShardCache | None:
        """The local shard cache, checked now: one that cannot hold the largest shard (known
        from the index, else the first shard's size) is an error here, not a hang later."""
        if cache is None:
            if cache_bytes is not None:
                raise ValueError("cache_bytes needs cache (a directory)")
            return None
        if cache_bytes is None:
            raise ValueError("cache needs cache_bytes (the most bytes it may hold)")
        shard_cache = ShardCache(cache, cache_bytes)
        known = [s for s in self.sizes if s is not None]
        if known:
            url, size = max(zip(self.urls, self.sizes, strict=True), key=lambda pair: pair[1] or 0)
        else:
            url = self.urls[0]

            async def first_size() -> int:
                store = self._store()
                try:
                    return await store.size(url)
                finally:
                    await store.aclose()

            size = _run_blocking(first_size)
        shard_cache.check_fits(url, int(size))
        return shard_cache

    def _store(self) -> ObjectStore:
        return ObjectStore(self.storage_options, retry=self.retry, client=self.client)

    # -- the index ---------------------------------------------------------------------------
    def _load_index(self, index: str) -> tuple[list[str], list[int | None], list[np.ndarray]]:
        async def fetch() -> bytes:
            store = self._store()
            try:
                return await store.read(index, 0, await store.size(index))
            finally:
                await store.aclose()

        raw = _run_blocking(fetch)
        try:
            doc = json.loads(raw)
            if doc.get("format") != INDEX_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {INDEX_FORMAT!r}")
            shards = doc["shards"]
            urls = [_join(index, s["url"]) for s in shards]
            sizes: list[int | None] = [int(s["bytes"]) for s in shards]
            offsets = [np.asarray(s["offsets"], dtype=np.int64) for s in shards]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(f"index {index} is not an aioloader shard index: {exc}", key=index) from None
        return urls, sizes, offsets

    def __aioloader_source__(self) -> Any:
        return self if self.offsets is None else IndexedShards(self)

    # -- streaming ---------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self.urls)

    def describe(self) -> str:
        return f"webdataset:{len(self.urls)} shards"

    def worker_stream(self) -> WebDataset | None:
        """What a process pool's worker streams its shards from when a process map follows
        this stream (read fusion, :mod:`aioloader._run.stages.shard_map`): this dataset; None
        with a ``scan_index``, which the parent records as it reads, or ``read_in_workers=False``."""
        return self if self.read_in_workers is not False and self.scan_index is None else None

    def reads_in_workers(self, executor: str) -> bool | None:
        """Whether a map of ``executor`` ("process", "ray") right after this stream reads it
        in its workers: ``read_in_workers``, or by default Ray's actors (often on other
        machines: the bytes would cross the network twice); None for worker processes by
        default: measured on the run's first shard (:mod:`aioloader._run.stream_reads`)."""
        if self.read_in_workers is not None:
            return self.read_in_workers
        return True if executor == "ray" else None

    async def stream(
        self,
        shards: Sequence[int],
        *,
        skip: int = 0,
        report: Report | None = None,
        store: ObjectStore | None = None,
        sizes: Sequence[int | None] | None = None,
    ) -> AsyncIterator[tuple[int, int, dict[str, Any]]]:
        """``(n, index, sample)`` for the samples of ``shards`` (numbers of shards), ``n`` the
        place in ``shards``; the first ``skip`` samples of the first shard are left out (a
        resume point). ``store``: the client to read through (the caller's, left open; by
        default one of its own, closed at the end); ``sizes``: the shards' sizes where the
        caller knows them (no lookup then)."""
        urls = [self.urls[s] for s in shards]
        known = [self.sizes[s] for s in shards]
        if sizes is not None:
            known = [given if given is not None else size for given, size in zip(sizes, known, strict=True)]
        sizes = known
        cache = self.cache
        owned = store is None
        store = self._store() if store is None else store
        kept: list[bytes] = []  # the shard being read, for the cache
        try:
            async with ShardPrefetcher(
                store,
                urls,
                sizes=sizes,
                open_local=cache.open if cache is not None else None,
                part_size=self.part_size,
                budget=self.read_budget,
                max_requests=self.max_requests,
            ) as prefetcher:
                current, parser, grouper, skipping, from_cache = -1, None, None, False, False
                scanned: _Scan | None = None
                while (entry := await prefetcher.next_part()) is not None:
                    number, data = entry
                    url = urls[number]
                    if number != current:
                        current, skipping, kept = number, False, []
                        from_cache = prefetcher.is_local(number)
                        parser, grouper = TarParser(url), SampleGrouper(url)
                        scanned = None if self.scan_index is None else _Scan()
                    keep = cache is not None and not from_cache and not skipping
                    if keep and data is not None:
                        kept.append(data)
                    samples = []
                    if not skipping:
                        try:
                            if data is None:
                                parser.finish()
                                samples = grouper.finish()
                            else:
                                samples = [s for m in parser.feed(data) for s in grouper.push(m)]
                        except DataCorruptionError as exc:
                            if self.on_error != "skip" or report is None:
                                raise
                            report(exc.key, exc)
                            skipping = True  # the rest of this shard cannot be trusted
                    if scanned is not None:
                        scanned.add(data, samples)
                    if data is not None:
                        await prefetcher.release(len(data))
                    else:
                        if keep and not skipping:  # a whole, sound shard: keep it
                            await asyncio.to_thread(cache.put, url, kept)
                            kept = []
                        if scanned is not None and not skipping:
                            await asyncio.to_thread(self.scan_index.record, url, scanned.size, scanned.offsets())
                    for sample in samples:
                        if number == 0 and sample.index < skip:
                            continue
                        sample.fields["__url__"] = url
                        yield number, sample.index, sample.fields
        finally:
            if owned:
                await store.aclose()


class _Scan:
    """One shard's bytes and sample offsets, as the stream reads it (for ``scan_index``)."""

    def __init__(self) -> None:
        self.size = 0
        self.starts: list[int] = []
        self.end = 0

    def add(self, data: bytes | None, samples: Sequence[Any]) -> None:
        self.size += 0 if data is None else len(data)
        for sample in samples:
            self.starts.append(sample.offset)
            self.end = sample.end

    def offsets(self) -> list[int]:
        return [*self.starts, self.end]


class _LoopState:
    """What reads on one event loop share: the store and the reads waiting to be coalesced."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.pending: dict[int, list[tuple[int, asyncio.Future[dict[str, Any]]]]] = {}


class IndexedShards:
    """The indexable view of an indexed :class:`WebDataset`: key ``i`` is the ``i``-th sample
    over the shards in order; :meth:`aget` reads its byte range (reads of neighbouring samples
    waiting at the same time are joined into one request)."""

    def __init__(self, dataset: WebDataset) -> None:
        self.dataset = dataset
        assert dataset.offsets is not None
        counts = [len(o) - 1 for o in dataset.offsets]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._length = int(self._starts[-1])
        self.read_concurrency = dataset.max_requests
        # the read stage's policy: under on_error="skip" a sample that cannot be read is
        # skipped and reported with its key, however many
        self.read_failures = (dataset.on_error, 1.0 if dataset.on_error == "skip" else 0)
        self._loops: dict[int, _LoopState] = {}

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a worker, ``Loader.in_subprocess``) without any loop's connections."""
        return {**self.__dict__, "_loops": {}}

    def worker_reader(self) -> ShardRanges | None:
        """What a Ray actor calls to read its task's samples itself (read fusion,
        :mod:`aioloader._run.read_fusion`): the shards' bytes never pass through the trainer.
        None under ``on_error="skip"``, whose skipping belongs to the read stage, and with a
        local shard cache, which is on the trainer's disk."""
        if self.dataset.on_error != "raise" or self.dataset.cache is not None:
            return None
        return ShardRanges(self)

    def locate(self, key: int) -> tuple[int, int]:
        """(shard, index in shard) of sample ``key``."""
        if not 0 <= key < self._length:
            raise IndexError(f"sample {key} out of range for {self._length} samples")
        shard = bisect.bisect_right(self._starts, key) - 1
        return shard, key - int(self._starts[shard])

    def read_ahead(self, keys: Iterable[np.ndarray]) -> SampleReadAhead | None:
        """A run's reader of ``keys`` (in the order the read stage asks for them), reading
        ahead of it; None with a local shard cache, whose reads go through :meth:`aget`."""
        if self.dataset.cache is not None:
            return None
        return SampleReadAhead(self, keys)

    def spans(self, keys: Iterable[np.ndarray]) -> Iterator[tuple[int, str, int, int]]:
        """``(key, url, start, end)``: the byte range of each of ``keys``, in order."""
        urls, offsets = self.dataset.urls, self.dataset.offsets
        for run in keys:
            run = np.asarray(run, dtype=np.int64)
            if len(run) and (run.min() < 0 or run.max() >= self._length):
                raise IndexError(f"a sample key out of range for {self._length} samples")
            shards = np.searchsorted(self._starts, run, side="right") - 1
            locals_ = run - self._starts[shards]
            for key, shard, local in zip(run.tolist(), shards.tolist(), locals_.tolist(), strict=True):
                bounds = offsets[shard]
                yield key, urls[shard], int(bounds[local]), int(bounds[local + 1])

    def parse(self, shard: int, local: int, data: bytes | memoryview) -> dict[str, Any]:
        """Sample ``local`` of ``shard`` from its bytes (its byte range in the shard)."""
        url = self.dataset.urls[shard]
        start = int(self.dataset.offsets[shard][local])
        parser, grouper = TarParser(url, base=start), SampleGrouper(url)
        samples = [s for m in parser.feed(data) for s in grouper.push(m)] + grouper.finish()
        for sample in samples:
            if sample.offset == start:
                sample.fields["__url__"] = url
                return sample.fields
        raise DataCorruptionError(
            f"{url}: no sample at byte {start} (sample {local}): the shard does not match its index",
            key=(url, local),
        )

    def chunk_bounds(self) -> list[int]:
        """Shard boundaries (and windows of ``chunk_size`` samples within shards):
        ``shuffle="chunks"`` reads one chunk's samples together."""
        size = self.dataset.chunk_size
        bounds: list[int] = []
        for first, end in zip(self._starts[:-1].tolist(), self._starts[1:].tolist(), strict=True):
            bounds.extend(range(first, end, size or max(1, end - first)))
        return [*bounds, self._length]

    def __getitem__(self, key: int) -> dict[str, Any]:
        async def one() -> dict[str, Any]:
            try:
                return await self.aget(key)
            finally:
                await self.aclose_io()

        return _run_blocking(one)

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(id(loop))
        if state is None:
            store = self.dataset._store()
            state = self._loops[id(loop)] = _LoopState(store)
        return state

    async def aget(self, key: int) -> dict[str, Any]:
        shard, local = self.locate(int(key))
        state = self._state()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiting = state.pending.get(shard)
        if waiting is not None:  # a read of this shard is gathering: join it
            waiting.append((local, future))
            return await future
        requests = state.pending[shard] = [(local, future)]
        try:
            try:
                await asyncio.sleep(0)  # let the reads started with this one queue up
            finally:
                del state.pending[shard]  # later reads start a group of their own
            await self._read_group(state.store, shard, requests)
        except BaseException as exc:  # the reads that joined this one fail with it, never hang
            for _, waiter in requests:
                if waiter.done():
                    continue
                if isinstance(exc, Exception):
                    waiter.set_exception(exc)
                else:  # the leader was cancelled (the run is stopping)
                    waiter.cancel()
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: it is raised below (or the cancellation is)
            raise
        return await future

    def _ranges(self, shard: int, locals_: list[int]) -> list[tuple[int, int, list[int]]]:
        offsets = self.dataset.offsets[shard]
        limit = self.dataset.part_size
        ranges: list[tuple[int, int, list[int]]] = []
        for local in sorted(set(locals_)):
            start, end = int(offsets[local]), int(offsets[local + 1])
            if ranges and start - ranges[-1][1] <= _COALESCE_GAP and end - ranges[-1][0] <= limit:
                first, _, members = ranges[-1]
                ranges[-1] = (first, end, [*members, local])
            else:
                ranges.append((start, end, [local]))
        return ranges

    async def _read_group(self, store: ObjectStore, shard: int, requests: list[tuple[int, Any]]) -> None:
        url = self.dataset.urls[shard]
        offsets = self.dataset.offsets[shard]
        found: dict[int, dict[str, Any]] = {}
        broken: dict[int, DataCorruptionError] = {}  # sample offset -> why it cannot be read

        def parse(data: bytes, start: int) -> None:
            parser, grouper = TarParser(url, base=start), SampleGrouper(url)
            samples = [s for m in parser.feed(data) for s in grouper.push(m)] + grouper.finish()
            for sample in samples:
                sample.fields["__url__"] = url
                found[sample.offset] = sample.fields

        async def read(start: int, end: int, members: list[int]) -> None:
            data, whole = await self._fetch(store, shard, start, end)
            try:
                parse(data, start)
                if whole is not None:  # a sound shard read whole: later reads need no request
                    await asyncio.to_thread(self.dataset.cache.put, url, [whole])
            except DataCorruptionError as exc:
                if len(members) == 1:
                    broken[start] = exc
                    return
                for local in members:  # one bad sample must not take its neighbours with it
                    first, last = int(offsets[local]), int(offsets[local + 1])
                    try:
                        parse(data[first - start : last - start], first)
                    except DataCorruptionError as own:
                        broken[first] = own

        ranges = self._ranges(shard, [r[0] for r in requests])
        await asyncio.gather(*(read(s, e, members) for s, e, members in ranges))
        for local, future in requests:
            offset = int(offsets[local])
            fields = found.get(offset)
            if future.done():  # its reader was cancelled meanwhile
                continue
            if fields is not None:
                future.set_result(dict(fields))
            else:
                future.set_exception(
                    broken.get(offset)
                    or DataCorruptionError(
                        f"{url}: no sample at byte {offset} (sample {local}): the shard does not "
                        "match its index",
                        key=(url, local),
                    )
                )

    async def _fetch(self, store: ObjectStore, shard: int, start: int, end: int) -> tuple[bytes, bytes | None]:
        """Bytes ``start:end`` of the shard, from the local cache when it holds the shard; and
        the whole shard when this read covers every sample of it (to be kept in the cache)."""
        dataset = self.dataset
        url = dataset.urls[shard]
        cache = dataset.cache
        if cache is None:
            return await store.read(url, start, end), None
        fd = cache.open(url)
        if fd is not None:
            try:
                return await asyncio.to_thread(os.pread, fd, end - start, start), None
            finally:
                os.close(fd)
        offsets, size = dataset.offsets[shard], dataset.sizes[shard]
        if size is None or start != int(offsets[0]) or end != int(offsets[-1]):
            return await store.read(url, start, end), None
        whole = await store.read(url, 0, size)  # the end-of-archive blocks too: a few KiB more
        return whole[start:end], whole

    async def aclose_io(self) -> None:
        """Close the connections reads on the running loop opened."""
        state = self._loops.pop(id(asyncio.get_running_loop()), None)
        if state is not None:
            await state.store.aclose()


class SampleReadAhead:
    """One run's reads of an indexed :class:`WebDataset`: the samples of the run's key order
    read ahead of the read stage by :class:`~aioloader.io.read_ahead.ReadAhead` through a
    store of its own, within ``read_budget`` bytes, ``max_requests`` requests in flight,
    each at most ``read_budget / max_requests`` bytes (and ``part_size``), so the budget
    spreads over the connections. A key outside the plan is read by :meth:`IndexedShards.aget`."""

    def __init__(self, shards: IndexedShards, keys: Iterable[np.ndarray]) -> None:
        dataset = shards.dataset
        self._shards = shards
        self._store = dataset._store()
        request = max(1, min(dataset.part_size, dataset.read_budget // dataset.max_requests))
        self.ahead = ReadAhead(
            self._store,
            shards.spans(keys),
            budget=dataset.read_budget,
            max_requests=dataset.max_requests,
            max_request_bytes=request,
        )

    async def aget(self, key: int) -> dict[str, Any]:
        data = await self.ahead.take(key)
        if data is None:
            return await self._shards.aget(key)
        return self._shards.parse(*self._shards.locate(key), data)

    async def aclose(self) -> None:
        """Stop reading ahead and close the store's connections."""
        try:
            await self.ahead.aclose()
        finally:
            await self._store.aclose()


class ShardRanges:
    """An indexed remote source's samples as a Ray actor reads them (the ``worker_reader`` of
    an indexed :class:`WebDataset` or of an indexed ``ParquetShards``): keys -> samples, the
    actor fetching their byte ranges through its own store client (neighbours in a shard, or
    the rows of one Parquet row group, joined into one read, as on the loop), closed after each
    task, so the shards' bytes never pass through the trainer. Only ``executor="ray"`` stages
    use it, whose tasks of ~500 ms hide a request's latency: a process's 10 ms tasks, or a
    thread's, would each wait for their own requests, where the read stage keeps many in flight
    ahead of the workers. ``shards``: the source's indexable view (``aget``, ``aclose_io``)."""

    executors = ("ray",)

    def __init__(self, shards: Any) -> None:
        self.shards = shards

    def __call__(self, keys: Sequence[int]) -> list[dict[str, Any]]:
        most = self.shards.dataset.max_requests

        async def read_all() -> list[Any]:
            items: list[Any] = []
            try:
                # at most max_requests keys at once (so as many requests); a wave's keys start
                # together, so those of one shard are joined into one request
                for start in range(0, len(keys), most):
                    wave = (self._read(key) for key in keys[start : start + most])
                    items += await asyncio.gather(*wave, return_exceptions=True)
            finally:
                await self.shards.aclose_io()
            return items

        items = _run_blocking(read_all)
        for item in items:
            if isinstance(item, BaseException):
                raise item
        return items

    async def _read(self, key: int) -> dict[str, Any]:
        try:
            return await self.shards.aget(key)
        except Exception as exc:
            if getattr(exc, "key", None) is None:  # named by its key, as the read stage does
                try:
                    exc.key = key  # type: ignore[attr-defined]
                except (AttributeError, TypeError):
                    pass
            raise

    def __repr__(self) -> str:
        return f"ShardRanges({len(self.shards)} samples in {self.shards.dataset.num_shards} shards)"
