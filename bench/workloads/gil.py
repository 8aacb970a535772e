"""GIL-holding functions of 5, 20 and 60 us per sample (pure-Python arithmetic), batch 64.

These workloads were written before ``executor="auto"``'s placement was tuned and were not used
to tune it: they check that auto is right on functions it has never seen. Each cost runs inline,
in 2 threads, in 2 processes and with ``executor="auto"`` (the plain ``.map(fn).batch(64)``), beside
torch DataLoader with 0 and 2 workers. Threads cannot help (the function holds the GIL); two
processes on 2 cores should approach 2x inline once started, which is why the steady-state
rate (after the first batch) is shown beside the time to the first batch.
"""

from __future__ import annotations

import time

from torch.utils.data import DataLoader, Dataset

import aioloader as al
from bench.harness import auto_verdict, compare, table

BATCH = 64
COSTS_US = (5, 20, 60)
_EPOCH_S = 1.5  # inline work per epoch, at the calibrated cost


class Spin:
    """A pure-Python loop of ``iterations`` steps per sample: holds the GIL throughout."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, x: int) -> int:
        acc = x
        for i in range(self.iterations):
            acc = (acc * 31 + i) & 0xFFFF
        return acc


def calibrate(cost_us: float) -> Spin:
    """A :class:`Spin` of about ``cost_us`` per call on this machine (the fastest of a few
    timings, so a busy moment does not shrink it)."""
    probe = Spin(2000)
    best = min(_timed(probe) for _ in range(5))
    return Spin(max(1, round(cost_us * 1e-6 / (best / probe.iterations))))


def _timed(fn: Spin) -> float:
    started = time.perf_counter()
    fn(0)
    return time.perf_counter() - started


class SpinDataset(Dataset):
    def __init__(self, n: int, fn: Spin) -> None:
        self.n = n
        self.fn = fn

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return self.fn(index)


def _one(cost_us: float, quick: bool) -> str:
    fn = calibrate(cost_us)
    n = int((_EPOCH_S / 3 if quick else _EPOCH_S) / (cost_us * 1e-6)) // BATCH * BATCH
    keys = list(range(n))
    dataset = SpinDataset(n, fn)
    loaders = {
        "aioloader inline": al.Loader.from_source(keys).map(fn, executor="inline").batch(BATCH),
        "aioloader thread=2": al.Loader.from_source(keys).map(fn, executor="thread", concurrency=2).batch(BATCH),
        "aioloader process=2": al.Loader.from_source(keys)
        .map(fn, executor="process", concurrency=2)
        .batch(BATCH),
        "aioloader auto": al.Loader.from_source(keys).map(fn).batch(BATCH),
    }
    contenders = [
        ("torch DL w=0", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=0)),
        ("torch DL w=2", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=2)),
        # iter(): a pool starts in the first round and persists across epochs, as designed
        *((name, lambda loader=loader: iter(loader)) for name, loader in loaders.items()),
    ]
    try:
        results = compare(contenders, rounds=1 if quick else 3)
    finally:
        for loader in loaders.values():
            loader.close()
    title = f"gil {cost_us:g} us: {n:,} samples of a GIL-holding function, batch {BATCH}"
    placed = ["aioloader inline", "aioloader thread=2", "aioloader process=2"]
    return table(title, results, ["torch DL w=0", "aioloader inline"], steady=True) + auto_verdict(
        results, "aioloader auto", "aioloader inline", placed
    )


def run(quick: bool = False) -> str:
    return "\n\n".join(_one(cost, quick) for cost in COSTS_US)
