"""Whether a function holds the GIL, read from whole runs: the GIL reading of ``executor="auto"``.

:func:`thread_trial` runs a stage's work on the probe's inputs in one thread and split over two,
a few times (each one-thread run at least :data:`TRIAL_S` of CPU work, the order alternated so a
change of load hits both kinds), and takes medians of two readings:

- the cores the two threads used at once (their CPU seconds over the run's wall time) and
  their speedup over one thread: both at least :data:`THREADS_PAY_ABOVE`. The cores are
  impossible for a function that holds the GIL, whatever the load; the speedup rules out threads
  that only burn CPU fighting over a GIL let go and taken back often (the tokenizer of issue 23:
  1.2 cores, 0.6-1.0x one thread's speed);
- the share of one thread's time asleep (neither on a core nor waiting for one): above half, the
  function waits on I/O or sleeps, and threads overlap those waits.

Three trials stop after two when the third could not change the outcome (:func:`_settled`):
the runs' results are thrown away while the stage waits, so each run the outcome does not need
is start-up time (a GIL holder's trial took 0.3-0.45 s of a 1-2 s first epoch on a loaded
2-core machine).

A function that neither shows releasing the GIL is read as holding it: where threads were not
seen to help, they are not used (processes or inline, see :func:`aioloader._run.placement.place`).
The mistakes are not alike: a holder on threads ran at 0.37x inline (the tokenizer of issue 23),
a releaser in processes runs about as fast as in threads. So the speedup alone, which a busy
machine blurs, never sends a function to threads: it read 0.4x-6x for a pure-Python loop where
this session's threads shared under one core (load 10-12 on 2 cores), where a thread's time
asleep waiting for the GIL also turns into time waiting for a core. On such a machine a
releaser shows no parallelism either and goes where a holder would; given two cores, sha256
reads 1.9-2.0 cores and 1.9-2.0x.

The runs are measurements only: their results are dropped and the global RNGs (``random``,
numpy's, torch's CPU generator) are put back as they were, so what the stage gives is the same
whether it was probed or not. (Earlier readings, from a spinning thread's blocked time and from
one speedup value per trial, misread a 1 ms sleeper and sha256 on a quiet 2-core machine: see
the reverts 9388d8a and 5dfcd9c.)
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

__all__ = ["THREADS_PAY_ABOVE", "TRIALS", "TRIAL_S", "ThreadTrial", "own_clock", "thread_trial"]

TRIAL_S = 0.025  # one thread's run of a trial: long enough that a thread start or a tick is noise
TRIALS = 3  # runs of each kind; the readings are medians over them
THREADS_PAY_ABOVE = 1.3  # cores two threads use at once, and their speedup, that mean threads pay
_IO_BOUND = 0.5  # share of one thread's time asleep: the function waits on I/O (or sleeps)
_BUDGET_S = 0.4  # fewer trials when TRIALS of them would take longer (a costly function)
_SCHEDSTAT = "/proc/thread-self/schedstat"
_CLOCK_TRIES = 4  # readings of own_clock's wait (one is taken off its core only on a busy machine)
_MAX_ITEMS = 50_000  # items in a run, whatever the cost (a cheap function is placed before this)


class ThreadTrial:
    """The outcome of :func:`thread_trial`: ``holds_gil``, the median readings it came from
    (``parallel``: the cores two threads used at once; ``served``: the share of a core one
    thread had; ``speedup``: two threads' speed over one's, for the record), the items per run,
    the per-item CPU cost measured in one thread (the fastest run's) and ``trials``, the pairs
    of runs made."""

    __slots__ = ("cost_s", "holds_gil", "items", "parallel", "served", "speedup", "trials")

    def __init__(self, holds_gil: bool, speedup: float, items: int, cost_s: float) -> None:
        self.holds_gil = holds_gil
        self.speedup = speedup
        self.items = items
        self.cost_s = cost_s
        self.parallel: float | None = None
        self.served: float | None = None
        self.trials = 0  # pairs of runs (one thread, two) the readings came from


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


def _wall_and_wait() -> tuple[float, float | None]:
    """The wall clock and :func:`_run_delay`, read together: the wait is read on both sides of
    the wall clock until the two readings agree. A thread taken off its core between the wall
    clock and a single reading of the wait would count that wait in one and not the other
    (milliseconds on a busy machine, more than a whole item's cost)."""
    delay = _run_delay()
    for _ in range(_CLOCK_TRIES):
        now = perf_counter()
        after = _run_delay()
        if after == delay:  # no wait for a core between the two readings
            break
        delay = after
    return now, delay


def own_clock() -> float:
    """Seconds (of an arbitrary origin) that count this thread's time on a core and asleep, not
    its waits for a core: what a function costs whatever the machine's load (wall time off
    Linux). (Read from one clock and one wait, it stepped back by a wait that fell between the
    two readings: a 0.7 ms function was measured at 0 and placed inline.)"""
    now, delay = _wall_and_wait()
    return now - (delay or 0.0)


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
        cpu, delay = time.thread_time(), _run_delay()
        ready.release()
        go.wait()
        try:
            work(part)
        except BaseException:  # a failure is the stage's to report, from its real run
            pass
        used = time.thread_time() - cpu
        end, delay_after = _wall_and_wait()
        ends.append(end)
        cpus.append(used)
        waited = None if delay is None or delay_after is None else delay_after - delay
        asleep.append(None if waited is None else max(0.0, end - started[0] - used - waited))

    threads = [
        threading.Thread(target=target, args=(part,), name="aioloader-probe-trial", daemon=True)
        for part in parts
    ]
    started = [0.0]
    for thread in threads:
        thread.start()
    for _ in threads:  # each thread has read its clocks and waits for the start
        ready.acquire()
    started[0] = perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    slept = None if None in asleep else sum(a for a in asleep if a is not None)
    return _Run(max(max(ends, default=started[0]) - started[0], 1e-9), sum(cpus), slept)


def _cycled(values: list[Any], n: int) -> list[Any]:
    """``n`` items: ``values`` repeated as often as needed."""
    return [values[i % len(values)] for i in range(n)]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _releases(ones: list[_Run], twos: list[_Run], pick: Callable[[list[float]], float]) -> bool:
    """The Linux reading (each run's time asleep known): threads help when one thread is asleep
    over :data:`_IO_BOUND` of its time, or two threads use at least :data:`THREADS_PAY_ABOVE`
    cores at once and finish that much sooner; ``pick`` takes each reading from its values
    (the median). (CPU alone is not enough: threads fighting over a GIL that is let go often
    burn CPU on the hand-overs; the issue 23 tokenizer: 1.2 cores, 0.6-1.0x one thread's speed.)"""
    asleep = pick([one.asleep / one.wall for one in ones])  # type: ignore[operator]
    parallel = pick([two.cpu / two.wall for two in twos])
    speedup = pick([one.wall / two.wall for one, two in zip(ones, twos, strict=True)])
    return asleep > _IO_BOUND or (parallel >= THREADS_PAY_ABOVE and speedup >= THREADS_PAY_ABOVE)


def _settled(ones: list[_Run], twos: list[_Run]) -> bool:
    """After two trials of three: whether the third cannot change the outcome. A median of three
    lies between the two values known, whatever the third, and the outcome only grows with each
    reading, so the same outcome from the lower values and from the higher ones is the outcome
    of the full trial (a GIL holder: 2 pairs of runs instead of 3, a third less of the work
    thrown away before the stage runs where it is placed)."""
    if any(run.asleep is None for run in ones):  # off Linux: read from all the trials
        return False
    return _releases(ones, twos, min) == _releases(ones, twos, max)


def thread_trial(work: Callable[[list[Any]], Any], values: list[Any], cost_s: float) -> ThreadTrial:
    """Whether ``work`` holds the GIL, from runs over ``values`` (repeated to fill a trial) in
    one thread and in two, given an estimated ``cost_s`` per item. ``work`` takes a list of
    items; exceptions it raises are ignored here (the stage's own run reports them)."""
    if not values:
        return ThreadTrial(False, 1.0, 0, cost_s)
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
            if trial == 1 and trials == 3 and _settled(ones, twos):
                break
    finally:
        _restore(states)
    speedup = _median([one.wall / two.wall for one, two in zip(ones, twos, strict=True)])
    parallel = _median([two.cpu / two.wall for two in twos])  # cores used at once by two threads
    fastest = min(one.cpu for one in ones) / n
    share = _median([one.cpu / one.wall for one in ones])  # of a core, one thread had
    if any(run.asleep is None for run in ones):  # off Linux: asleep is not told from waiting
        io_bound = share < 0.2 and speedup >= THREADS_PAY_ABOVE
        # two threads on two cores at once (never a holder, whatever the load), and done sooner
        releases = io_bound or (parallel >= THREADS_PAY_ABOVE and speedup >= THREADS_PAY_ABOVE)
    else:
        releases = _releases(ones, twos, _median)  # (io: threads overlap the waits, GIL or not)
    trial = ThreadTrial(not releases, speedup, n, fastest)
    trial.parallel, trial.served = parallel, share
    trial.trials = len(ones)
    return trial
