"""Reading samples' byte ranges ahead of the consumer, in an order known in advance.

An indexed source under ``shuffle=True`` is asked for single samples in a permuted order, and
each ranged read waits a first-byte latency: read one at a time as asked, or a few dozen at a
time, the run is bound by that latency. The order is known before any read, so
:class:`ReadAhead` takes the samples' byte ranges in that order (the spans) and reads them
before they are asked for:

- spans are admitted in order while the bytes admitted and not yet taken stay within
  ``budget`` (and at most ``max_spans`` of them): that is all the read-ahead holds, in
  flight or read (one span larger than the budget is admitted alone, so it still progresses);
- requests go out for the spans needed first, at most ``max_requests`` at once, each joined
  with the admitted spans that adjoin it in the same object (one request of at most
  ``max_request_bytes``): no byte between two spans is read, so bytes fetched stay the data's;
- requests lead the takes by at most half the budget (``lead``) unless a take waits on a span
  not yet requested: the spans further ahead wait, admitted, so that the neighbours admitted
  after them can join their request (fewer, larger requests: less CPU per sample);
- :meth:`take` hands over the bytes of a key's next span and frees its room in the budget.

It owns its tasks: the planner starts at the first :meth:`take` (on the loop that reads), and
:meth:`aclose` cancels and awaits it and every read.

:class:`UnitReadAhead` does the same for sources whose keys are parts of larger units read
whole (an indexed Parquet file's rows: a row group is read with the selected columns'
byte ranges, by pyarrow). Along the order, each unit an admitted key needs is read once, ahead,
and held until the last admitted key of it is taken; a unit needed again after that is read
again. The units held stay within the byte budget (by the size the source gives each unit).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aioloader.io.store import ObjectStore

# keys admitted between two yields to the loop, so a planner admitting a whole small dataset
# in one go does not hold the loop
_ADMIT_STEP = 1024


class _Span:
    __slots__ = ("data", "end", "error", "key", "requested", "start", "url", "waiter", "wanted")

    def __init__(self, key: Any, url: str, start: int, end: int) -> None:
        self.key, self.url, self.start, self.end = key, url, start, end
        self.requested = False
        self.wanted = False  # a take waits on it and it is not requested yet
        # its bytes or its read's error once read; a future only when a take waits for them
        # (few objects per sample: a burst of futures made the collector run over the heap)
        self.data: memoryview | None = None
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def settle(self, data: memoryview | None, error: BaseException | None) -> None:
        self.data, self.error = data, error
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        elif isinstance(error, Exception):
            waiter.set_exception(error)
            waiter.exception()  # its taker raises it; none is "never retrieved"
        else:
            waiter.cancel()


class ReadAhead:
    """The bytes of ``spans`` (``(key, url, start, end)`` in the order they will be taken), read
    ahead within ``budget`` bytes. :meth:`take` must be called in that order, as a run's read
    stage does (concurrent calls are fine: each waits for its own span)."""

    def __init__(
        self,
        store: ObjectStore,
        spans: Iterator[tuple[Any, str, int, int]],
        *,
        budget: int,
        max_requests: int,
        max_request_bytes: int,
        max_spans: int = 16384,
    ) -> None:
        self._store = store
        self._spans = spans
        self._budget = budget
        self._max_spans = max_spans
        self._max_request = max_request_bytes
        self._most = max_requests
        self._lead = max(1, budget // 2)
        self._requested = 0  # bytes of spans requested and not yet taken
        self._urgent = 0  # spans a take waits on that are not requested yet
        self.held = 0  # bytes admitted and not yet taken (in flight, read, or waiting)
        self._count = 0  # spans admitted and not yet taken
        self._room = asyncio.Event()  # set when a take frees room
        self._admitted: dict[Any, deque[_Span]] = defaultdict(deque)  # key -> its spans, in order
        self._waiting: dict[Any, list[asyncio.Future[_Span | None]]] = defaultdict(list)
        self._queue: deque[_Span] = deque()  # admitted, not requested, in the order needed
        self._by_start: dict[str, dict[int, _Span]] = defaultdict(dict)  # of those, by range
        self._by_end: dict[str, dict[int, _Span]] = defaultdict(dict)
        self._in_flight = 0
        self.requests = 0  # requests sent, for stats and tests
        self._dispatch_due = False
        self._done = False  # every span admitted (or the planner stopped)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._planner: asyncio.Task[None] | None = None
        self._closed = False

    # -- the consumer's side -------------------------------------------------------------
    async def take(self, key: Any) -> memoryview | None:
        """The bytes of ``key``'s next span (a view of its request's bytes), read ahead;
        None when ``key`` is not (or no longer) in the plan, for the caller to read it itself."""
        if self._closed:
            return None
        if self._planner is None:
            self._planner = asyncio.create_task(self._plan(), name="aioloader-read-ahead")
        span: _Span | None = await _next_admitted(self, key)
        if span is None:
            return None
        try:
            if span.data is None and span.error is None:  # not read yet: wait for it
                if not span.requested:  # sent at once, whatever the lead
                    span.wanted = True
                    self._urgent += 1
                    self._schedule()
                span.waiter = asyncio.get_running_loop().create_future()
                await span.waiter
            if span.error is not None:
                raise span.error
            return span.data
        finally:
            if span.wanted:  # cancelled before its request went out
                span.wanted = False
                self._urgent -= 1
            elif span.requested:
                self._requested -= span.end - span.start
            self.held -= span.end - span.start
            self._count -= 1
            self._room.set()
            span.data = None

    async def aclose(self) -> None:
        """Stop reading ahead: cancel and await the planner and every read."""
        self._closed = True
        tasks = [t for t in (self._planner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._finish()
        for span in self._queue:  # never requested: a take still waiting on one ends too
            span.settle(None, asyncio.CancelledError())
        self._queue.clear()

    # -- the planner ---------------------------------------------------------------------
    def _finish(self) -> None:
        self._done = True
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._waiting.clear()

    async def _plan(self) -> None:
        try:
            for admitted, (key, url, start, end) in enumerate(self._spans, 1):
                size = end - start
                while self._count and (self.held + size > self._budget or self._count >= self._max_spans):
                    self._room.clear()
                    await self._room.wait()
                span = _Span(key, url, start, end)
                self.held += size
                self._count += 1
                waiters = self._waiting.get(key, [])
                while waiters and waiters[0].done():  # a take cancelled while it waited
                    waiters.pop(0)
                if waiters:  # its take() came first
                    waiters.pop(0).set_result(span)
                else:
                    self._admitted[key].append(span)
                if not waiters:
                    self._waiting.pop(key, None)
                self._enqueue(span)
                if admitted % _ADMIT_STEP == 0:
                    await asyncio.sleep(0)
        except Exception:  # (a key out of range) the takes left read for themselves and raise it
            pass
        finally:
            self._finish()

    def _enqueue(self, span: _Span) -> None:
        # (a range admitted twice, a padded key, is read twice: the later one is the listed one)
        self._queue.append(span)
        self._by_start[span.url][span.start] = span
        self._by_end[span.url][span.end] = span
        self._schedule()

    def _schedule(self) -> None:
        """A dispatch pass soon: once the spans admitted with this one are in."""
        if not self._dispatch_due and not self._closed:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _unlist(self, span: _Span) -> None:
        span.requested = True
        if span.wanted:
            span.wanted = False
            self._urgent -= 1
        size = span.end - span.start
        self._requested += size
        self._by_start[span.url].pop(span.start, None)
        self._by_end[span.url].pop(span.end, None)

    def _dispatch(self) -> None:
        """Send requests for the spans needed first, each joined with its neighbours."""
        self._dispatch_due = False
        while self._in_flight < self._most and self._queue and not self._closed:
            if self._requested >= self._lead and not self._urgent:
                break
            first = self._queue.popleft()
            if first.requested:
                continue
            self._unlist(first)
            group = [first]
            starts, ends = self._by_start[first.url], self._by_end[first.url]
            low, high = first.start, first.end
            while (after := starts.get(high)) is not None and after.end - low <= self._max_request:
                self._unlist(after)
                group.append(after)
                high = after.end
            while (before := ends.get(low)) is not None and high - before.start <= self._max_request:
                self._unlist(before)
                group.append(before)
                low = before.start
            self._in_flight += 1
            self.requests += 1
            task = asyncio.create_task(self._read(first.url, low, high, group), name="aioloader-read")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, url: str, low: int, high: int, group: list[_Span]) -> None:
        try:
            data = await self._store.read(url, low, high)
        except BaseException as exc:  # each span fails with it (cancelled: the reader closes)
            for span in group:
                span.settle(None, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._in_flight -= 1
            self._schedule()
        view = memoryview(data)  # each span a view of the request's bytes: not copied again
        for span in group:
            span.settle(view[span.start - low : span.end - low], None)


class _Unit:
    __slots__ = ("read", "refs", "size", "unit")

    def __init__(self, unit: Any, size: int, read: asyncio.Task[Any]) -> None:
        self.unit, self.size, self.read = unit, size, read
        self.refs = 1  # admitted keys that have not taken it yet


class UnitReadAhead:
    """The units of ``keys`` (``(key, unit, size)`` in the order they will be taken: the unit
    holding the key and its size in bytes), each read by ``read(unit)`` ahead of the takes,
    at most ``max_requests`` at once, the units held (read or in flight) within ``budget``
    bytes (one larger than the budget is held alone). :meth:`take` must be called in that
    order (concurrent calls are fine)."""

    def __init__(
        self,
        keys: Iterator[tuple[Any, Any, int]],
        read: Callable[[Any], Awaitable[Any]],
        *,
        budget: int,
        max_requests: int,
        max_keys: int = 16384,
    ) -> None:
        self._keys = keys
        self._read = read
        self._budget = budget
        self._max_keys = max_keys
        self._limit = asyncio.Semaphore(max_requests)
        self.held = 0  # bytes of the units admitted and not released
        self._count = 0  # keys admitted and not yet taken
        self._room = asyncio.Event()
        self._units: dict[Any, _Unit] = {}  # admitted, by unit
        self._admitted: dict[Any, deque[_Unit]] = defaultdict(deque)  # key -> its units, in order
        self._waiting: dict[Any, list[asyncio.Future[_Unit | None]]] = defaultdict(list)
        self.reads = 0  # units read, for stats and tests
        self._done = False
        self._planner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # the reads running
        self._closed = False

    async def take(self, key: Any) -> Any:
        """What ``read`` gave for ``key``'s unit (read ahead); None when ``key`` is not (or no
        longer) in the plan, for the caller to read it itself."""
        if self._closed:
            return None
        if self._planner is None:
            self._planner = asyncio.create_task(self._plan(), name="aioloader-read-ahead")
        entry: _Unit | None = await _next_admitted(self, key)
        if entry is None:
            return None
        try:
            return await asyncio.shield(entry.read)  # a taker cancelled leaves the read to others
        finally:
            self._count -= 1
            entry.refs -= 1
            if entry.refs == 0:  # its last admitted key: the unit goes
                if self._units.get(entry.unit) is entry:
                    del self._units[entry.unit]
                entry.read.cancel()  # (done already, unless its taker was cancelled)
                self.held -= entry.size
            self._room.set()

    async def aclose(self) -> None:
        """Stop reading ahead: cancel and await the planner and every read."""
        self._closed = True
        tasks = [t for t in (self._planner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for entry in self._units.values():  # a read never taken: its error is not left unseen
            if entry.read.done() and not entry.read.cancelled():
                entry.read.exception()
        self._units.clear()
        self._finish()

    def _finish(self) -> None:
        self._done = True
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._waiting.clear()

    async def _plan(self) -> None:
        try:
            for admitted, (key, unit, size) in enumerate(self._keys, 1):
                entry = self._units.get(unit)
                if entry is not None:  # read (or being read) for a key admitted earlier
                    entry.refs += 1
                else:
                    while self._count and (self.held + size > self._budget or self._count >= self._max_keys):
                        self._room.clear()
                        await self._room.wait()
                    read = asyncio.create_task(self._read_one(unit), name="aioloader-read")
                    self._tasks.add(read)
                    read.add_done_callback(self._tasks.discard)
                    entry = self._units[unit] = _Unit(unit, size, read)
                    self.held += size
                self._count += 1
                waiters = self._waiting.get(key, [])
                while waiters and waiters[0].done():  # a take cancelled while it waited
                    waiters.pop(0)
                if waiters:  # its take() came first
                    waiters.pop(0).set_result(entry)
                else:
                    self._admitted[key].append(entry)
                if not waiters:
                    self._waiting.pop(key, None)
                if admitted % _ADMIT_STEP == 0:
                    await asyncio.sleep(0)
        except Exception:  # (a key out of range) the takes left read for themselves and raise it
            pass
        finally:
            self._finish()

    async def _read_one(self, unit: Any) -> Any:
        async with self._limit:
            self.reads += 1
            return await self._read(unit)


async def _next_admitted(plan: Any, key: Any) -> Any:
    """The next entry ``plan``'s planner admitted for ``key`` (waiting while the planner gets
    to it, as earlier keys are taken); None when ``key`` is not (or no longer) in the plan.
    ``plan``: a read-ahead with ``_admitted``, ``_waiting`` and ``_done``."""
    queue = plan._admitted.get(key)
    if queue:
        entry = queue.popleft()
        if not queue:
            del plan._admitted[key]
        return entry
    if plan._done:
        return None
    waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    plan._waiting[key].append(waiter)
    return await waiter
