"""Tiny samples: a 16-float tensor per index, batch 64, 100k samples.

Per-item overhead decides this workload: torch DataLoader pays IPC per batch with workers.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

import aioloader as al
from bench.harness import best_ratio, compare, table

BATCH = 64


class TinyDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.data = torch.randn(n, 16)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


def run(quick: bool = False) -> str:
    n = 20_000 if quick else 100_000
    dataset = TinyDataset(n)
    loader = al.Loader.from_source(dataset).batch(BATCH)
    # executor/concurrency "auto" everywhere (the read stage is a map with executor="auto")
    auto = al.Loader.from_source(dataset).batch(BATCH)
    contenders = [
        ("torch DL w=0", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=0)),
        ("torch DL w=2", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=2)),
        ("aioloader sync", lambda: loader),
        ("aioloader sync shuffle", lambda: al.Loader.from_source(dataset, shuffle=True).batch(BATCH)),
        ("aioloader auto", lambda: iter(auto)),
    ]
    try:
        results = compare(contenders, rounds=1 if quick else 3)
    finally:
        loader.close()
        auto.close()
    return table(
        f"tiny: {n:,} x 16 float32, batch {BATCH}", results, ["torch DL w=0", "torch DL w=2"]
    ) + best_ratio(results, "aioloader auto", ["aioloader sync"])
