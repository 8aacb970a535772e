"""Measure loaders side by side and print a markdown table of ratios.

Each contender is a name and a factory returning an iterable of batches. For each one the
harness records samples/s, time to first batch, peak memory summed over the process tree (PSS,
so shared pages count once) and CPU use (cores busy, summed over the tree). Contenders run in
interleaved rounds and the median round is reported, because these machines are noisy.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _tree_memory(proc: psutil.Process) -> int:
    total = 0
    for p in _tree(proc):
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            continue
    return total


def _tree_cpu_seconds(proc: psutil.Process, exclude: int | None = None) -> float:
    total = 0.0
    for p in _tree(proc):
        if p.pid == exclude:
            continue
        try:
            t = p.cpu_times()
            total += t.user + t.system
            if p.pid == proc.pid:  # children already reaped (torch's workers end with the epoch)
                total += t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


_SAMPLER = """
import os, sys, psutil
os.nice(10)  # yield the cores to what is measured
root = psutil.Process(int(sys.argv[1])); period = float(sys.argv[2]); me = os.getpid()
def tree_pss():
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        if p.pid == me:
            continue
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return total
peak = tree_pss()
print("ready", flush=True)
import select
while not select.select([sys.stdin], [], [], period)[0]:
    peak = max(peak, tree_pss())
peak = max(peak, tree_pss())
print(peak, flush=True)
"""


class _PeakSampler:
    """Samples the tree's memory every ``period`` seconds from a *separate process*: reading
    PSS (smaps) in a thread here held the GIL for milliseconds each time and slowed whichever
    loader had more threads (tiny workload, aioloader sync: 0.51x of torch with the sampler
    thread, 0.84x without). Its own memory and CPU are not counted; it runs at a lower priority
    and reads every 250 ms, because on 2 cores its reads took CPU from the contenders that use
    both cores (text, 2 processes: 1.10x of torch in the harness, 1.26x alone)."""

    def __init__(self, period: float = 0.25) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER, str(psutil.Process().pid), str(period)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.peak = 0
        self.pid = self._proc.pid

    def __enter__(self) -> _PeakSampler:
        self._proc.stdout.readline()  # "ready": the baseline is taken
        return self

    def __exit__(self, *exc: Any) -> None:
        out, _ = self._proc.communicate("stop\n", timeout=60)
        self.peak = int(out.strip() or 0)


@dataclass
class Result:
    name: str
    samples_per_s: float
    first_batch_s: float
    peak_mb: float
    cpu_cores: float
    samples: int
    batches: int = 0
    elapsed_s: float = 0.0
    steady_per_s: float = 0.0  # samples/s after the first batch (start-up left out)

    @property
    def batches_per_s(self) -> float:
        return self.batches / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def memory_percent(self) -> float:
        """Peak tree PSS as a percentage of the machine's memory."""
        return 100.0 * self.peak_mb * 2**20 / psutil.virtual_memory().total


def _batch_len(batch: Any) -> int:
    if isinstance(batch, (list, tuple)):
        first = batch[0] if batch else None
        if first is None or isinstance(first, (str, bytes, int, float)):
            return len(batch)  # a list of plain samples (collate=as_list)
        return _batch_len(first)
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    return len(batch)


def measure_once(
    name: str, make: Callable[[], Iterable[Any]], consume: Callable[[Any], None] | None = None
) -> Result:
    gc.collect()
    proc = psutil.Process()
    with _PeakSampler() as sampler:
        cpu0 = _tree_cpu_seconds(proc, exclude=sampler.pid)
        started = time.perf_counter()
        first = None
        first_samples = 0
        samples = 0
        batches = 0
        iterable = make()
        for batch in iterable:
            samples += _batch_len(batch)
            if first is None:
                first = time.perf_counter() - started
                first_samples = samples
            batches += 1
            if consume is not None:
                consume(batch)
        elapsed = time.perf_counter() - started
        cpu = _tree_cpu_seconds(proc, exclude=sampler.pid) - cpu0
        close = getattr(iterable, "close", None)
        if close is not None and hasattr(iterable, "__next__"):  # an iterator; a Loader stays open
            close()
    after_first = elapsed - (first or 0.0)
    steady = (samples - first_samples) / after_first if after_first > 0 else 0.0
    return Result(
        name,
        samples / elapsed,
        first or 0.0,
        sampler.peak / 2**20,
        cpu / elapsed,
        samples,
        batches,
        elapsed,
        steady,
    )


def compare(
    contenders: list[tuple[str, Callable[[], Iterable[Any]]]],
    *,
    rounds: int = 3,
    baseline: str | None = None,
) -> list[Result]:
    """Run every contender ``rounds`` times, interleaved; keep each one's median round."""
    runs: dict[str, list[Result]] = {name: [] for name, _ in contenders}
    for _ in range(rounds):
        for name, make in contenders:
            runs[name].append(measure_once(name, make))
    results = []
    for name, _ in contenders:
        rs = sorted(runs[name], key=lambda r: r.samples_per_s)
        median = rs[len(rs) // 2]
        median.first_batch_s = statistics.median(r.first_batch_s for r in rs)
        median.peak_mb = max(r.peak_mb for r in rs)
        results.append(median)
    return results


def _measure_in_child(
    name: str, factory: Callable[..., Iterable[Any]], args: tuple[Any, ...], conn: Any
) -> None:
    iterable = factory(*args)
    try:
        conn.send(measure_once(name, lambda: iterable))
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
        conn.close()


def compare_isolated(
    contenders: list[tuple[str, Callable[..., Iterable[Any]], tuple[Any, ...]]],
) -> list[Result]:
    """Each contender measured once in a fresh spawned process: ``factory(*args)`` (a
    module-level function, so it can be pickled) builds its data and returns the iterable. What
    an earlier contender allocated cannot count in a later one's peak memory (malloc keeps freed
    heap in the process it ran in)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = []
    for name, factory, args in contenders:
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_measure_in_child, args=(name, factory, args, send))
        child.start()
        send.close()
        try:
            results.append(receive.recv())
        except EOFError:
            child.join()
            raise RuntimeError(f"bench contender {name!r} died (exit code {child.exitcode})") from None
        child.join()
    return results


def table(title: str, results: list[Result], baselines: list[str], *, steady: bool = False) -> str:
    """A markdown table; one ratio column per baseline (aioloader / baseline, higher is better).
    ``steady``: a column of the rate after the first batch, beside the time to it."""
    by_name = {r.name: r for r in results}
    head = ["loader", "samples/s", "first batch (s)", "peak mem (MB, tree PSS)", "CPU (cores)"]
    if steady:
        head.insert(2, "steady samples/s")
    head += [f"x vs {b}" for b in baselines]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [
            r.name,
            f"{r.samples_per_s:,.0f}",
            f"{r.first_batch_s:.3f}",
            f"{r.peak_mb:,.0f}",
            f"{r.cpu_cores:.2f}",
        ]
        if steady:
            row.insert(2, f"{r.steady_per_s:,.0f}")
        row += [f"{r.samples_per_s / by_name[b].samples_per_s:.2f}" for b in baselines]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def best_ratio(results: list[Result], auto: str, hand_tuned: list[str]) -> str:
    """One line: the auto contender's rate against the best hand-tuned aioloader contender."""
    by_name = {r.name: r for r in results}
    best = max((by_name[n] for n in hand_tuned), key=lambda r: r.samples_per_s)
    ratio = by_name[auto].samples_per_s / best.samples_per_s
    verdict = "meets" if ratio >= 0.9 else "BELOW"
    return f"\n\nauto / best hand-tuned ({best.name}): **{ratio:.2f}x** ({verdict} the 0.9x target)"


def auto_verdict(results: list[Result], auto: str, inline: str, placed: list[str]) -> str:
    """One line: the auto contender against the best of the fixed placements (target 0.95x)
    and against inline (never below it)."""
    by_name = {r.name: r for r in results}
    best = max((by_name[n] for n in placed), key=lambda r: r.samples_per_s)
    ratio = by_name[auto].samples_per_s / best.samples_per_s
    vs_inline = by_name[auto].samples_per_s / by_name[inline].samples_per_s
    verdict = "meets" if ratio >= 0.95 and vs_inline >= 1.0 else "BELOW"
    return (
        f"\n\nauto / best placement ({best.name}): **{ratio:.2f}x**, auto / inline: "
        f"**{vs_inline:.2f}x** ({verdict} the target: >= 0.95x of the best, never below inline)"
    )
