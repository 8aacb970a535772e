"""Autotuning: where a map stage runs (``executor="auto"``) and how many chunks it keeps in
flight (``concurrency="auto"``).

**Placement.** :class:`PlacementProbe` stands in for the executor on a stage's first block. It
times the first items inline. A function cheaper than :data:`INLINE_BELOW_S` per item stays inline
(a hand-off to a pool costs more than the work). Otherwise it runs the next ~:data:`PROBE_S` of
items as a few readings of :func:`thread_speedup`: a third inline, the rest in two threads at
once, the threads' rate over inline's. A function that holds the GIL reads about 1 (the threads
take turns), one that releases it (Pillow decode, numpy, hashing, I/O) up to 2, and one that lets
go briefly and often (a Python tokenizer ending in ``torch.tensor``) like a holder, since that is
how it runs in threads. Each reading compares the machine with itself a moment earlier, so load
does not fool it as much; readings are carried over from block to block (the stage joins blocks
of a few values up to ~40 ms of work for one) until they add up to :data:`_PROBES` x
:data:`_MIN_PROBE_SWITCHES` switch intervals. Threads pay from :data:`THREADS_PAY` (the readings'
mean weighted by their length), and only when :func:`gil_blocked_fraction` (a
thread spinning beside the function is not blocked by it) agrees: one noisy reading alone must not
put a GIL holder on threads.
Threads pay -> threads; otherwise (the GIL is held) -> processes when the work pickles and they
pay (below), inline otherwise: never threads, where a GIL holder runs no faster than inline and slows the loop.
Not known (too little work for a reading, or readings a loaded machine made meaningless) ->
inline: a wrong guess must never be threads for a GIL holder. The rest of the block runs in a
thread; every result is kept, nothing runs twice.

**Processes pay** when the work they would take off this process outweighs starting them:
``work_s * (1 - 1 / speedup) > start_s``, with ``work_s`` the work left in the epoch times the
epochs run so far plus one (a loader iterated again is likely iterated more), ``speedup`` the
workers the cores can run, and ``start_s`` :data:`PROCESS_START_S` (0 once the stage's pool
runs). A stage left inline for that reason is placed again next epoch. **Re-deciding**: a stage
put on threads whose measured capacity (workers x items / busy seconds) is not above inline's
(1 / cost) is placed inline (or in processes when they pay) from the next epoch. Placement never
changes the data: every executor gives the same output in the same order.

**Concurrency.** :class:`Tuner` hill-climbs each tuned stage's in-flight limit on the delivered
samples/s, measured over windows of the run's timeline ticks: step, keep the step if the rate rose
by more than :data:`GAIN`, else revert and turn; after two failed turns hold for a while and try
again. Steps up stop at the CPU budget (the cores, when the loader's processes already use them)
and when the memory budget (``max_memory_usage`` of the available memory) is reached, where the
stage steps down and its output queue shrinks back. The output queue grows with the limit so the
chunks that finish together have room.
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

import psutil

from aioloader._spec import is_picklable

__all__ = [
    "INLINE_BELOW_S",
    "THREAD_ABOVE_S",
    "Limiter",
    "PROCESS_START_S",
    "THREADS_PAY",
    "PlacementProbe",
    "Tuner",
    "processes_pay",
    "gil_blocked_fraction",
    "place",
]

# per item: cheaper than a pool hand-off; processes batch items into ~10 ms tasks, so a 5 us
# GIL-bound function still gains from them (bench gil workload)
INLINE_BELOW_S = 2e-6
THREAD_ABOVE_S = 200e-6  # per item: slower than this blocks the loop too long; leave it
PROBE_S = 0.06  # how long the GIL probe runs the function in a thread, in all
# Starting a pool: spawn and import torch in each worker, in parallel (0.5-1.5 s on 2 cores;
# the workers' start-up also takes the cores from the inline work meanwhile).
PROCESS_START_S = 1.0
_PROCESS_EFFICIENCY = 0.8  # of the ideal speed-up that processes reach (the parent's own work)
THREADS_PAY = 1.3  # two threads' rate over inline's that puts (and keeps) a stage on threads
_PROBES = 3  # the GIL probe is split in this many readings
HOLDS_GIL_ABOVE = 0.25  # spinner blocked per worker CPU second that means the GIL is held
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


def _spin(end: float, done: list[bool]) -> int:
    n = 0
    while not done[0] and perf_counter() < end:
        n += 1
    return n


def _thread_clock(thread: threading.Thread) -> int | None:
    """The CPU-time clock of ``thread`` (Linux), or None."""
    try:
        return time.pthread_getcpuclockid(thread.ident)  # type: ignore[arg-type]
    except (AttributeError, OSError, TypeError):
        return None


def _clock_seconds(clock: int | None) -> float | None:
    if clock is None:
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:  # the thread has ended
        return None


def gil_blocked_fraction(
    work: Callable[[list[Any]], ChunkResult], values: list[Any]
) -> tuple[ChunkResult, float]:
    """Run ``work(values)`` in a thread while this thread spins; return its result and how long
    this thread was blocked per second the worker spent on a core (about 1 when ``work`` holds
    the GIL, about 0 when it releases it).

    A function that releases the GIL briefly and often reads as releasing here yet runs like a
    holder in threads, so the placement probe also asks :func:`thread_speedup`."""
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
    clock = _thread_clock(thread)
    solo_started = perf_counter()
    solo_rate = _spin(solo_started + 0.002, [False]) / max(perf_counter() - solo_started, 1e-9)
    before = _schedstat()
    cpu_before = time.thread_time()
    started = perf_counter()
    worker_before = _clock_seconds(clock)
    go.set()
    spins = _spin(started + _SPIN_CAP_S, done)
    worker_after = _clock_seconds(clock) if not done[0] else None  # still running: its share so far
    wall = max(perf_counter() - started, 1e-9)
    on_cpu = time.thread_time() - cpu_before
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
        # Short blocks are read as they are (no longer zeroed): on a loaded machine a pure-Python
        # function's hand-overs are short too (0.7-1.7 ms each, 0.5-0.8 blocked per CPU second
        # with the spinner on a third of a core), and zeroing them put it on threads.
    else:  # no scheduler statistics: the spinner's loss of speed, mapped to the same scale
        blocked = max(0.0, 1.0 - spins / wall / solo_rate) if solo_rate else 0.0
        blocked = blocked if blocked > 0.3 else 0.0
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result, max(0.0, blocked)


def thread_speedup(
    work: Callable[[list[Any]], ChunkResult], values: list[Any]
) -> tuple[ChunkResult, float, float]:
    """Run a third of ``values`` inline, then the rest in two threads at once; return the
    result, the threads' rate over the inline rate, and the time it all took.

    Two threads of a function that holds the GIL take turns (about 1x, less with the hand-overs);
    two of one that releases it run side by side (up to 2x with two free cores); one that
    releases the GIL briefly and often (a Python tokenizer ending in ``torch.tensor``) runs like
    a holder. The inline part is timed right before, so a machine whose load changes from one
    moment to the next is compared with itself."""
    cut = max(1, len(values) // 3)
    started = perf_counter()
    head = work(values[:cut])
    inline_s = perf_counter() - started
    rest = values[cut:]
    halves = [rest[: len(rest) // 2], rest[len(rest) // 2 :]]
    outcome: list[Any] = [None, None]
    ready = threading.Barrier(3)

    def target(i: int) -> None:
        ready.wait()
        try:
            outcome[i] = work(halves[i])
        except BaseException as exc:  # re-raised in the caller
            outcome[i] = exc

    threads = [
        threading.Thread(target=target, args=(i,), name=f"aioloader-thread-trial-{i}", daemon=True) for i in (0, 1)
    ]
    for thread in threads:
        thread.start()
    ready.wait()  # both threads exist: their start-up is not the function's
    trial_started = perf_counter()
    for thread in threads:
        thread.join()
    threads_s = perf_counter() - trial_started
    for part in outcome:
        if isinstance(part, BaseException):
            raise part
    speedup = (len(rest) / max(threads_s, 1e-9)) / (cut / max(inline_s, 1e-9))
    return _merge([head, *outcome]), speedup, perf_counter() - started


def processes_pay(work_s: float | None, start_s: float, workers: int) -> bool:
    """Whether ``workers`` processes pay for themselves on ``work_s`` seconds of inline work,
    ``start_s`` being what starting them costs (0 when they run already). ``work_s`` None: not
    known (an unsized stream), taken as long enough."""
    if work_s is None:
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    speedup = max(1.0, _PROCESS_EFFICIENCY * min(workers, cores))
    return work_s * (1.0 - 1.0 / speedup) > start_s


def place(
    cost_s: float,
    holds_gil: bool | None,
    picklable: bool,
    can_process: bool,
    reads_keys: bool = False,
    *,
    pays: bool = True,
) -> str:
    """The executor for a function costing ``cost_s`` per item: "inline", "thread" or "process".

    ``holds_gil`` None: not measured. ``pays``: processes would pay for their start-up
    (:func:`processes_pay`). A function that holds the GIL, or may, never goes to threads.

    ``reads_keys``: the stage's tasks carry keys and its workers read their own items
    (:mod:`aioloader._run.read_fusion`; ``cost_s`` is then ``fn``'s alone). Such a stage never
    runs inline, where its reads would block the loop. In processes it costs the parent nothing
    per item but the result's mapping, while threads share this process's GIL with the loop and
    each other, so a costly function goes to processes even when it releases the GIL (JPEG
    decode + resize on 2 cores: processes at 0.92-1.00 of the no-loader ceiling, threads 0.87)."""
    processes = picklable and can_process and (os.cpu_count() or 1) > 1
    if reads_keys:
        return "process" if processes and cost_s > THREAD_ABOVE_S else "thread"
    if cost_s < INLINE_BELOW_S:
        return "inline"
    if holds_gil is False:
        return "thread"
    if holds_gil and processes and pays:
        return "process"
    return "inline"


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
        pays: Callable[[float], bool] | None = None,
    ) -> None:
        """``reads``: the stage's :class:`~aioloader._run.read_fusion.NamedRead` when its work
        reads its own items; the reads' time is taken out of the cost. ``pays(cost_s)``:
        whether processes would pay for their start-up at that cost per item (default: yes)."""
        self._work = work
        self._can_process = can_process
        self._reads = reads
        self._pays = pays
        self.decision = "inline"
        self.cost_s = 0.0
        self.speedup: float | None = None  # two threads' rate over inline's
        self.blocked: float | None = None  # the spinner's blocked share
        self.decided = False
        self._costed = False
        self._times: list[float] = []  # the timed calls
        self._readings: list[tuple[float, float, float]] = []  # (seconds, speedup, blocked)
        self.pays: bool | None = None
        self.calls: list[Future[ChunkResult]] = []  # work still in a probe thread (see MapStage.drain)

    def _place(self, holds_gil: bool | None) -> str:
        # Pickling is checked only when processes would be chosen: the work may hold the whole
        # dataset (a read stage over a torch Dataset of 1M strings spent 0.28 s pickling it).
        reads_keys = self._reads is not None
        self.pays = None  # asked only where it decides: a function that may go to processes
        if holds_gil and not reads_keys and self.cost_s >= INLINE_BELOW_S:
            self.pays = True if self._pays is None else self._pays(self.cost_s)
        pays = self.pays is not False
        decision = place(self.cost_s, holds_gil, True, self._can_process, reads_keys, pays=pays)
        if decision == "process" and not is_picklable(self._work):
            decision = place(self.cost_s, holds_gil, False, self._can_process, reads_keys, pays=pays)
        return decision

    async def run(
        self, work: Callable[[list[Any]], ChunkResult], values: list[Any], timeout: float | None
    ) -> ChunkResult:
        """One block of the stage while it is being placed: the cost first, then readings,
        carried over from block to block until :attr:`decided` (a fused stage's block is one
        batch, too little for a reading alone; blocks are never held back to gather more)."""
        parts = []
        head = 0
        if not self._costed:
            # Items one by one: the first calls may pay a warm-up (torch's first ops on a
            # thread: 960 us, then 230 us, for a 90 us function, which sent it to threads or
            # processes at a third of its inline speed or less), so the cost is the lower
            # median of up to _COST_ITEMS calls, as many as fit in _COST_BUDGET_S (two at least).
            ends = perf_counter() + _COST_BUDGET_S
            while head < len(values) and not self._costed:
                read_before = self._read_seconds()
                parts.append(work(values[head : head + 1]))
                self._times.append(max(0.0, parts[-1][2] - (self._read_seconds() - read_before)))
                head += 1
                enough = len(self._times) >= _COST_ITEMS or perf_counter() > ends
                self._costed = len(self._times) >= 2 and enough
            times = sorted(self._times)
            self.cost_s = times[(len(times) - 1) // 2]  # the lower median: two calls give the smaller
            if self._costed and self.cost_s < INLINE_BELOW_S:  # too cheap to move
                self._decide()
        rest = values[head:]
        if self.decided or not self._costed:
            if rest:
                parts.append(work(rest))
            return _merge(parts)
        start = 0
        spent = 0.0
        while start < len(rest) and not self.decided and spent < PROBE_S:
            # two views of one question, both needed for threads: does the function block a
            # Python thread beside it (it holds the GIL), and do two threads of it go faster
            # than inline (one that lets go briefly and often does not)
            step = max(1, min(len(rest) // 4, int(PROBE_S / _PROBES / 2 / max(self.cost_s, 1e-9))))
            probed, gil = gil_blocked_fraction(work, rest[start : start + step])
            parts.append(probed)
            start += step
            pair = rest[start : start + max(3, step)]  # one value inline, two in threads at least
            start += len(pair)
            if len(pair) < 3:
                parts.append(work(pair))
                break
            probed, speedup, took = thread_speedup(work, pair)
            parts.append(probed)
            spent += took
            self._readings.append((took, speedup, gil))
            if sum(r[0] for r in self._readings) >= _PROBES * _MIN_PROBE_SWITCHES * sys.getswitchinterval():
                self._decide()
        if rest[start:]:
            call = _in_thread(work, rest[start:])
            self.calls.append(call)
            parts.append(await asyncio.wrap_future(call))
        return _merge(parts)

    def _decide(self) -> None:
        """Place the stage on what was measured (readings weighted by their length)."""
        holds_gil = None
        if self._readings and self.cost_s >= INLINE_BELOW_S:
            total = sum(took for took, _, _ in self._readings)
            self.speedup = sum(took * speedup for took, speedup, _ in self._readings) / total
            self.blocked = sum(took * gil for took, _, gil in self._readings) / total
            holds_gil = self.blocked > HOLDS_GIL_ABOVE or self.speedup < THREADS_PAY
        self.decision = self._place(holds_gil)
        self.decided = True

    def finish(self) -> str:
        """The decision, made now on what was measured if it was not made yet."""
        if not self.decided:
            self._decide()
        return self.decision

    @property
    def costed(self) -> bool:
        """The cost per item is measured (:attr:`cost_s` is final)."""
        return self._costed

    @property
    def readings(self) -> int:
        return len(self._readings)

    def _read_seconds(self) -> float:
        return 0.0 if self._reads is None else self._reads.seconds_here()

    def describe(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "cost_us": round(self.cost_s * 1e6, 1),
            "threads_speedup": None if self.speedup is None else round(self.speedup, 2),
            "gil_blocked": None if self.blocked is None else round(self.blocked, 2),
            "readings": self.readings,
            "processes_pay": self.pays,
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


GAIN = 0.03  # a step must raise samples/s by more than this fraction to be kept
WINDOW_TICKS = 2  # timeline ticks per measurement window
HOLD_WINDOWS = 8  # windows to stay put after the climb settles
MEMORY_BUDGET = 0.8  # of the memory available when the run started


class _Climb:
    """Hill-climbing state of one stage."""

    def __init__(self, stage: Any, limit: int, maximum: int) -> None:
        self.stage = stage
        self.limit = limit
        self.maximum = maximum
        self.base_depth = stage.output.capacity
        self.direction = 1
        self.previous: int | None = None  # the limit before the step being judged
        self.best: float | None = None
        self.turns = 0
        self.hold = 0
        self.history: list[int] = [limit]


class Tuner:
    """``concurrency="auto"``: hill-climbs the in-flight limit of the map stages named in
    ``tuned`` on the run's delivered samples/s. Driven by the run's timeline ticks."""

    def __init__(self, run: Any, tuned: set[str], pids: Callable[[], list[int]]) -> None:
        self._run = run
        self._tuned = tuned
        self._pids = pids
        self._climbs: list[_Climb] = []
        self._turn = 0
        self._ticks = 0
        self._samples = 0
        self._elapsed = 0.0
        self._cores = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
        self._memory_budget = MEMORY_BUDGET * psutil.virtual_memory().available
        self._cpu_mark: tuple[float, float] | None = None

    def prepare(self) -> None:
        """Before the stages start: size their pools for the budget, the limit starts low."""
        for stage in self._run.stages:
            if stage.name in self._tuned and hasattr(stage, "enable_tuning"):
                maximum = 2 * self._cores
                stage.enable_tuning(maximum)
                self._climbs.append(_Climb(stage, stage.concurrency_limit, maximum))

    def tick(self, dt: float) -> None:
        """One timeline tick: accumulate; at the end of a window, judge and step."""
        self._ticks += 1
        self._elapsed += dt
        if self._ticks % WINDOW_TICKS or not self._climbs:
            return
        samples = self._run.samples
        rate = (samples - self._samples) / max(self._elapsed, 1e-9)
        self._samples, self._elapsed = samples, 0.0
        climb = self._climbs[self._turn % len(self._climbs)]
        if not getattr(climb.stage, "tunable", False):  # not running concurrently (yet)
            return
        if self._over_memory():
            self._apply(climb, max(1, climb.limit - 1))
            climb.stage.output.capacity = climb.base_depth
            climb.previous, climb.best = None, None
            return
        self._step(climb, rate)

    def _step(self, climb: _Climb, rate: float) -> None:
        if climb.hold:
            climb.hold -= 1
            if not climb.hold:
                climb.best, climb.turns, climb.direction = None, 0, 1
            return
        if climb.previous is not None and climb.best is not None:
            if rate > climb.best * (1 + GAIN):  # the step helped: keep going
                climb.best = rate
            else:  # it did not: go back and turn
                self._apply(climb, climb.previous)
                self._reverse(climb)
                return
        else:
            climb.best = rate if climb.best is None else max(climb.best, rate)
        target = climb.limit + climb.direction
        if target < 1 or target > climb.maximum or (climb.direction > 0 and self._cpu_full()):
            self._reverse(climb)
            return
        climb.previous = climb.limit
        self._apply(climb, target)

    def _reverse(self, climb: _Climb) -> None:
        """Turn the climb around; after two turns without a gain, hold for a while."""
        climb.direction = -climb.direction
        climb.turns += 1
        climb.previous = None
        if climb.turns >= 2:
            climb.hold = HOLD_WINDOWS
            self._turn += 1

    def _apply(self, climb: _Climb, limit: int) -> None:
        climb.limit = limit
        climb.stage.set_concurrency_limit(limit)
        climb.stage.output.capacity = max(climb.base_depth, limit)
        climb.history.append(limit)
        del climb.history[:-32]

    def _cpu_full(self) -> bool:
        """The loader's processes already keep every core busy (over the last window)."""
        cpu = 0.0
        for pid in self._pids():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            cpu += times.user + times.system
        now = perf_counter()
        mark, self._cpu_mark = self._cpu_mark, (now, cpu)
        if mark is None:
            return False
        return (cpu - mark[1]) / max(now - mark[0], 1e-9) >= 0.95 * self._cores

    def _over_memory(self) -> bool:
        rss = 0
        for pid in self._pids():
            try:
                rss += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        return rss > self._memory_budget

    def describe(self) -> dict[str, Any]:
        return {
            c.stage.name: {
                "concurrency": c.limit,
                "queue_depth": c.stage.output.capacity,
                "history": c.history,
            }
            for c in self._climbs
        }
