"""The GIL reading of executor="auto" (aioloader._run.thread_trial) and the placement it feeds:
a function that holds the GIL is never put on threads, whatever the machine's load."""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import torch

import aioloader as al
from aioloader._run.executors import apply_items
from aioloader._run.placement import FORK_START_S, place
from aioloader._run.thread_trial import _run_delay, own_clock, thread_trial


def spin(x: int) -> int:
    """~40 us of pure Python: holds the GIL throughout."""
    acc = x
    for i in range(1500):
        acc = (acc * 31 + i) & 0xFFFF
    return acc


def sleeper(x: int) -> int:
    time.sleep(0.001)
    return x


def draws(x: float) -> float:
    return x + random.random() + float(np.random.random()) + float(torch.rand(1))


def test_a_gil_holder_reads_as_holding() -> None:
    trial = thread_trial(functools.partial(apply_items, spin), list(range(16)), 40e-6)
    assert trial.holds_gil, (trial.speedup, trial.trials, trial.parallel, trial.served)
    assert trial.items >= 2 and trial.cost_s > 0


def test_a_sleeper_reads_as_releasing() -> None:
    trial = thread_trial(functools.partial(apply_items, sleeper), list(range(8)), 1e-3)
    assert not trial.holds_gil, (trial.speedup, trial.trials, trial.parallel, trial.served)


def test_the_trial_leaves_the_global_rngs_as_they_were() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = [draws(0.0) for _ in range(3)]
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    thread_trial(functools.partial(apply_items, draws), [0.0, 1.0], 1e-3)
    assert [draws(0.0) for _ in range(3)] == expected


def test_own_clock_does_not_step_back_when_the_thread_waits_for_a_core() -> None:
    """``own_clock`` (the probe's cost clock) leaves out waits for a core. Sharing one core with
    a spinning process, the thread is taken off it every few ms, at times between its readings
    of the wall clock and of the wait: the clock stepped back by that wait (0.2-40 ms, 21-28
    times in 100 waits), and a 0.7 ms function was measured at 0 s and placed inline."""
    if _run_delay() is None:
        pytest.skip("no /proc/thread-self/schedstat here")
    mine = os.sched_getaffinity(0)  # pid 0: this thread alone
    core = {min(mine)}
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, core)
        os.sched_setaffinity(0, core)
        deadline = time.monotonic() + 30  # a bound only: the loop ends on the waits it counts
        waits, delay, steps_back = 0, _run_delay(), []
        previous = own_clock()
        while waits < 100 and time.monotonic() < deadline:
            now = own_clock()
            if now < previous - 1e-4:
                steps_back.append(previous - now)
            previous = now
            current = _run_delay()
            waits += current != delay  # the thread was taken off its core and put back
            delay = current
    finally:
        os.sched_setaffinity(0, mine)
        spinner.kill()
        spinner.wait()
    assert waits == 100, f"the thread waited for its core only {waits} times"
    # A rare step back remains, of unknown cause (one of 2.7 ms in 12 runs at load 14): a few
    # are allowed, far from the 21-28 of the race
    assert len(steps_back) <= 3, f"own_clock stepped back {len(steps_back)} times in 100 waits: {steps_back}"


def test_processes_must_pay_for_their_start() -> None:
    assert place(1e-3, True, True, True, work_s=FORK_START_S) == "inline"
    assert place(1e-3, True, True, True, work_s=100 * FORK_START_S) == "process"
    assert place(1e-3, True, True, True) == "process"  # an epoch of unknown length
    assert place(1e-3, True, False, True, work_s=FORK_START_S) == "thread"  # unpicklable, costly


def test_a_fused_gil_holder_is_never_put_on_threads() -> None:
    """.map(fn).batch(64) probes whole batches: a GIL holder's batch went to threads (2-3x
    slower than inline) when a batch was too little work for the earlier reading."""
    with al.Loader.from_source(list(range(512))).map(spin, name="spin").batch(64) as loader:
        assert [int(x) for b in loader for x in b] == [spin(i) for i in range(512)]
        stage = next(s for s in loader.stats()["stages"] if s["name"] == "spin")
    assert stage["fused"] == "batch"
    assert stage["executor"] in ("inline", "process"), stage["placement"]


class CountsReads:
    """A costly indexable source that counts its reads (a source may track them)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        self.reads += 1
        return spin(index)


def test_a_sources_read_stage_is_placed_without_trial_runs() -> None:
    source = CountsReads(256)
    with al.Loader.from_source(source).batch(64) as loader:
        assert [int(x) for b in loader for x in b] == [spin(i) for i in range(256)]
    assert source.reads == 256


def _run(wall: float, cpu: float, asleep: float) -> Any:
    from aioloader._run.thread_trial import _Run

    return _Run(wall, cpu, asleep)


def test_two_trials_that_settle_the_reading_give_the_outcome_of_three() -> None:
    from aioloader._run.thread_trial import _median, _releases, _settled

    rng = random.Random(0)
    settled = 0
    for _ in range(5000):
        ones, twos = [], []
        for _ in range(3):
            wall = rng.uniform(0.01, 0.1)
            ones.append(_run(wall, wall * rng.uniform(0.05, 1.0), wall * rng.uniform(0.0, 0.9)))
            two_wall = wall / rng.uniform(0.5, 2.2)
            twos.append(_run(two_wall, two_wall * rng.uniform(0.5, 2.0), 0.0))
        if _settled(ones[:2], twos[:2]):
            settled += 1
            full = _releases(ones, twos, _median)
            assert _releases(ones[:2], twos[:2], _median) == full
    assert 0 < settled < 5000  # both kinds of case were drawn


def test_a_gil_holders_trial_stops_after_two_pairs_of_runs() -> None:
    # one thread alone is never asleep and two never use two cores at once: no third pair can
    # make the holder read as releasing
    trial = thread_trial(functools.partial(apply_items, spin), list(range(16)), 40e-6)
    assert trial.holds_gil
    assert trial.trials == 2, (trial.speedup, trial.parallel, trial.served)
