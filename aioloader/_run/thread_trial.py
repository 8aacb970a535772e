"""Whether a function holds the GIL, read from whole runs: the GIL reading of ``executor="auto"``.

:func:`thread_trial` runs a stage's work on the probe's inputs in one thread and split over two,
a few times (each one-thread run at least :data:`TRIAL_S` of work, the order alternated so a
change of load hits both kinds), and takes the medians of three readings per trial:

- the cores the two threads used at once (their CPU seconds over the run's wall time): at least
  :data:`THREADS_PAY_ABOVE` is impossible for a function that holds the GIL, whatever the load;
- the share of one thread's time asleep: a function that waits on I/O or sleeps (threads
  overlap those waits);
- two threads' speedup over one, with their seconds asleep per CPU second less one thread's (a
  thread waiting for the GIL sleeps): on a machine busy enough that two threads never get two
  cores at once, a function that ran faster in two threads without waiting on each other.
  Trusted only when the one-thread run had most of a core: on a starved machine the wall times
  vary by several times from run to run, and a holder read as a releaser would go to threads.

A function that none of these shows releasing the GIL is read as holding it: where threads were
not seen to help, they are not used (processes or inline instead, see
:func:`aioloader._run.placement.place`).

The runs are measurements only: their results are dropped and the global RNGs (``random``,
numpy's, torch's CPU generator) are put back as they were, so what the stage gives is the same
whether it was probed or not. (Earlier readings from a spinning thread's blocked time misread a
1 ms sleeper and sha256 on a quiet 2-core machine, and one speedup value per trial misread
sha256: see the reverts 9388d8a and 5dfcd9c.)
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

__all__ = [
    "HOLDS_GIL_WAITING",
    "THREADS_PAY_ABOVE",
    "TRIALS",
    "TRIAL_S",
    "ThreadTrial",
    "own_clock",
    "thread_trial",
]

TRIAL_S = 0.025  # one thread's run of a trial: long enough that a thread start or a tick is noise
TRIALS = 3  # runs of each kind; the median ratio is the reading
# seconds asleep per CPU second in two threads, less in one, from which a function that two
# threads ran faster is still read as holding the GIL (a holder on a quiet machine: about 1, each
# thread sleeps while the other runs; loaded: 0.2-0.8; a releaser: about 0)
HOLDS_GIL_WAITING = 0.1
THREADS_PAY_ABOVE = 1.3  # two threads this much faster (or this many cores busy at once)
_SWITCH_S = 0.1  # the GIL's switch interval during a trial's runs
_SERVED = 0.6  # share of one thread's time on a core below which the machine is too busy to time
_IO_BOUND = 0.5  # share of one thread's time asleep: the function waits on I/O (or sleeps)
_BUDGET_S = 0.4  # fewer trials when TRIALS of them would take longer (a costly function)
_SCHEDSTAT = "/proc/thread-self/schedstat"
_MAX_ITEMS = 50_000  # items in a run, whatever the cost (a cheap function is placed before this)


class ThreadTrial:
    """The outcome of :func:`thread_trial`: ``holds_gil``, the median readings it came from
    (``speedup``: two threads' speed over one's; ``waits``: the share of two threads' time
    spent asleep less one thread's, None off Linux), the items per run and the per-item cost
    measured in one thread (the fastest run's)."""

    __slots__ = ("cost_s", "holds_gil", "items", "parallel", "served", "speedup", "waits")

    def __init__(
        self, holds_gil: bool, speedup: float, waits: float | None, items: int, cost_s: float
    ) -> None:
        self.holds_gil = holds_gil
        self.speedup = speedup
        self.waits = waits
        self.items = items
        self.cost_s = cost_s
        self.parallel: float | None = None
        self.served: float | None = None


def _rng_states() -> tuple[Any, ...]:
    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    return (
        random.getstate(),
        None if np is None else np.random.get_state(),
        None if torch is None else torch.default_generator.get_state(),
    )


def _restore(states: tuple[Any, ...]) -> None:
    py, np_state, torch_state = states
    random.setstate(py)
    if np_state is not None:
        sys.modules["numpy"].random.set_state(np_state)
    if torch_state is not None:
        sys.modules["torch"].default_generator.set_state(torch_state)


def _run_delay() -> float | None:
    """Seconds the calling thread has waited runnable for a core (Linux), or None."""
    try:
        with open(_SCHEDSTAT) as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def own_clock() -> float:
    """Seconds (of an arbitrary origin) that count this thread's time on a core and asleep, not
    its waits for a core: what a function costs whatever the machine's load (wall time off
    Linux)."""
    return perf_counter() - (_run_delay() or 0.0)


class _Run:
    """One timed run of ``work`` over parts, a thread each: its wall time, the threads' CPU
    seconds, and their seconds asleep (neither on a core nor waiting for one; None off Linux)."""

    __slots__ = ("asleep", "cpu", "wall")

    def __init__(self, wall: float, cpu: float, asleep: float | None) -> None:
        self.wall = wall
        self.cpu = cpu
        self.asleep = asleep


def _timed_threads(work: Callable[[list[Any]], Any], parts: list[list[Any]]) -> _Run:
    """``work`` on each part, each in a thread of its own, from one start (thread start-up left
    out) to the end of the last."""
    go = threading.Event()
    ready = threading.Semaphore(0)
    ends: list[float] = []
    cpus: list[float] = []
    asleep: list[float | None] = []

    def target(part: list[Any]) -> None:
        # read before the start: a thread kept waiting for the GIL from the start (by one that
        # holds it) sleeps from there
        cpu, delay = time.thread_time(), _run_delay()
        ready.release()
        go.wait()
        try:
            work(part)
        except BaseException:  # a failure is the stage's to report, from its real run
            pass
        end, used, delay_after = perf_counter(), time.thread_time() - cpu, _run_delay()
        ends.append(end)
        cpus.append(used)
        waited = None if delay is None or delay_after is None else delay_after - delay
        asleep.append(None if waited is None else max(0.0, end - started[0] - used - waited))

    threads = [
        threading.Thread(target=target, args=(part,), name="aioloader-probe-trial", daemon=True)
        for part in parts
    ]
    started = [0.0]
    switch = sys.getswitchinterval()
    # A long switch interval: a thread waiting for the GIL sleeps until the holder lets go
    # rather than waking every 5 ms to ask for it (a wake-up that, on a busy machine, waits
    # for a core and so reads as waiting for a core, not for the GIL).
    sys.setswitchinterval(_SWITCH_S)
    try:
        for thread in threads:
            thread.start()
        for _ in threads:  # each thread has read its clocks and waits for the start
            ready.acquire()
        started[0] = perf_counter()
        go.set()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    slept = None if None in asleep else sum(a for a in asleep if a is not None)
    return _Run(max(max(ends, default=started[0]) - started[0], 1e-9), sum(cpus), slept)


def _cycled(values: list[Any], n: int) -> list[Any]:
    """``n`` items: ``values`` repeated as often as needed."""
    return [values[i % len(values)] for i in range(n)]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def thread_trial(work: Callable[[list[Any]], Any], values: list[Any], cost_s: float) -> ThreadTrial:
    """Whether ``work`` holds the GIL, from runs over ``values`` (repeated to fill a trial) in
    one thread and in two, given an estimated ``cost_s`` per item. ``work`` takes a list of
    items; exceptions it raises are ignored here (the stage's own run reports them)."""
    if not values:
        return ThreadTrial(False, 1.0, None, 0, cost_s)
    states = _rng_states()
    try:
        # A calibration run first: it warms the function up in a fresh thread (torch's first ops
        # there cost several times their later price) and measures the cost the trials are cut to.
        n = min(_MAX_ITEMS, max(2, math.ceil(TRIAL_S / 4 / max(cost_s, 1e-9))))
        # CPU seconds, not wall: a machine too busy to give this thread its core must not
        # shorten the trials
        cost_s = _timed_threads(work, [_cycled(values, n)]).cpu / n
        n = min(_MAX_ITEMS, max(2, math.ceil(TRIAL_S / max(cost_s, 1e-9))))
        items = _cycled(values, n)
        halves = [items[: n // 2], items[n // 2 :]]
        trials = max(1, min(TRIALS, int(_BUDGET_S / (1.5 * n * cost_s))))
        ones: list[_Run] = []
        twos: list[_Run] = []
        for trial in range(trials):
            if trial % 2 == 0:
                ones.append(_timed_threads(work, [items]))
                twos.append(_timed_threads(work, halves))
            else:
                twos.append(_timed_threads(work, halves))
                ones.append(_timed_threads(work, [items]))
    finally:
        _restore(states)
    speedup = _median([one.wall / two.wall for one, two in zip(ones, twos, strict=True)])
    parallel = _median([two.cpu / two.wall for two in twos])  # cores used at once by two threads
    fastest = min(one.cpu for one in ones) / n
    if any(run.asleep is None for run in (*ones, *twos)):  # off Linux: the speedup alone
        return ThreadTrial(speedup < THREADS_PAY_ABOVE, speedup, None, n, fastest)
    waits = _median(
        [
            two.asleep / max(two.cpu, 1e-9) - one.asleep / max(one.cpu, 1e-9)
            for one, two in zip(ones, twos, strict=True)
        ]
    )
    io_bound = _median([one.asleep / one.wall for one in ones]) > _IO_BOUND  # type: ignore[operator]
    share = _median([one.cpu / one.wall for one in ones])
    served = share >= _SERVED  # one thread had most of its core
    releases = (
        io_bound  # waits on I/O or sleeps: threads overlap those whatever the GIL does
        or parallel >= THREADS_PAY_ABOVE  # two threads on two cores at once: never a holder
        # faster, with no more time asleep per CPU second in two threads than in one (a thread
        # waiting for the GIL sleeps), where one thread was not kept off the cores (then no
        # speedup means anything, and a holder is better not put on threads)
        or (served and speedup >= THREADS_PAY_ABOVE and waits < HOLDS_GIL_WAITING)
    )
    trial = ThreadTrial(not releases, speedup, waits, n, fastest)
    trial.parallel, trial.served = parallel, share
    return trial
