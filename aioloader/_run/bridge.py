"""Synchronous iteration: a background event-loop thread and a cheap hand-off to the consumer.

A Loader owns one :class:`LoopThread` for its whole life (uvloop when installed); each sync
iteration runs its graph there and passes finished blocks to the consumer thread through a
:class:`Handoff` (a C-level ``queue.SimpleQueue`` with a bound). The consumer pays a queue get and
sometimes a wake-up per block, never a ``run_coroutine_threadsafe`` per item; the loop side
only hears back (``call_soon_threadsafe``) when it is waiting for room.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from time import perf_counter
from typing import Any

import numpy as np
import torch

from aioloader._run.block import Block
from aioloader._run.channel import ChannelClosed
from aioloader._run.interrupt import holds_loop, start_thread
from aioloader._run.threads import wait_at_exit, wait_while_computing

STOP_TIMEOUT_S = 2.0
# after Ctrl-C, a run's end is waited for this long, then only while the loop computes (up to
# STOP_TIMEOUT_S): an inline call blocked on the loop holds it (each STOP_TIMEOUT_S wait added
# 2 s: 8.7 s from Ctrl-C to exit, guarantee 6 says 2 s)
INTERRUPT_WAIT_S = 0.1
SIGNAL_CHECK_S = 0.1  # how often a consumer blocked on the loader checks for Ctrl-C
FLUSH_AFTER_S = 0.001
SYNC_BYTES = 32 << 20  # what a sync consumer's hand-off may hold, when prefetch(n) does not say
SYNC_MAX_DEPTH = 32  # deep enough that tiny batches do not wait on the consumer (bench/results/design-notes.md)
_END: Any = object()


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """``kind``: "auto" (uvloop when installed), "uvloop" or "asyncio"."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class LoopThread:
    """An event loop running forever in a daemon thread, until :meth:`stop`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loop = new_event_loop(kind)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="aioloader-loop", daemon=True)
        start_thread(self._thread)
        wait_at_exit(self._thread)  # after Ctrl-C its stop is not waited for long
        ready.wait()

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def is_current(self) -> bool:
        """True when called from this loop's own thread (e.g. a finaliser run by GC there)."""
        return threading.current_thread() is self._thread

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.is_current:  # the loop's own thread cannot wait for itself to end
            self._thread.join(timeout)


class Handoff:
    """The final channel of a run consumed from another thread.

    The last stage puts blocks straight into it (it has the producer half of the
    :class:`~aioloader._run.channel.Channel` interface), so a sync consumer costs no extra hop.
    ``queue.SimpleQueue`` does the blocking in C (a ``threading.Condition`` costs ~10 us of
    Python per wait/notify pair); the bound is kept with two counters, each written by one
    side only. A waiting producer is woken once the consumer has drained to half the
    capacity, so a fast pair exchanges one wake-up per ``capacity / 2`` blocks.

    The consumer is woken the same way: new blocks are held until half the capacity is ready
    or :data:`FLUSH_AFTER_S` has passed: a wake-up per block would hand the GIL across threads
    once per batch. A slow pipeline pays at most ``FLUSH_AFTER_S`` of latency.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 2, name: str = "consumer") -> None:
        self._loop = loop
        self.name = name
        self.capacity = capacity
        self._low_water = capacity // 2
        self.on_get: Callable[[Any], None] | None = None  # the run's delivery counter
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._put = 0  # written by the producer only
        self._taken = 0  # written by the consumer only
        self._room: asyncio.Future[None] | None = None
        self._closed = False
        self.aborted = False
        self.interrupted = False  # the consumer got Ctrl-C: the run does not wait for threads
        self.stopped = threading.Event()  # the run's tasks have ended (its drain may go on)
        self.finished = threading.Event()
        self.put_wait_s = 0.0
        self.get_wait_s = 0.0
        self.occupancy_max = 0
        self._occupancy_sum = 0
        self._pending: list[Any] = []  # put by the producer, not yet visible to the consumer
        self._adaptive = False
        self._flush_timer: asyncio.TimerHandle | None = None

    def sized(self, capacity: int, *, adaptive: bool = False) -> Handoff:
        """Set the bound (the run decides it from the spec's last depth) and return self.
        ``adaptive``: after the first block, raise it to hold about :data:`SYNC_BYTES` of
        blocks (at most :data:`SYNC_MAX_DEPTH`): small batches cost a cross-thread wake-up
        each, big ones cost memory."""
        self.capacity = capacity
        self._low_water = self.capacity // 2
        self._adaptive = adaptive
        return self

    def _adapt(self, block: Any) -> None:
        self._adaptive = False
        size = max(1, block_nbytes(block))
        self.capacity = max(self.capacity, min(SYNC_MAX_DEPTH, SYNC_BYTES // size))
        self._low_water = self.capacity // 2

    # producer half (loop thread), as Channel
    @property
    def closed(self) -> bool:
        return self._closed

    def starved(self) -> bool:
        return self._put == self._taken

    def occupancy_mean(self) -> float:
        return self._occupancy_sum / self._put if self._put else 0.0

    def _flush(self) -> None:
        """Make pending blocks visible to the consumer (one wake-up for all of them)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        pending, self._pending = self._pending, []
        for item in pending:
            self._queue.put(item)

    async def put(self, item: Any) -> None:
        if self._adaptive:
            self._adapt(item)
        if self._put - self._taken >= self.capacity:
            self._flush()  # the consumer must see everything before the producer waits for room
            started = perf_counter()
            try:
                while self._put - self._taken >= self.capacity and not self._closed:
                    room = self._loop.create_future()
                    self._room = room
                    if self._put - self._taken <= self._low_water:  # drained meanwhile
                        break
                    await room
            finally:
                self.put_wait_s += perf_counter() - started
        if self._closed:
            raise ChannelClosed(self.name)
        self._put += 1
        occupancy = self._put - self._taken
        self._occupancy_sum += occupancy
        if occupancy > self.occupancy_max:
            self.occupancy_max = occupancy
        self._pending.append(item)
        # the first block at once: the time to first batch must not wait for a timer that a
        # busy loop (an executor="auto" probe) may not run for a while
        if self._put == 1 or len(self._pending) >= max(1, self._low_water):
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = self._loop.call_later(FLUSH_AFTER_S, self._flush)

    def close(self) -> None:
        """The end of the stream: the consumer takes what is queued, then sees the end."""
        self.fail(_END)

    def abort(self) -> None:
        """The run was stopped (``Loader.close()``): the consumer sees the end at once and
        takes nothing more, so what it was handed is what the run's state counts."""
        self.aborted = True
        self.fail(_END)

    def fail(self, exc: BaseException | Any) -> None:
        """Deliver ``exc`` to the consumer after what is queued; later puts are refused."""
        if not self._closed:
            self._closed = True
            self._flush()
            self._queue.put(exc)
            room, self._room = self._room, None
            if room is not None and not room.done():
                room.set_result(None)

    # consumer half (any thread)
    def get(self) -> Any:
        while True:
            try:
                # a bounded wait: a Ctrl-C whose signal lands on another thread is only seen
                # when this thread runs Python code again (it was lost in about 1 run in 6)
                item = self._queue.get(timeout=SIGNAL_CHECK_S)
                break
            except queue.Empty:
                continue
        if self.aborted:
            return _END
        self._taken += 1
        room = self._room
        if room is not None and self._put - self._taken <= self._low_water:
            self._room = None
            self._loop.call_soon_threadsafe(_resolve, room)
        return item


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _drive(make_run: Callable[[Handoff], Any], handoff: Handoff) -> None:
    """Run a graph on the loop thread with ``handoff`` as its output."""
    run = None
    try:
        run = make_run(handoff)
        run.on_stop.append(handoff.stopped.set)
        # make_run holds the Loader: if this thread kept the last reference to it, the
        # Loader's finalizer (closing its pools) would run here, after the consumer had moved on
        make_run = None  # type: ignore[assignment]
        run.start()
        await run.wait()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        handoff.fail(exc)
    finally:
        make_run = None  # type: ignore[assignment]
        try:
            if run is not None:
                if handoff.interrupted:  # Ctrl-C: calls blocked in threads are not waited for
                    run.drain_s = 0.0
                await run.aclose()
        finally:
            handoff.close()  # a consumer still waiting (Loader.close()) sees the end
            handoff.stopped.set()
            handoff.finished.set()


def iterate_blocks(loop_thread: LoopThread, make_run: Callable[[Handoff], Any]) -> Iterator[Block]:
    """Blocks of a run executed on ``loop_thread``; stopping the generator stops the run."""
    handoff = Handoff(loop_thread.loop)
    future = loop_thread.submit(_drive(make_run, handoff))
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if handoff.on_get is not None:
                handoff.on_get(item)
            yield item
    except KeyboardInterrupt:
        handoff.interrupted = True
        raise
    finally:
        if not handoff.finished.is_set():
            future.cancel()
            # the run's tasks, not its calls still running in threads: a Ctrl-C in the loop
            # body must reach the caller at once (Loader.close() waits for those calls)
            # a call holding the loop (a Ctrl-C in the loop body closes this generator before
            # the consumer's handler runs) is waited for only while it computes, as after Ctrl-C
            if not handoff.interrupted and not holds_loop(loop_thread.thread):
                handoff.stopped.wait(STOP_TIMEOUT_S)
            elif not handoff.stopped.wait(INTERRUPT_WAIT_S):  # then while the loop computes
                wait_while_computing(loop_thread.thread, time.monotonic() + STOP_TIMEOUT_S, handoff.stopped)


def block_nbytes(block: Block, limit: int = 64) -> int:
    """Approximate bytes held by a block's values: tensors, arrays, bytes and strings, nested in
    tuples, lists and dicts (at most ``limit`` leaves are looked at, the rest extrapolated)."""
    values = block.values
    if isinstance(values, np.ndarray):
        return int(values.nbytes)
    seen = 0
    total = 0
    stack = list(values[:limit])
    while stack and seen < limit:
        value = stack.pop()
        seen += 1
        if isinstance(value, torch.Tensor):
            total += value.element_size() * value.numel()
        elif isinstance(value, np.ndarray):
            total += int(value.nbytes)
        elif isinstance(value, (bytes, bytearray, str)):
            total += len(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        else:
            total += 64
    sampled = min(len(values), limit)
    return total * len(values) // max(1, sampled)
