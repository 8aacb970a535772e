"""Copy-on-read: a dataset of 5M Python strings (1M with --quick), batch 256, one epoch.

torch DataLoader forks its workers; each worker touches every string it reads (a refcount
write), so the pages holding the strings are copied into each worker: the memory summed over
the processes (PSS, shared pages counted once) grows with the workers. aioloader reads the
dataset in the parent (no copy), or ships only the items to spawned worker processes
(``executor="process"``), which never hold the dataset. Peak PSS summed over the process tree.

Each contender runs once in a fresh process that builds its own copy of the dataset, so memory
that malloc kept from an earlier contender cannot count in a later one's peak.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch.utils.data import DataLoader, Dataset

import aioloader as al
from bench.harness import best_ratio, compare_isolated, table

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


def make_contender(kind: str, n: int) -> Iterable[Any]:
    """Contender ``kind`` over a fresh dataset of ``n`` strings (run in its own process)."""
    dataset = Strings(n)
    if kind.startswith("torch"):
        return DataLoader(dataset, batch_size=BATCH, num_workers=int(kind[-1]), collate_fn=as_list)
    loader = al.Loader.from_source(dataset)
    if kind == "inline":
        loader = loader.map(char_count, executor="inline")
    elif kind == "auto":
        loader = loader.map(char_count)
    elif kind == "processes":
        loader = loader.map(char_count, executor="process", concurrency=2)
    return loader.batch(BATCH, collate=al.collate.as_list)


CONTENDERS = [
    ("torch DL w=0", "torch0"),
    ("torch DL w=2", "torch2"),
    ("aioloader in-process", "in-process"),
    ("aioloader inline (map len)", "inline"),
    ("aioloader auto (map len)", "auto"),
    ("aioloader processes=2 (map len)", "processes"),
]


def run(quick: bool = False) -> str:
    n = 1_000_000 if quick else 5_000_000
    results = compare_isolated([(name, make_contender, (kind, n)) for name, kind in CONTENDERS])
    lines = [
        table(
            f"memory: {n:,} Python strings, batch {BATCH}, one epoch, each loader in a fresh process",
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
