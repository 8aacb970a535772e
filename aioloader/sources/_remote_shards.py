"""What the remote shard formats other than tar (JSONL/text, Parquet) share: their URLs, the
read settings, and the parts of a run's shards read ahead within the byte budget.

A subclass turns one shard's bytes into samples with ``_samples(url, parts)``: an async
generator over the shard's parts that yields samples in order. The source stage
(:mod:`aioloader._run.stages.shard_source`) gives them the seeded shard order, rank sharding
by shard and exact resume, as for :class:`~aioloader.sources.WebDataset`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aioloader.errors import DataCorruptionError
from aioloader.io.prefetch import ShardPrefetcher
from aioloader.io.store import CLIENTS, ObjectStore, Retry
from aioloader.io.urls import expand_urls

_MiB = 1 << 20

Report = Callable[[Any, BaseException], None]


async def shard_items(
    items: AsyncIterator[Any], *, skip: int, on_error: str, report: Report | None
) -> AsyncIterator[tuple[int, Any]]:
    """One shard's items with their index in it, from index ``skip`` on. A corrupt item ends
    the shard, reported under ``on_error="skip"`` and raised otherwise. Closes ``items``."""
    index = 0
    try:
        while True:
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            except DataCorruptionError as exc:
                if on_error != "skip" or report is None:
                    raise
                report(exc.key, exc)
                return
            if index >= skip:
                yield index, item
            index += 1
    finally:
        await items.aclose()


class RemoteShards:
    """Shards at ``urls`` (braces and globs expand), read as :class:`WebDataset` reads them."""

    kind = "shards"

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        storage_options: dict[str, dict[str, Any]] | None = None,
        part_size: int = 8 * _MiB,
        read_budget: int = 64 * _MiB,
        max_requests: int = 64,
        retry: Retry | None = None,
        on_error: str = "raise",
        client: str = "fsspec",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
        for name, value in (("part_size", part_size), ("read_budget", read_budget), ("max_requests", max_requests)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.storage_options = dict(storage_options or {})
        self.part_size, self.read_budget, self.max_requests = part_size, read_budget, max_requests
        self.retry = retry or Retry()
        self.on_error = on_error
        self.client = client
        self.urls = expand_urls(urls, options=self.storage_options)

    @property
    def num_shards(self) -> int:
        return len(self.urls)

    def describe(self) -> str:
        return f"{self.kind}:{len(self.urls)} shards"

    def _store(self) -> ObjectStore:
        return ObjectStore(self.storage_options, retry=self.retry, client=self.client)

    def _samples(self, url: str, parts: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        raise NotImplementedError

    async def stream(
        self, shards: Sequence[int], *, skip: int = 0, report: Report | None = None
    ) -> AsyncIterator[tuple[int, int, Any]]:
        """``(n, index, sample)`` for the samples of ``shards``, the first ``skip`` samples of
        the first shard left out (see :meth:`WebDataset.stream`)."""
        urls = [self.urls[s] for s in shards]
        store = self._store()
        try:
            async with ShardPrefetcher(
                store, urls, part_size=self.part_size, budget=self.read_budget, max_requests=self.max_requests
            ) as prefetcher:
                pending: tuple[int, bytes | None] | None = None
                while True:
                    entry = pending or await prefetcher.next_part()
                    pending = None
                    if entry is None:
                        return
                    number = entry[0]

                    async def parts(
                        first: tuple[int, bytes | None] = entry, number: int = number
                    ) -> AsyncIterator[bytes]:
                        nonlocal pending
                        item: tuple[int, bytes | None] | None = first
                        while item is not None and item[0] == number and item[1] is not None:
                            yield item[1]
                            await prefetcher.release(len(item[1]))
                            item = await prefetcher.next_part()
                        if item is not None and item[1] is not None:  # the next shard's first part
                            pending = item

                    shard_parts = parts()
                    samples = aiter(self._samples(urls[number], shard_parts))
                    first = skip if number == 0 else 0
                    try:
                        async with contextlib.aclosing(
                            shard_items(samples, skip=first, on_error=self.on_error, report=report)
                        ) as indexed:
                            async for index, sample in indexed:
                                yield number, index, sample
                    finally:
                        await shard_parts.aclose()
                    if pending is None:  # a skipped shard: drop its remaining parts
                        while (item := await prefetcher.next_part()) is not None:
                            if item[0] != number:
                                pending = item
                                break
                            if item[1] is not None:
                                await prefetcher.release(len(item[1]))
                        else:
                            return
        finally:
            await store.aclose()
