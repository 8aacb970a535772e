"""Bounded single-loop channel with explicit close: the queue between two stages.

Unlike ``asyncio.Queue`` (3.11) it can be closed: a closed channel lets the consumer drain what
is left and then raises :class:`EndOfChannel`; a producer putting into a closed channel gets
:class:`ChannelClosed`. It also counts what a stage needs for its statistics: time the producer
spent blocked on a full channel, time the consumer spent blocked on an empty one, and occupancy.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from typing import Any


class EndOfChannel(Exception):
    """The channel is closed and drained."""


class ChannelClosed(Exception):
    """A put into a channel that is already closed (the consumer went away)."""


def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)


class Channel:
    """A FIFO of at most ``capacity`` entries, used by one producer and one consumer task."""

    __slots__ = (
        "_closed",
        "_getters",
        "_items",
        "_occupancy_sum",
        "_putters",
        "capacity",
        "get_wait_s",
        "name",
        "occupancy_max",
        "put_wait_s",
        "puts",
    )

    def __init__(self, capacity: int, name: str = "") -> None:
        if capacity < 1:
            raise ValueError(f"channel capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.put_wait_s = 0.0
        self.get_wait_s = 0.0
        self.puts = 0
        self._occupancy_sum = 0
        self.occupancy_max = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def starved(self) -> bool:
        """True when the consumer is waiting on an empty channel (emit now rather than fill)."""
        return not self._items and any(not g.done() for g in self._getters)

    async def wait_for_room(self) -> None:
        """Until a put would not block (for the single producer that must not start work it
        cannot hand on yet)."""
        if len(self._items) >= self.capacity and not self._closed:
            started = perf_counter()
            loop = asyncio.get_running_loop()
            try:
                while len(self._items) >= self.capacity and not self._closed:
                    waiter = loop.create_future()
                    self._putters.append(waiter)
                    await waiter
            finally:
                self.put_wait_s += perf_counter() - started

    async def put(self, item: Any) -> None:
        items = self._items
        if len(items) >= self.capacity and not self._closed:
            started = perf_counter()
            loop = asyncio.get_running_loop()
            try:
                while len(items) >= self.capacity and not self._closed:
                    waiter = loop.create_future()
                    self._putters.append(waiter)
                    await waiter
            finally:
                self.put_wait_s += perf_counter() - started
        if self._closed:
            raise ChannelClosed(self.name)
        items.append(item)
        occupancy = len(items)
        self.puts += 1
        self._occupancy_sum += occupancy
        if occupancy > self.occupancy_max:
            self.occupancy_max = occupancy
        if self._getters:
            _wake_one(self._getters)

    async def get(self) -> Any:
        items = self._items
        if not items:
            if self._closed:
                raise EndOfChannel(self.name)
            started = perf_counter()
            loop = asyncio.get_running_loop()
            try:
                while not items:
                    if self._closed:
                        raise EndOfChannel(self.name)
                    waiter = loop.create_future()
                    self._getters.append(waiter)
                    await waiter
            finally:
                self.get_wait_s += perf_counter() - started
        item = items.popleft()
        if self._putters:
            _wake_one(self._putters)
        return item

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.get()
        except EndOfChannel:
            raise StopAsyncIteration from None

    def grow(self, capacity: int) -> None:
        """Raise the bound (never lower it); a producer waiting for room is woken."""
        if capacity > self.capacity:
            self.capacity = capacity
            _wake_all(self._putters)

    def close(self) -> None:
        """No more puts; the consumer drains what is queued. Idempotent."""
        self._closed = True
        _wake_all(self._getters)
        _wake_all(self._putters)

    def fail(self, exc: BaseException) -> None:
        """End the stream because the run failed. A channel only closes: the run's own reader
        (``Run.next_block``) raises the run's error when it reaches the end."""
        self.close()

    def abort(self) -> None:
        """End the stream because the run was stopped; ``Run.next_block`` then stops at once."""
        self.close()

    def occupancy_mean(self) -> float:
        return self._occupancy_sum / self.puts if self.puts else 0.0
