"""Executor placement for ``executor="auto"``: where a map stage runs, and the adjustable
in-flight limit of ``concurrency="auto"`` (:class:`Limiter`, driven by
:class:`aioloader.monitor.autotune.Tuner`).

**Placement.** :class:`PlacementProbe` stands in for the executor on a stage's first block. It
times the first items inline, on the thread's own clock (a busy machine's waits for a core are
not the function's cost). A function cheaper than :data:`INLINE_BELOW_S` per item (a fused
stage: :data:`BATCH_INLINE_BELOW_S` per batch) stays inline: a hand-off to a pool costs more
than the work. Otherwise it reads whether the function holds the GIL from runs in one thread and
in two (:func:`aioloader._run.thread_trial.thread_trial`: at least 25 ms of CPU each, medians of
three, on the block's inputs; results dropped, RNGs restored). One seen to release it -> threads;
any other -> processes when the work pickles and they pay for their start (:func:`place`), else
inline (an unpicklable function slower than :data:`THREAD_ABOVE_S` an item: a thread, which
keeps the loop free). The block's own items run once each, the rest of it in a thread; every
result is kept. The decision is made once per stage and kept for later epochs
(:class:`~aioloader._run.decisions.Decisions`).

:func:`gil_blocked_fraction` (a spinning thread's blocked time) is the previous GIL reading, kept
as a diagnostic. The probe no longer uses it: a fused ``.map(fn).batch(n)``'s first block is one
batch, too little work for it, and such a stage was placed by cost alone: GIL holders (gil 5 us,
the issue 23 tokenizer) went to threads.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from time import perf_counter
from typing import Any

from aioloader._run.thread_trial import THREADS_PAY_ABOVE, own_clock, thread_trial
from aioloader._run.threads import cpu_clock, cpu_seconds
from aioloader._spec import is_picklable

__all__ = [
    "BATCH_INLINE_BELOW_S",
    "INLINE_BELOW_S",
    "PROBE_S",
    "THREAD_ABOVE_S",
    "THREADS_PAY_ABOVE",
    "Limiter",
    "PlacementProbe",
    "gil_blocked_fraction",
    "place",
]

INLINE_BELOW_S = (
    10e-6  # per item: cheaper than a pool hand-off (text tokenising, ~15 us, gains from processes)
)
THREAD_ABOVE_S = 200e-6  # per item: slower than this blocks the loop too long; leave it
# per batch of a fused stage: cheaper than the parent's hand-off of a task to a pool and back
BATCH_INLINE_BELOW_S = 100e-6
PROBE_S = 0.06  # how long the GIL probe runs the function in a thread, in all
# seconds a pool of worker processes takes before its first result: forked (the modules are
# already imported) or spawned (a fresh interpreter imports torch)
FORK_START_S = 0.05
SPAWN_START_S = 3.0
_PROBES = 3  # the GIL probe is split in this many readings
HOLDS_GIL_ABOVE = 0.25  # spinner blocked per worker CPU second that means the GIL is held
_LONG_BLOCK = 0.2  # of the switch interval: the spinner's mean block when the worker holds the GIL
_MOSTLY_HELD = 0.5  # blocked per worker CPU second that means the GIL is held, even in short stints
_COST_ITEMS = 8  # the cost of an item is the median of this many calls, at most
_COST_BUDGET_S = 0.005  # ... or of as many as fit in this time (two at least)
_MIN_WORKER_CPU_S = 0.001  # a worker that used less CPU than this waited (I/O)
_MIN_PROBE_SWITCHES = 4  # the shortest GIL reading, in switch intervals (a shorter one may fit
# in the interval the spinner keeps the GIL before it must hand it over, and tells nothing)
# The spinner stops after this long even if the probe chunk runs on (the reading covers that
# window: the worker's CPU is read from its thread clock when the spinner stops). A function
# that releases the GIL many times per item runs slowly against the spinner (each re-take waits
# a switch interval): with 0.5 s, the demo's first epoch stalled 0.6 s on a batch of JPEGs.
_SPIN_CAP_S = 0.1
_SCHEDSTAT = "/proc/thread-self/schedstat"
_STATUS = "/proc/thread-self/status"

ChunkResult = tuple[list[Any], list[tuple[int, BaseException]], float]


# -- placement ---------------------------------------------------------------------------------
def _schedstat() -> tuple[float, float] | None:
    """(seconds on a core, seconds runnable waiting for one) of the calling thread, or None
    (off Linux). The waiting time is exact at each switch, which is what the probe reads."""
    try:
        with open(_SCHEDSTAT) as f:
            on_cpu, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def _voluntary_switches() -> int:
    """How many times the calling thread went to sleep (blocked), or 0 when unknown."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _spin(end: float, done: list[bool]) -> int:
    n = 0
    while not done[0] and perf_counter() < end:
        n += 1
    return n


def gil_blocked_fraction(
    work: Callable[[list[Any]], ChunkResult], values: list[Any]
) -> tuple[ChunkResult, float]:
    """Run ``work(values)`` in a thread while this thread spins; return its result and how long
    this thread was blocked per second the worker spent on a core (about 1 when ``work`` holds
    the GIL, about 0 when it releases it)."""
    outcome: list[Any] = []
    done = [False]

    worker: list[float] = []  # the worker thread's CPU seconds and wall seconds

    go = threading.Event()

    def target() -> None:
        go.wait()
        cpu, wall = time.thread_time(), perf_counter()
        try:
            outcome.append(work(values))
        except BaseException as exc:  # re-raised in the caller
            outcome.append(exc)
        finally:
            worker.extend((time.thread_time() - cpu, perf_counter() - wall))
            done[0] = True

    thread = threading.Thread(target=target, name="aioloader-gil-probe", daemon=True)
    thread.start()  # started before the measurement: a thread's start-up is not the function's
    clock = cpu_clock(thread)
    solo_started = perf_counter()
    solo_rate = _spin(solo_started + 0.002, [False]) / max(perf_counter() - solo_started, 1e-9)
    before = _schedstat()
    sleeps = _voluntary_switches()
    cpu_before = time.thread_time()
    started = perf_counter()
    worker_before = cpu_seconds(clock)
    go.set()
    spins = _spin(started + _SPIN_CAP_S, done)
    worker_after = cpu_seconds(clock) if not done[0] else None  # still running: its share so far
    wall = max(perf_counter() - started, 1e-9)
    on_cpu = time.thread_time() - cpu_before
    sleeps = _voluntary_switches() - sleeps
    after = _schedstat()
    thread.join()
    if before is not None and after is not None:
        # Blocked time per second of the worker's CPU: it took the GIL from the spinner for as
        # long as it ran Python (about 1), or not at all (about 0). Per second of the worker's
        # CPU rather than of wall time, so a worker kept off the cores by other processes does
        # not dilute it.
        # On-CPU time from the thread clock: schedstat's runs a scheduler tick behind.
        blocked_s = wall - on_cpu - (after[1] - before[1])
        if worker_before is not None and worker_after is not None:
            cpu = worker_after - worker_before
        else:
            cpu = worker[0] if worker else 0.0
        # A worker that hardly ran waited on I/O (it released the GIL); its wall time would not
        # tell, as a loaded machine keeps runnable threads waiting for a core.
        blocked = 0.0 if cpu < _MIN_WORKER_CPU_S else blocked_s / cpu
        # A thread that takes the GIL from the spinner keeps it a whole switch interval (it runs
        # Python); one that releases it hands it back at once. Short blocks, however many (a
        # loaded machine makes each hand-over slow), are not the GIL being held, unless they
        # add up to most of the worker's CPU time: Python that lets go now and then (a
        # tokenizer whose batch ends in a torch call: 0.6 ms blocks, 1.0 blocked per CPU second;
        # JPEG decoding: 0.17-0.24).
        short = sleeps and blocked_s / sleeps < _LONG_BLOCK * sys.getswitchinterval()
        if short and blocked < _MOSTLY_HELD:
            blocked = 0.0
    else:  # no scheduler statistics: the spinner's loss of speed, mapped to the same scale
        blocked = max(0.0, 1.0 - spins / wall / solo_rate) if solo_rate else 0.0
        blocked = blocked if blocked > 0.3 else 0.0
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result, max(0.0, blocked)


def place(
    cost_s: float,
    holds_gil: bool | None,
    picklable: bool,
    can_process: bool,
    reads_keys: bool = False,
    *,
    work_s: float | None = None,
) -> str:
    """The executor for a function costing ``cost_s`` per item: "inline", "thread" or "process".

    ``holds_gil``: from the thread trial (None: not measured, placed by cost only). A function
    that holds the GIL goes to processes when they pay: ``work_s`` (the stage's inline seconds
    in an epoch, None when unknown) saved by running on the cores in parallel must exceed the
    pool's start (:func:`process_start_s`).

    ``reads_keys``: the stage's tasks carry keys and its workers read their own items
    (:mod:`aioloader._run.read_fusion`; ``cost_s`` is then ``fn``'s alone). Such a stage never
    runs inline, where its reads would block the loop. In processes it costs the parent nothing
    per item but the result's mapping, while threads share this process's GIL with the loop and
    each other, so a costly function goes to processes even when it releases the GIL (JPEG
    decode + resize on 2 cores: processes at 0.92-1.00 of the no-loader ceiling, threads 0.87)."""
    cores = os.cpu_count() or 1
    processes = picklable and can_process and cores > 1
    if reads_keys:
        return "process" if processes and cost_s > THREAD_ABOVE_S else "thread"
    if cost_s < INLINE_BELOW_S:
        return "inline"
    if holds_gil is None:  # not measured: by cost only
        return "thread" if cost_s > THREAD_ABOVE_S else "inline"
    if not holds_gil:
        return "thread"
    if processes and (work_s is None or work_s * (1 - 1 / min(2, cores)) > process_start_s()):
        return "process"
    # An unpicklable holder slower than THREAD_ABOVE_S per item still goes to a thread: inline,
    # it would stop the loop (and every other stage) for that long at each item.
    return "thread" if not processes and cost_s > THREAD_ABOVE_S else "inline"


def process_start_s() -> float:
    """Seconds a pool of worker processes takes to start here: forked or spawned."""
    from aioloader.workers._spawn import fork_allowed  # here: placement is imported early

    return FORK_START_S if fork_allowed() else SPAWN_START_S


def _merge(parts: list[ChunkResult]) -> ChunkResult:
    results: list[Any] = []
    failures: list[tuple[int, BaseException]] = []
    busy = 0.0
    for part_results, part_failures, part_busy in parts:
        failures.extend((index + len(results), exc) for index, exc in part_failures)
        results.extend(part_results)
        busy += part_busy
    return results, failures, busy


def _in_thread(work: Callable[[list[Any]], ChunkResult], values: list[Any]) -> Future[ChunkResult]:
    """``work(values)`` in a one-off thread; the future resolves when it has returned."""
    future: Future[ChunkResult] = Future()
    future.set_running_or_notify_cancel()

    def target() -> None:
        try:
            future.set_result(work(values))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name="aioloader-probe", daemon=True).start()
    return future


class PlacementProbe:
    """An executor for a stage's first block that measures the function and decides where the
    stage runs next (``decision``, with ``cost_s`` and ``blocked`` for the record)."""

    kind = "auto"
    workers = 1

    def __init__(
        self,
        work: Any,
        *,
        can_process: bool,
        reads: Any = None,
        items: int | None = None,
        batches: bool = False,
        trial: bool = True,
    ) -> None:
        """``reads``: the stage's :class:`~aioloader._run.read_fusion.NamedRead` when its work
        reads its own items; the reads' time is taken out of the cost. ``items``: how many
        items the stage runs in an epoch, when known (processes must pay for their start).
        ``batches``: its items are whole batches (a fused stage), each a hand-off of its own,
        so one stays inline below :data:`BATCH_INLINE_BELOW_S` rather than per-sample costs.
        ``trial``: whether the work may run again on the block's inputs (the thread trial); a
        source's read stage may not (a source may count its reads): it is placed by cost."""
        self._trial = trial
        self._items = items
        self._inline_below = BATCH_INLINE_BELOW_S if batches else INLINE_BELOW_S
        self._work = work
        self._can_process = can_process
        self._reads = reads
        self._decision = "inline"
        self._trial_inputs: tuple[Callable[[list[Any]], ChunkResult], list[Any]] | None = None
        self.cost_s = 0.0
        self.speedup: float | None = None  # two threads' speed over one's (thread_trial)
        self.parallel: float | None = None  # cores two threads used at once
        self.served: float | None = None  # share of a core one thread had
        self.calls: list[Future[ChunkResult]] = []  # work still in a probe thread (see MapStage.drain)

    def _place(self, holds_gil: bool | None) -> str:
        # Pickling is checked only when processes would be chosen: the work may hold the whole
        # dataset (a read stage over a torch Dataset of 1M strings spent 0.28 s pickling it).
        reads_keys = self._reads is not None
        work_s = None if self._items is None else self.cost_s * self._items
        decision = place(self.cost_s, holds_gil, True, self._can_process, reads_keys, work_s=work_s)
        if decision == "process" and not is_picklable(self._work):
            decision = place(self.cost_s, holds_gil, False, self._can_process, reads_keys, work_s=work_s)
        return decision

    async def run(
        self, work: Callable[[list[Any]], ChunkResult], values: list[Any], timeout: float | None
    ) -> ChunkResult:
        # Items one by one: the first calls may pay a warm-up (torch's first ops on a thread:
        # 960 us, then 230 us, for a 90 us function, which sent it to threads or processes at
        # a third of its inline speed or less), so the cost is the median of up to
        # _COST_ITEMS calls, as many as fit in _COST_BUDGET_S (at least two).
        parts = []
        times = []
        ends = perf_counter() + _COST_BUDGET_S
        for index in range(min(len(values), _COST_ITEMS)):
            read_before = self._read_seconds()
            began = own_clock()  # a busy machine's waits for a core are not the function's cost
            parts.append(work(values[index : index + 1]))
            times.append(max(0.0, own_clock() - began - (self._read_seconds() - read_before)))
            if index >= 1 and perf_counter() > ends:
                break
        head = len(parts)
        times.sort()
        self.cost_s = times[(len(times) - 1) // 2]  # the lower median: two calls give the smaller
        first = _merge(parts)
        rest = values[head:]
        if self.cost_s < self._inline_below or not self._trial:  # too cheap to move, or by cost
            self._decision = self._place(None)  # inline (a stage that reads: threads)
            return _merge([first, work(rest)]) if len(rest) else first  # rest may be an array
        # the trial (see decision) waits until the block's results have gone downstream: the
        # time to the first batch is not the trial's
        self._trial_inputs = (work, list(values))
        if not len(rest):
            return first
        # the rest of the block in a thread: a costly function must not hold up the loop
        call = _in_thread(work, rest)
        self.calls.append(call)
        return _merge([first, await asyncio.wrap_future(call)])

    @property
    def decision(self) -> str:
        """Where the stage runs next; read after :meth:`run`, it first runs the thread trial
        on the block's inputs when the function was too costly to stay inline on cost alone
        (two threads against one; measurement runs, results dropped)."""
        if self._trial_inputs is not None:
            work, values = self._trial_inputs
            self._trial_inputs = None
            trial = thread_trial(work, values, self.cost_s)
            self.speedup = trial.speedup
            self.parallel, self.served = trial.parallel, trial.served
            if self._reads is None:  # (a stage that reads: the trial's cost includes the reads)
                self.cost_s = trial.cost_s  # measured warm, over a whole trial
            # (the first calls' cost may have been a warm-up's, which the trial's runs are not)
            cheap = self.cost_s < self._inline_below
            self._decision = self._place(None if cheap else trial.holds_gil)
        return self._decision

    def _read_seconds(self) -> float:
        return 0.0 if self._reads is None else self._reads.seconds_here()

    def describe(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "cost_us": round(self.cost_s * 1e6, 1),
            "thread_speedup": None if self.speedup is None else round(self.speedup, 2),
            "parallel": None if self.parallel is None else round(self.parallel, 2),
            "core_share": None if self.served is None else round(self.served, 2),
        }

    def close(self) -> None:
        pass


# -- concurrency ---------------------------------------------------------------------------------
class Limiter:
    """A semaphore whose limit can change while tasks hold it (the tuned in-flight limit)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        while self.used >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass on a wake-up this task can no longer use
                raise
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.used
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
