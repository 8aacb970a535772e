"""Executor placement for ``executor="auto"``: where a map stage runs, and the adjustable
in-flight limit of ``concurrency="auto"`` (:class:`Limiter`, driven by
:class:`aioloader.monitor.autotune.Tuner`).

**Placement.** :class:`PlacementProbe` stands in for the executor on a stage's first blocks. It
times a few items inline (the lower median: a warm-up does not count). A function cheaper than
:data:`INLINE_BELOW_S` per item stays inline (a hand-off costs more than the work). One cheaper
than :data:`TRIAL_ABOVE_S` is not tried in threads (their hand-offs would eat the gain, and
processes take a function whether or not it holds the GIL). Otherwise :func:`thread_trial` runs
a few ms of items in two threads at once, :data:`READINGS` times or more, and reads whether
the GIL was let go from whether the two threads were ever inside the function together and
how often a watching thread found the GIL held: spans and counts, not rates, so a loaded
machine does not read as the GIL (nor the GIL as a loaded machine). Threads when the trials,
pooled, say it lets go (:func:`lets_go_of_gil`). Otherwise processes when they pay
(:func:`processes_pay`): the speedup expected from the workers, net of pickling each value and
result (:func:`transfer_cost`), over :data:`PROCESSES_PAY`, and the saving on the next epochs
over their start-up; inline else (threads only for a costly function processes cannot take,
see :func:`place`). The map stage places a stage again when its measured rate says the decision
was wrong (``MapStage.check_placement``). Every value runs once; every result is kept.
:func:`gil_blocked_fraction` (the share of looks at the GIL that find it held, one thread)
is a diagnostic.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from time import perf_counter
from typing import Any, NamedTuple

from aioloader._spec import is_picklable

__all__ = [
    "INLINE_BELOW_S",
    "THREAD_ABOVE_S",
    "TRIAL_ABOVE_S",
    "Limiter",
    "PlacementProbe",
    "gil_blocked_fraction",
    "lets_go_of_gil",
    "place",
    "process_speedup",
    "processes_pay",
    "thread_trial",
    "transfer_cost",
]

# per item: cheaper than a hand-off (a process task of 1024 values of 3 us pays ~0.1 us each)
INLINE_BELOW_S = 3e-6
THREAD_ABOVE_S = 200e-6  # per item: slower than this blocks the loop too long; leave it
TRIAL_ABOVE_S = 100e-6  # per item: threads are tried above this cost only
READING_S = 0.005  # work per thread in one thread trial
READINGS = 3  # thread trials per placement, pooled
_TRIAL_SWITCH_S = 0.2  # the GIL's switch interval during a trial: longer than a trial
_LOOK_S = 0.0005  # how long the trial's observer sleeps between looks at the GIL
# the share of a thread's time in the function spent while the other was in it too, over which
# the GIL was let go (a holder's is about 0)
_MIN_OVERLAP = 0.3
_HELD_SHARE = 0.25  # of the looks finding the GIL held, from which a function holds it (a
# loaded machine frees it between holders: a hand-over waits for a core; 4 of 9 looks found it
# free for a pure-Python loop that lets go briefly 20 times a value)
_MIN_LOOKS = 3  # looks wanted before deciding (up to twice READINGS trials)
PROCESSES_PAY = 1.25  # expected process rate over inline that may put a stage on processes
PROCESS_EFFICIENCY = 0.8  # of the workers' cores a process pool delivers (parent, hand-offs)
# starting a pool: forked workers, or fresh interpreters that import torch
FORK_START_S = 0.05
SPAWN_START_S = 2.0
_COST_ITEMS = 8  # the cost of an item is the median of this many calls, at most
_COST_BUDGET_S = 0.005  # ... or of as many as fit in this time
_COST_MIN_CALLS = 4  # ... but at least this many (the lower median leaves out two warm-ups)
_STATUS = "/proc/thread-self/status"

ChunkResult = tuple[list[Any], list[tuple[int, BaseException]], float]


# -- placement ---------------------------------------------------------------------------------
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


def _watch_gil(inside: Callable[[], bool], running: Callable[[], bool]) -> tuple[int, int]:
    """Look at the GIL while ``running()``: sleep :data:`_LOOK_S`, and on waking (which needs
    the GIL) count a look if ``inside()`` held when the sleep began, held if this thread waited
    for the GIL (a voluntary context switch beyond the sleep's; a wait that lasted until the
    work ended counts: the GIL was not let go meanwhile). Returns (looks, held)."""
    looks = held = 0
    while running():
        counts = inside()
        slept = _voluntary_switches()
        time.sleep(_LOOK_S)
        if counts:
            looks += 1
            held += _voluntary_switches() - slept > 1
    return looks, held


def gil_blocked_fraction(
    work: Callable[[list[Any]], ChunkResult], values: list[Any]
) -> tuple[ChunkResult, float]:
    """Run ``work(values)`` in a thread while this thread looks at the GIL (:func:`_watch_gil`);
    return its result and the share of the looks that found the GIL held (about 1 when
    ``work`` holds the GIL, about 0 when it releases it). A diagnostic: placement reads
    :func:`thread_trial`, which also tells a function that lets go of the GIL briefly and often.
    Off Linux (no context-switch counts) it reads 0."""
    outcome: list[Any] = []
    go = threading.Event()

    def target() -> None:
        go.wait()
        try:
            outcome.append(work(values))
        except BaseException as exc:  # re-raised in the caller
            outcome.append(exc)

    thread = threading.Thread(target=target, name="aioloader-gil-probe", daemon=True)
    thread.start()  # started before the looks: a thread's start-up is not the function's
    go.set()
    looks, held = _watch_gil(thread.is_alive, thread.is_alive)
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result, held / looks if looks else 0.0


class Trial(NamedTuple):
    """What one :func:`thread_trial` saw: seconds both threads were inside the function at
    once, seconds the less busy one was inside it, and how many times the calling thread
    looked for the GIL and how many of those it found it held."""

    together_s: float
    inside_s: float
    looks: int
    held: int


def lets_go_of_gil(trials: list[Trial]) -> bool | None:
    """Whether ``trials``, pooled, say the function lets go of the GIL for most of its time:
    its two threads were inside it at once more than :data:`_MIN_OVERLAP` of their time, and
    the GIL was found held in less than :data:`_HELD_SHARE` of the looks (if any). None:
    nothing ran."""
    inside = sum(t.inside_s for t in trials)
    if inside <= 0:
        return None
    looks = sum(t.looks for t in trials)
    held = sum(t.held for t in trials)
    # no look (the watcher woke only after the threads ended: a loaded machine): overlap alone
    seen_free = not looks or held < _HELD_SHARE * looks
    return sum(t.together_s for t in trials) > _MIN_OVERLAP * inside and seen_free


def thread_trial(
    work: Callable[[list[Any]], ChunkResult], values: list[Any]
) -> tuple[ChunkResult, Trial]:
    """Run ``values`` split between two threads started together, with the GIL's switch
    interval raised to :data:`_TRIAL_SWITCH_S`; return the result and what was seen (read by
    :func:`lets_go_of_gil`). Two readings, both counts or spans rather than rates, so a loaded
    machine does not read as the GIL (nor the GIL as a loaded machine):

    - With that interval no thread is made to hand the GIL over: it passes only when its
      holder lets go. So the two threads are inside the function at once (the spans of their
      values overlap) only if it lets go: a function that holds the GIL runs one thread's
      values, then the other's, however loaded the machine (a thread preempted while it holds
      the GIL keeps the other waiting).
    - One that lets go briefly and often (a tokenizer ending in ``torch.tensor``) overlaps
      too. So this thread sleeps :data:`_LOOK_S` at a time meanwhile; on waking it needs the
      GIL, and when a worker holds it, it waits: a voluntary context switch more than the
      sleep's. The share of such looks is about the share of time the GIL is held (that
      tokenizer: nearly all; hashing, decoding, sleeping: a few)."""
    halves = [values[: len(values) // 2], values[len(values) // 2 :]]
    outcome: list[Any] = [[], []]
    spans: list[list[tuple[float, float]]] = [[], []]  # (start, end) of each value, per thread
    ready = threading.Barrier(3)

    def target(i: int) -> None:
        ready.wait()
        try:
            for index in range(len(halves[i])):  # one by one: each value's span
                started = perf_counter()
                outcome[i].append(work(halves[i][index : index + 1]))
                spans[i].append((started, perf_counter()))
        except BaseException as exc:  # re-raised in the caller
            outcome[i] = exc

    threads = [
        threading.Thread(target=target, args=(i,), name=f"aioloader-thread-trial-{i}", daemon=True)
        for i in (0, 1)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(max(interval, _TRIAL_SWITCH_S))
    try:
        for thread in threads:
            thread.start()
        ready.wait()
        looks, held = _watch_gil(
            lambda: all(t.is_alive() for t in threads),  # both inside: a look counts
            lambda: any(t.is_alive() for t in threads),
        )
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    for part in outcome:
        if isinstance(part, BaseException):
            raise part
    together = _overlap(spans[0], spans[1])
    inside = min(sum(end - start for start, end in spans[i]) for i in (0, 1))
    return _merge([*outcome[0], *outcome[1]]), Trial(together, inside, looks, held)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds both of two sorted lists of disjoint spans cover."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def transfer_cost(values: list[Any], results: list[Any]) -> float:
    """Seconds per value that pickling ``values`` for a worker process and its ``results`` back
    costs, as the process pool does (arrays and CPU tensors out of band: their bytes are not
    copied here); inf when they cannot be pickled."""
    from aioloader.workers import shm, wire  # here: the workers import the stages, which import this

    try:
        started = perf_counter()
        wire.pack(values)
        shm.check_packable(results)
        spent = perf_counter() - started
    except Exception:
        return math.inf
    return spent / max(1, len(values))


def process_speedup(cost_s: float, transfer_s: float, workers: int) -> float:
    """What ``workers`` processes are expected to run at over inline, for a function of
    ``cost_s`` per value whose value and result cost ``transfer_s`` to pickle."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parallel = PROCESS_EFFICIENCY * min(workers, cores)
    return parallel * cost_s / max(cost_s + transfer_s, 1e-12)


def processes_pay(work_s: float | None, start_s: float, speedup: float) -> bool:
    """Whether processes running at ``speedup`` over inline pay on ``work_s`` seconds of inline
    work (an epoch's), starting them costing ``start_s`` (0 when they run already). ``work_s``
    None: not known (an unsized stream), taken as long enough."""
    if speedup < PROCESSES_PAY:
        return False
    return work_s is None or work_s * (1.0 - 1.0 / speedup) > start_s


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

    ``holds_gil``: two threads of it run no faster than inline (True; also a function cheaper
    than :data:`TRIAL_ABOVE_S`, where threads are not tried), faster (False), or not measured
    (None: too little work to try threads; placed by cost). ``pays``: processes would pay for
    their start-up and for pickling each value and result (:func:`processes_pay`). A function
    that holds the GIL goes to processes when they pay and can take it, else it stays inline,
    unless processes cannot take it at all and an item blocks the loop longer than
    :data:`THREAD_ABOVE_S` (a thread then keeps the loop responsive).

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
    if holds_gil is None:  # not measured (too little work to try threads): by cost only
        return "thread" if cost_s > THREAD_ABOVE_S else "inline"
    if not holds_gil:
        return "thread"
    if processes and pays:
        return "process"
    # processes cannot take it at all: a thread keeps the loop responsive to a costly item
    return "thread" if not processes and cost_s > THREAD_ABOVE_S else "inline"


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
    """An executor for a stage's first blocks that measures the function and decides where the
    stage runs next (``decision``, with ``cost_s``, the trials and ``pays`` for the record).

    It is fed block by block (:meth:`run`) until :attr:`decided`: the cost first (the lower
    median of a few calls), then, for a function of :data:`TRIAL_ABOVE_S` or more, thread trials
    (:func:`thread_trial`) until :data:`READINGS` of them are taken; threads only when, pooled,
    they say the GIL is let go (:func:`lets_go_of_gil`). Every value runs exactly once and every result is kept in order,
    whatever was measured."""

    kind = "auto"
    workers = 1

    def __init__(
        self,
        work: Any,
        *,
        can_process: bool,
        reads: Any = None,
        pays: Callable[[float, float], bool] | None = None,
    ) -> None:
        """``reads``: the stage's :class:`~aioloader._run.read_fusion.NamedRead` when its work
        reads its own items; the reads' time is taken out of the cost. ``pays(cost_s,
        transfer_s)``: whether processes would pay at that cost and pickling cost per value
        (default: :func:`processes_pay` on an epoch of unknown length, with 2 workers)."""
        self._work = work
        self._can_process = can_process
        self._reads = reads
        self._pays = pays
        self.decision = "inline"
        self.decided = False
        self.cost_s = 0.0
        self.transfer_s: float | None = None
        self.pays: bool | None = None
        self._times: list[float] = []
        self._costed = False
        self._readings: list[Trial] = []
        self.calls: list[Future[ChunkResult]] = []  # work still in a probe thread (see MapStage.drain)

    @property
    def wanted(self) -> int:
        """Values the next block should hold for the next measurement (0 once decided)."""
        if self.decided:
            return 0
        if not self._costed:
            return 1
        return 2 * self._per_thread()

    def _per_thread(self) -> int:
        return max(1, math.ceil(READING_S / max(self.cost_s, 1e-9)))

    async def run(
        self, work: Callable[[list[Any]], ChunkResult], values: list[Any], timeout: float | None
    ) -> ChunkResult:
        parts = []
        head = 0
        if not self._costed:
            # Items one by one: the first calls may pay a warm-up (torch's first ops on a
            # thread: 960 us, then 230 us, for a 90 us function, which sent it to threads or
            # processes at a third of its inline speed or less), so the cost is the lower
            # median of up to _COST_ITEMS calls, as many as fit in _COST_BUDGET_S (at least
            # _COST_MIN_CALLS, from the next blocks if need be: a fused stage's value is a batch,
            # whose first collates pay torch's warm-up).
            ends = perf_counter() + _COST_BUDGET_S
            while head < len(values) and not self._costed:
                read_before = self._read_seconds()
                parts.append(work(values[head : head + 1]))
                self._times.append(max(0.0, parts[-1][2] - (self._read_seconds() - read_before)))
                head += 1
                enough = len(self._times) >= _COST_ITEMS or perf_counter() > ends
                self._costed = len(self._times) >= _COST_MIN_CALLS and enough
            times = sorted(self._times)
            self.cost_s = times[(len(times) - 1) // 2]  # the lower median: two calls give the smaller
            costed = _merge(parts)
            if head and not costed[1]:  # pickled as a task of them would be; twice, the first warms up
                transfer = min(transfer_cost(values[:head], costed[0]) for _ in range(2))
                self.transfer_s = min(transfer, self.transfer_s or math.inf)
            if self._costed and self.cost_s < TRIAL_ABOVE_S:
                # Threads are not tried: a value is too cheap for their hand-off, and
                # processes take a function whether or not it holds the GIL.
                self._decide()
        rest = values[head:]
        if self.decided or not self._costed:
            if len(rest):  # rest may be an array
                parts.append(work(rest))
            return _merge(parts)
        start = 0
        while len(rest) - start >= 2 and not self.decided:
            step = min(2 * self._per_thread(), len(rest) - start)
            probed, trial = thread_trial(work, rest[start : start + step])
            parts.append(probed)
            self._readings.append(trial)
            start += step
            looks = sum(t.looks for t in self._readings)
            # a loaded machine may wake the watcher too late for a look: a few more trials
            if len(self._readings) >= READINGS and (looks >= _MIN_LOOKS or len(self._readings) >= 2 * READINGS):
                self._decide()
        if start < len(rest):
            if self.decided:  # the rest in a thread: the loop is not held while it runs
                call = _in_thread(work, rest[start:])
                self.calls.append(call)
                parts.append(await asyncio.wrap_future(call))
            else:  # too few for a trial: with the next block
                parts.append(work(rest[start:]))
        return _merge(parts)

    def finish(self) -> str:
        """The decision, made now on what was measured if it was not made yet (the input ended
        or the stage stopped probing)."""
        if not self.decided:
            self._decide()
        return self.decision

    def _decide(self) -> None:
        holds_gil = None
        lets_go = lets_go_of_gil(self._readings)
        if lets_go is not None:
            holds_gil = not lets_go
        elif self._costed and self.cost_s < TRIAL_ABOVE_S:
            holds_gil = True  # not tried: taken as holding (processes take either kind)
        self.decision = self._place(holds_gil)
        self.decided = True

    def _place(self, holds_gil: bool | None) -> str:
        reads_keys = self._reads is not None
        if reads_keys or self.cost_s < INLINE_BELOW_S or not holds_gil:
            return place(self.cost_s, holds_gil, True, self._can_process, reads_keys)
        transfer = math.inf if self.transfer_s is None else self.transfer_s
        if self._pays is not None:
            # the least call: a warm-up or a busy moment must not make processes look paying
            self.pays = self._pays(min(self._times), transfer)
        else:
            self.pays = processes_pay(None, 0.0, process_speedup(min(self._times), transfer, 2))
        decision = place(self.cost_s, holds_gil, True, self._can_process, pays=self.pays)
        # Pickling is checked only when processes would be chosen: the work may hold the whole
        # dataset (a read stage over a torch Dataset of 1M strings spent 0.28 s pickling it).
        if decision == "process" and not is_picklable(self._work):
            decision = place(self.cost_s, holds_gil, False, self._can_process, pays=self.pays)
        return decision

    def _read_seconds(self) -> float:
        return 0.0 if self._reads is None else self._reads.seconds_here()

    def _held(self) -> str | None:
        """Looks at the GIL that found it held, of all (the thread trials')."""
        if not self._readings:
            return None
        return f"{sum(t.held for t in self._readings)}/{sum(t.looks for t in self._readings)}"

    def describe(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "cost_us": round(self.cost_s * 1e6, 1),
            "thread_trials": len(self._readings),
            "gil_held": self._held(),
            "transfer_us": None
            if self.transfer_s is None or math.isinf(self.transfer_s)
            else round(self.transfer_s * 1e6, 2),
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
