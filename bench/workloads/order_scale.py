"""Order at scale: a virtual ``range(N)``, N = 10^6 .. 10^10, shuffled and not, rank 0 of 2.

Each contender runs in a fresh process, which first runs an empty loader (and an empty torch
DataLoader), then measures: the time from building the loader to its first batch of 64, the
peak RSS that added over that baseline, the rate at which rank 0's order yields its first keys
from scratch (up to 4M keys, per CPU-second: one core's rate, which other load on the machine
disturbs less than a wall-clock rate), and the size of the state a resume needs (JSON)
after the first batch. Side by side: torch's ``DistributedSampler`` (and ``RandomSampler``, one
rank) in a ``DataLoader`` over the same range, up to the N whose index list fits in memory
(they build a Python list of every index), and Grain's ``index_shuffle`` (through
``grain.MapDataset.range(N).shuffle()``, per index from Python as Grain's own dataset calls it)
when ``grain`` is installed (``pip install -e '.[bench]'``). The full shuffle's quality, by
``al.order.quality`` and the position-key correlation, is reported beside numpy's permutation.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from typing import Any

import numpy as np

SIZES = [10**6, 10**8, 10**9, 10**10]
WORLD, RANK, BATCH, SEED = 2, 0, 64, 0
TORCH_MAX_N = 10**8  # torch's samplers hold every index as a Python int (~36 bytes each)
TORCH_MAX_N_QUICK = 10**6
RATE_KEYS = 1 << 22
TARGETS = {"first_batch_s": 0.2, "added_mb": 20.0, "keys_per_s": 20e6, "state_bytes": 1024}


def _cpu() -> float:
    """CPU seconds of this process (every thread): a rate per CPU-second is one core's rate."""
    return time.process_time()


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _warm_up() -> None:
    """Imports and first-use costs that an empty loader pays too, before the baseline."""
    from torch.utils.data import DataLoader

    import aioloader as al

    with al.Loader.from_source(range(0), shuffle=True, rank=RANK, world_size=WORLD).batch(BATCH) as loader:
        list(loader)
    list(DataLoader(range(1), batch_size=BATCH))


# -- contenders: each returns (first batch, state size in bytes or None, rate function) ---------
def _aioloader(n: int, shuffled: bool) -> tuple[Any, int | None, Any]:
    import aioloader as al

    loader = al.Loader.from_source(range(n), shuffle=shuffled, seed=SEED, rank=RANK, world_size=WORLD)
    loader = loader.batch(BATCH)
    with loader:
        iterator = iter(loader)
        first = next(iterator)
        state = len(json.dumps(loader.state_dict()))
        iterator.close()

    def rate(keys: int) -> float:
        order = al.order.Permutation() if shuffled else al.order.Sequential()
        started = _cpu()
        sequence = al.order.order_sequence(order, n, SEED, 0)
        sequence = al.order.shard_sequence(sequence, al.order.RankInfo(RANK, WORLD), "drop")
        block = 1 << 16
        for start in range(0, keys, block):
            sequence.take(start, min(start + block, keys))
        return keys / (_cpu() - started)

    return first, state, rate


def _torch(n: int, shuffled: bool, sampler_kind: str) -> tuple[Any, int | None, Any]:
    import itertools

    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    def make_sampler() -> Any:
        if sampler_kind == "distributed":
            return DistributedSampler(range(n), num_replicas=WORLD, rank=RANK, shuffle=shuffled, seed=SEED)
        return RandomSampler(range(n)) if shuffled else SequentialSampler(range(n))

    first = next(iter(DataLoader(range(n), batch_size=BATCH, sampler=make_sampler())))

    def rate(keys: int) -> float:
        started = _cpu()
        for _ in itertools.islice(iter(make_sampler()), keys):
            pass
        return keys / (_cpu() - started)

    return first, None, rate


def _grain(n: int, shuffled: bool) -> tuple[Any, int | None, Any]:
    import grain
    from grain.experimental import index_shuffle

    dataset = grain.MapDataset.range(n)
    if shuffled:
        dataset = dataset.shuffle(seed=SEED)
    dataset = dataset[RANK::WORLD].batch(BATCH)
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    iterator = iter(dataset.to_iter_dataset(options))
    first = next(iterator)
    state = len(json.dumps(iterator.get_state()))

    def rate(keys: int) -> float:
        keys = min(keys, 1 << 17)  # one Python call per index
        started = _cpu()
        if shuffled:
            for i in range(keys):
                index_shuffle(index=RANK + WORLD * i, max_index=n - 1, seed=SEED, rounds=4)
        else:
            ranks = grain.MapDataset.range(n)[RANK::WORLD]
            for i in range(keys):
                ranks[i]
        return keys / (_cpu() - started)

    return first, state, rate


CONTENDERS = {
    "aioloader": _aioloader,
    "torch DistributedSampler": lambda n, s: _torch(n, s, "distributed"),
    "torch Random/SequentialSampler (1 rank)": lambda n, s: _torch(n, s, "single"),
    "grain index_shuffle": _grain,
}


def _measure(name: str, n: int, shuffled: bool, rate_keys: int, conn: Any) -> None:
    try:
        _warm_up()
        if name.startswith("grain"):
            import grain  # noqa: F401  (its import is not the order's memory)
        baseline = _max_rss_mb()
        started = time.perf_counter()
        first, state, rate = CONTENDERS[name](n, shuffled)
        first_s = time.perf_counter() - started
        added = _max_rss_mb() - baseline
        conn.send(
            {
                "first_batch_s": first_s,
                "added_mb": added,
                "keys_per_s": rate(min(rate_keys, n // WORLD)),
                "state_bytes": state,
                "first": [int(k) for k in list(first)[:3]],
            }
        )
    except Exception as exc:  # reported in the table, not fatal to the bench
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _in_child(name: str, n: int, shuffled: bool, rate_keys: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_measure, args=(name, n, shuffled, rate_keys, send))
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": f"the process died (exit code {child.exitcode})"}
    child.join()
    return result


def _grain_installed() -> bool:
    try:
        import grain  # noqa: F401
    except ImportError:
        return False
    return True


def _skip_reason(name: str, n: int, quick: bool) -> str | None:
    if name.startswith("torch"):
        import psutil

        cap = TORCH_MAX_N_QUICK if quick else TORCH_MAX_N
        if n > cap:
            return f"not run: N > {cap:.0e} (a list of N Python ints)"
        needed = 80 * n  # the permutation tensor, its list and the rank's slice
        if psutil.virtual_memory().available < needed * 1.5:
            return f"not run: needs ~{needed / 2**30:.0f} GiB free"
    if name.startswith("grain") and not _grain_installed():
        return "not run: grain is not installed (pip install -e '.[bench]')"
    return None


def _row(n: int, shuffled: bool, name: str, result: dict[str, Any] | None, note: str | None) -> str:
    order = "shuffled" if shuffled else "in order"
    if note or result is None or "error" in result:
        return f"| {n:.0e} | {order} | {name} | {note or result.get('error')} | | | |"
    state = "n/a" if result["state_bytes"] is None else f"{result['state_bytes']}"
    return (
        f"| {n:.0e} | {order} | {name} | {result['first_batch_s']:.3f} | {result['added_mb']:,.1f} "
        f"| {result['keys_per_s'] / 1e6:,.2f}M | {state} |"
    )


def _meets(results: list[dict[str, Any]]) -> str:
    worst = {
        "first_batch_s": max(r["first_batch_s"] for r in results),
        "added_mb": max(r["added_mb"] for r in results),
        "keys_per_s": min(r["keys_per_s"] for r in results),
        "state_bytes": max(r["state_bytes"] for r in results),
    }
    checks = [
        f"first batch {worst['first_batch_s']:.3f} s (< {TARGETS['first_batch_s']})",
        f"added {worst['added_mb']:.1f} MB (< {TARGETS['added_mb']:.0f})",
        f"{worst['keys_per_s'] / 1e6:.1f}M keys/s (>= {TARGETS['keys_per_s'] / 1e6:.0f}M)",
        f"state {worst['state_bytes']} bytes (< {TARGETS['state_bytes']})",
    ]
    ok = (
        worst["first_batch_s"] < TARGETS["first_batch_s"]
        and worst["added_mb"] < TARGETS["added_mb"]
        and worst["keys_per_s"] >= TARGETS["keys_per_s"]
        and worst["state_bytes"] < TARGETS["state_bytes"]
    )
    return f"aioloader, worst over every N and order: {'; '.join(checks)}: **{'meets' if ok else 'BELOW'}** the targets"


def _quality(n: int, seeds: int) -> str:
    import aioloader as al

    lines = [
        "",
        f"Full-shuffle quality at N = {n:,}, over seeds 0-{seeds - 1} (mean and spread); a true permutation's "
        "position-key correlation z-score is N(0, 1):",
        "",
        "| order | quality | position-key correlation z | adjacent-gap KS distance to the other |",
        "|---|---|---|---|",
    ]
    makers = {
        "aioloader Permutation (Feistel bijection)": lambda s: al.order.Permutation().keys(n, s, 0),
        "numpy permutation": lambda s: np.random.default_rng(s).permutation(n),
    }
    orders = {name: [make(seed) for seed in range(seeds)] for name, make in makers.items()}
    gaps = {
        name: [np.sort(np.abs(np.diff(o.astype(np.int64)))) for o in found] for name, found in orders.items()
    }
    for name, found in orders.items():
        other = next(g for g_name, g in gaps.items() if g_name != name)
        quality = np.array([al.order.quality(o) for o in found])
        z = np.array([np.corrcoef(np.arange(n), o.astype(np.float64))[0, 1] * np.sqrt(n) for o in found])
        ks = np.array([_ks(mine, theirs) for mine, theirs in zip(gaps[name], other, strict=True)])
        lines.append(
            f"| {name} | {quality.mean():.4f} ± {quality.std():.4f} | {z.mean():+.2f} ± {z.std():.2f} "
            f"| {ks.mean():.4f} |"
        )
    return "\n".join(lines)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between sorted samples."""
    grid = np.concatenate((a, b))
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def run(quick: bool = False) -> str:
    rate_keys = RATE_KEYS // 8 if quick else RATE_KEYS
    lines = [
        f"### Order at scale: range(N), rank {RANK} of {WORLD}, batch {BATCH}, each in a fresh process",
        "",
        "| N | order | loader | first batch (s) | peak RSS added (MB) | keys/s per core | state_dict (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    ours = []
    for n in SIZES:
        for shuffled in (False, True):
            for name in CONTENDERS:
                note = _skip_reason(name, n, quick)
                result = None if note else _in_child(name, n, shuffled, rate_keys)
                if name == "aioloader" and result is not None and "error" not in result:
                    ours.append(result)
                lines.append(_row(n, shuffled, name, result, note))
    lines += ["", _meets(ours) if ours else "aioloader: no result", _quality(10**5 if quick else 10**6, 20)]
    return "\n".join(lines)
