"""Copy-on-read: a dataset of 5M Python strings (1M with --quick), batch 256, one epoch.

torch DataLoader forks its workers; each worker touches every string it reads (a refcount
write), so the pages holding the strings are copied into each worker: the memory summed over
the processes (PSS, shared pages counted once) grows with the workers. aioloader reads the
dataset in the parent (no copy), or ships only the items to spawned worker processes
(``executor="process"``), which never hold the dataset. Peak PSS summed over the process tree.

The contenders run one after another in this process, and memory freed by one is not all given
back to the system (malloc keeps it), so a contender's peak includes part of the earlier ones'
heap; the process pool, which lives until the end, runs last.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

import aioloader as al
from bench.harness import best_ratio, compare, table

BATCH = 256


class Strings(Dataset):
    """``n`` distinct Python strings in a list: the classic copy-on-read victim."""

    def __init__(self, n: int) -> None:
        self.items = [f"sample-{i:09d}-{'x' * (i % 17)}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> str:
        return self.items[index]


def as_list(batch: list[str]) -> list[str]:
    return batch


def char_count(text: str) -> int:
    return len(text)


def run(quick: bool = False) -> str:
    n = 1_000_000 if quick else 5_000_000
    dataset = Strings(n)
    in_process = al.Loader.from_source(dataset).batch(BATCH, collate=al.collate.as_list)
    processes = (
        al.Loader.from_source(dataset)
        .map(char_count, executor="process", concurrency=2)
        .batch(BATCH, collate=al.collate.as_list)
    )
    inline = (
        al.Loader.from_source(dataset)
        .map(char_count, executor="inline")
        .batch(BATCH, collate=al.collate.as_list)
    )
    auto = al.Loader.from_source(dataset).map(char_count).batch(BATCH, collate=al.collate.as_list)

    def torch_loader(workers: int, fn: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=BATCH, num_workers=workers, collate_fn=as_list)

    contenders = [
        ("torch DL w=0", lambda: torch_loader(0)),
        ("torch DL w=2", lambda: torch_loader(2)),
        ("aioloader in-process", lambda: iter(in_process)),
        ("aioloader inline (map len)", lambda: iter(inline)),
        ("aioloader auto (map len)", lambda: iter(auto)),
        # last: its worker pool lives until the end and would count in the ones after it
        ("aioloader processes=2 (map len)", lambda: iter(processes)),
    ]
    try:
        results = compare(contenders, rounds=1)
    finally:
        for loader in (in_process, processes, inline, auto):
            loader.close()
    lines = [
        table(
            f"memory: {n:,} Python strings, batch {BATCH}, one epoch",
            results,
            ["torch DL w=0", "torch DL w=2"],
        ),
        "",
        "| loader | peak PSS (MB) | memory % | x memory vs torch DL w=2 (lower is better) |",
        "|---|---|---|---|",
    ]
    torch2 = next(r for r in results if r.name == "torch DL w=2")
    for r in results:
        lines.append(
            f"| {r.name} | {r.peak_mb:,.0f} | {r.memory_percent:.2f} | {r.peak_mb / torch2.peak_mb:.2f} |"
        )
    hand_tuned = ["aioloader processes=2 (map len)", "aioloader inline (map len)"]
    return "\n".join(lines) + best_ratio(results, "aioloader auto (map len)", hand_tuned)
