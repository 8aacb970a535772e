"""Reading a sequence of shards ahead of the consumer, many ranged reads in flight.

:class:`ShardPrefetcher` splits each shard into parts of ``part_size`` bytes and reads them
concurrently on the event loop, in shard order, as far ahead as a byte budget allows: the
bytes read and not yet consumed never exceed ``budget`` (one part may, when nothing else is
held, so a part larger than the budget still makes progress). The consumer takes the parts
back in order with :meth:`next_part` and says when it is done with one (:meth:`release`).
A shard whose size is not known is looked up (a HEAD) a few shards ahead of its turn, so the
lookups' round trips overlap rather than add up, one per shard, before each shard's reads.

It owns its tasks: ``async with`` starts the planner, leaving cancels and awaits every read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

from aioloader.io.store import ObjectStore

SIZE_LOOKAHEAD = 8  # shards whose sizes are looked up ahead of the one being planned
# the run's first part is at most this long: at 50 MB/s a connection, a whole 8 MiB part is
# ~170 ms before the first sample can be parsed, 1 MiB ~20 ms
FIRST_PART = 1 << 20


class _ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._changed:
            self.used -= n
            self._changed.notify_all()


class ShardPrefetcher:
    """Parts of ``urls`` (from byte ``first_offset`` of the first one) in order, read ahead.

    :meth:`next_part` returns ``(shard_number, data)``, ``data`` None at the end of a shard,
    or ``None`` after the last shard; a failed read raises there, in order."""

    def __init__(
        self,
        store: ObjectStore,
        urls: Sequence[str],
        *,
        part_size: int,
        budget: int,
        max_requests: int,
        first_offset: int = 0,
        sizes: Sequence[int | None] | None = None,
        open_local: Callable[[str], int | None] | None = None,
        first_part: int = FIRST_PART,
    ) -> None:
        """``open_local(url)``: a descriptor of a local copy of the shard to read instead (a
        cache), or None; called when the shard's turn comes, closed when it has been read."""
        self._store = store
        self._urls = list(urls)
        self._sizes = list(sizes) if sizes is not None else [None] * len(self._urls)
        self._open_local = open_local
        self._fds: dict[int, int] = {}  # shard number -> descriptor of its local copy
        self._part = part_size
        self._first_part = max(1, first_part)
        self._budget = _ByteBudget(budget)
        self._requests = asyncio.Semaphore(max_requests)
        self._first_offset = first_offset
        self._queue: asyncio.Queue[tuple[int, asyncio.Future[bytes] | None] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._planner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ShardPrefetcher:
        self._planner = asyncio.create_task(self._plan(), name="aioloader-prefetch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._planner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def is_local(self, number: int) -> bool:
        """Whether shard ``number`` is being read from a local copy."""
        return number in self._fds

    async def _read(self, url: str, start: int, end: int, fd: int | None) -> bytes:
        if fd is not None:
            return await asyncio.to_thread(os.pread, fd, end - start, start)
        async with self._requests:
            return await self._store.read(url, start, end)

    def _failed(self, exc: BaseException) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.set_exception(exc)
        return future

    def _look_up_sizes(self, first: int, lookups: dict[int, asyncio.Task[int]]) -> None:
        """Start the size lookups (HEADs) of the shards from ``first`` on, up to
        :data:`SIZE_LOOKAHEAD` of them, so their round trips overlap instead of adding up."""
        for number in range(first, min(len(self._urls), first + SIZE_LOOKAHEAD)):
            if number in lookups or self._sizes[number] is not None:
                continue
            task = asyncio.create_task(self._store.size(self._urls[number]), name="aioloader-size")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            lookups[number] = task

    async def _plan(self) -> None:
        lookups: dict[int, asyncio.Task[int]] = {}
        try:
            await self._plan_parts(lookups)
        finally:
            for task in lookups.values():  # not needed after all (a failure, a local copy)
                task.cancel()
            await asyncio.gather(*lookups.values(), return_exceptions=True)

    async def _plan_parts(self, lookups: dict[int, asyncio.Task[int]]) -> None:
        for number, url in enumerate(self._urls):
            fd = self._open_local(url) if self._open_local is not None else None
            if fd is not None:
                self._fds[number] = fd
            try:
                if fd is not None:
                    size = os.fstat(fd).st_size
                elif self._sizes[number] is not None:
                    size = self._sizes[number]
                else:
                    self._look_up_sizes(number, lookups)
                    size = await lookups.pop(number)
            except Exception as exc:
                await self._queue.put((number, self._failed(exc)))
                return
            start = self._first_offset if number == 0 else 0
            bounds = list(range(start, size, self._part))
            if number == 0 and bounds and self._first_part < self._part:  # the first samples sooner
                bounds.insert(1, min(size, start + self._first_part))
            for begin, end in zip(bounds, [*bounds[1:], size], strict=True):
                if begin >= end:
                    continue
                await self._budget.acquire(end - begin)
                task = asyncio.create_task(self._read(url, begin, end, fd), name="aioloader-read")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await self._queue.put((number, task))
            await self._queue.put((number, None))
        await self._queue.put(None)

    async def next_part(self) -> tuple[int, bytes | None] | None:
        entry = await self._queue.get()
        if entry is None:
            return None
        number, task = entry
        if task is None:
            fd = self._fds.pop(number, None)
            if fd is not None:  # every part of the shard was read
                os.close(fd)
            return number, None
        return number, await task

    async def release(self, nbytes: int) -> None:
        """The consumer is done with a part of ``nbytes``: read further ahead."""
        await self._budget.release(nbytes)

