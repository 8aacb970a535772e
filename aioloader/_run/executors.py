"""Where a map stage's function runs: inline on the loop, in a thread pool, or on the loop as a
coroutine. Other kinds (the process pool of ``workers/``, Ray actors of ``ray/``) are listed in
``_FACTORIES``.

An executor runs a *chunk* (a list of values) and returns ``(results, failures, busy_s)`` where
``failures`` lists ``(index, exception)`` for the items whose function raised; the result at a
failed index is :data:`FAILED`. Executors never retry or skip: that is the stage's policy.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import ContextVar
from time import perf_counter
from typing import Any, Protocol

import numpy as np

from aioloader._run.stall import StallWatch
from aioloader._run.threads import DaemonThreadPool
from aioloader.errors import stopped_early

FAILED: Any = object()
# the keys of the chunk an executor is running (set by the map stage around each call), for
# the executors that name them in a report (a stalled worker)
CHUNK_KEYS: ContextVar[list[Any] | None] = ContextVar("aioloader_chunk_keys", default=None)
ChunkResult = tuple[list[Any], list[tuple[int, BaseException]], float]


class ChunkTimeout(Exception):
    """A chunk ran past its deadline; ``index`` is the item that was running."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class ChunkStalled(Exception):
    """A chunk's call stalled under ``on_stall="raise"`` and was given up; ``report`` is the
    stall watch's (:mod:`aioloader._run.stall`)."""

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report


def apply_items(fn: Callable[[Any], Any], values: list[Any]) -> ChunkResult:
    """``fn`` on each value, recording failures without stopping the chunk.

    ``list.extend`` over a ``map`` keeps the results appended before an exception, and the
    ``map`` iterator resumes after the failed value, so the fast path has no per-item Python.
    """
    started = perf_counter()
    results: list[Any] = []
    failures: list[tuple[int, BaseException]] = []
    remaining = map(fn, values)
    while True:
        try:
            results.extend(remaining)
            if len(results) == len(values):
                break
            failures.append((len(results), stopped_early(fn)))  # fn raised StopIteration
        except Exception as exc:
            failures.append((len(results), exc))
        results.append(FAILED)
    return results, failures, perf_counter() - started


def apply_block(
    fn: Callable[[list[Any]], list[Any]], values: list[Any], item_fn: Callable[[Any], Any] | None
) -> ChunkResult:
    """A block function (one call for the whole list); on failure, redo item by item with
    ``item_fn`` to find which items fail (reads are idempotent). A numpy array result stays
    one array (rows are items): batching then slices it instead of stacking rows."""
    started = perf_counter()
    try:
        results = fn(values)
        if not isinstance(results, np.ndarray):
            results = list(results)
    except Exception:
        if item_fn is None:
            raise
        return apply_items(item_fn, values)
    if len(results) != len(values):
        raise ValueError(f"a block function returned {len(results)} results for {len(values)} inputs")
    return results, [], perf_counter() - started


class Executor(Protocol):
    """``run(work, values, timeout)``: ``work`` is the stage's chunk function (a picklable
    ``partial(apply_items, fn)`` for sync functions; the coroutine function itself for async)."""

    kind: str
    workers: int

    async def run(
        self, work: Callable[..., Any], values: list[Any], timeout: float | None
    ) -> ChunkResult: ...

    def close(self) -> None: ...


class ThreadExecutor:
    """A thread pool owned by one run; closed (without waiting) when the run ends. Its threads
    are daemons (:mod:`aioloader._run.threads`): a call blocked in user code never holds the
    process's exit. With a ``timeout``, an item's clock starts when a thread starts it, and a
    call past it is abandoned (a new thread takes its place; a close does not wait for it).

    Tasks aim at ``target_task_s`` (10 ms): a thread round trip costs ~50-100 us plus a GIL
    hand-over, which at the map stage's 2 ms default cost JPEG decoding (~1.3 ms an image, one
    image per task) about a quarter of its throughput (990 vs 1271 images/s at 30 ms tasks).
    """

    kind = "thread"
    target_task_s = 0.010

    def __init__(self, workers: int, name: str, *, watch: StallWatch | None = None) -> None:
        self.workers = workers
        self._pool = DaemonThreadPool(workers, f"aioloader-{name}")
        self._watch = watch
        self.calls: set[Future[ChunkResult]] = set()  # running or queued (see MapStage.drain)

    async def run(
        self, work: Callable[[list[Any]], ChunkResult], values: list[Any], timeout: float | None
    ) -> ChunkResult:
        loop = asyncio.get_running_loop()
        stalled: asyncio.Future[str] | None = None
        if self._watch is not None:
            if self._watch.raises:
                stalled = loop.create_future()
                on_stall = functools.partial(_resolve_threadsafe, loop, stalled)
                work = self._watch.watched(work, CHUNK_KEYS.get(), on_stall=on_stall)
            else:
                work = self._watch.watched(work, CHUNK_KEYS.get())
        if timeout is None and stalled is None:
            call = self._pool.submit(work, values)
            self.calls.add(call)
            call.add_done_callback(self.calls.discard)
            return await asyncio.wrap_future(call)
        started = loop.create_future()
        call = self._pool.submit(_signal_start, loop, started, work, values)
        self.calls.add(call)
        call.add_done_callback(self.calls.discard)
        future = asyncio.wrap_future(call)
        ends = [future] if stalled is None else [future, stalled]
        try:
            # the clock starts in the thread: time queued behind other calls is not the item's
            await asyncio.wait([started, future], return_when=asyncio.FIRST_COMPLETED)
            limit = None if timeout is None else timeout * len(values)
            done, _ = await asyncio.wait(ends, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            if future in done:
                return future.result()
            self._pool.abandon(call)  # past its timeout, or stalled: a new thread takes its place
            self.calls.discard(call)
            if stalled is not None and stalled in done:
                raise ChunkStalled(stalled.result())
            raise ChunkTimeout(0)
        finally:
            started.cancel()
            if stalled is not None:
                stalled.cancel()
            if not future.done():  # a queued call never starts; a running one is not waited for
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def _signal_start(
    loop: asyncio.AbstractEventLoop,
    started: asyncio.Future[None],
    work: Callable[[list[Any]], ChunkResult],
    values: list[Any],
) -> ChunkResult:
    """``work(values)``, after telling the loop it started (the timeout's clock starts here)."""
    try:
        loop.call_soon_threadsafe(_set_started, started)
    except RuntimeError:  # the loop is closed: nobody waits for this call any more
        pass
    return work(values)


def _set_started(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


def _resolve_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any) -> None:
    """Resolve ``future`` with ``value`` from another thread (nothing if the loop has closed)."""
    try:
        loop.call_soon_threadsafe(_resolve, future, value)
    except RuntimeError:  # the loop is closed: nobody waits for the future any more
        pass


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


_THREAD_STATE = threading.local()


def one_intra_op_thread() -> None:
    """Give the torch ops of this thread one intra-op thread, when it is one of aioloader's own
    (named ``aioloader-...``: the event-loop thread, pool threads, probe threads), once torch is
    imported; a no-op after the first time, and in any other thread (an async app's loop).

    Every thread and process that runs a pipeline's functions then computes with the same
    intra-op parallelism (worker processes start with ``OMP_NUM_THREADS=1``, as torch
    DataLoader's do), so a float reduction gives the same bits whatever the executor, the
    concurrency, or where ``executor="auto"`` probed: they differed in the last bits between a
    pool of one thread (2 intra-op threads) and of two (1 each), and a resumed auto run, which
    probes again, differed from the uninterrupted one. It also stops each pool thread forking a
    team of OpenMP threads per op (two JPEG decode threads on 2 cores kept 4 busy: 2,020 ->
    2,190-2,245 images/s with one each). The setting is the calling thread's; torch also keeps
    it as the default of threads started later, so a short-lived thread puts that back."""
    if getattr(_THREAD_STATE, "pinned", False):
        return
    torch = sys.modules.get("torch")
    if torch is None:
        return
    _THREAD_STATE.pinned = True
    if not threading.current_thread().name.startswith("aioloader-"):
        return
    default = torch.get_num_threads()  # a new thread starts from the process's default
    if default == 1:
        return
    torch.set_num_threads(1)
    restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="aioloader-threads")
    restore.start()
    restore.join()


def on_one_intra_op_thread(work: Callable[[list[Any]], ChunkResult], values: list[Any]) -> ChunkResult:
    """``work(values)`` after :func:`one_intra_op_thread`: the form of every stage's work, on
    whatever executor runs it."""
    one_intra_op_thread()
    return work(values)


class AsyncExecutor:
    """Coroutine functions on the loop; the stage's concurrency is the number of chunks in flight."""

    kind = "async"

    def __init__(self, workers: int) -> None:
        self.workers = workers

    async def run(self, fn: Callable[..., Any], values: list[Any], timeout: float | None) -> ChunkResult:
        started = perf_counter()
        results: list[Any] = []
        failures: list[tuple[int, BaseException]] = []
        for index, value in enumerate(values):
            try:
                if timeout is None:
                    results.append(await fn(value))
                else:
                    results.append(await asyncio.wait_for(fn(value), timeout))
            except TimeoutError:
                raise ChunkTimeout(index) from None
            except Exception as exc:
                failures.append((index, exc))
                results.append(FAILED)
        return results, failures, perf_counter() - started

    def close(self) -> None:
        pass


ExecutorFactory = Callable[..., Executor]


def _process_executor(spec: Any, runtime: Any) -> Executor:
    # Imported when first used: the pool's modules are not needed by pipelines without processes.
    from aioloader.workers.executor import make_process_executor

    return make_process_executor(spec, runtime)


def _ray_executor(spec: Any, runtime: Any) -> Executor:
    # Imported when first used: Ray is an optional extra (aioloader[ray]).
    from aioloader.ray.executor import make_ray_executor

    return make_ray_executor(spec, runtime)


# Every executor kind beyond inline, thread and async, built as ``factory(spec, runtime)``.
_FACTORIES: dict[str, ExecutorFactory] = {"process": _process_executor, "ray": _ray_executor}


def register_executor(kind: str, factory: ExecutorFactory) -> None:
    """Plug in another executor kind, built as ``factory(spec, runtime)``."""
    _FACTORIES[kind] = factory


def external_executor(kind: str) -> ExecutorFactory | None:
    return _FACTORIES.get(kind)
