"""HDF5 shuffled: 200k rows x 256 float32, chunks of 256 rows, batch 256, a new order per epoch.

torch's recipe shuffles indices and reads one row per ``__getitem__`` (a random HDF5 read per
row). aioloader's ``shuffle="chunks"`` permutes the chunk order, reads ``chunk_window`` whole
chunks per call and mixes their rows. The shuffle quality of each order is reported beside
the throughput (``al.order.quality``: 0 = storage order, 1 = a full permutation).
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader

import aioloader as al
from bench.harness import best_ratio, compare, table
from bench.workloads.h5 import BATCH, CHUNK_ROWS, TorchH5Dataset, make_file


def _order_quality(rows: int) -> str:
    lines = ["", "| order | quality | neighbour rate |", "|---|---|---|"]
    orders = {
        "full permutation (torch shuffle=True)": al.order.Permutation().keys(rows, 0, 0),
        "chunks, window 4": al.order.Chunks(chunk_size=CHUNK_ROWS, window=4).keys(rows, 0, 0),
        "chunks, window 16": al.order.Chunks(chunk_size=CHUNK_ROWS, window=16).keys(rows, 0, 0),
    }
    with al.Loader.from_source(range(rows)).shuffle(10_000) as buffered:
        orders["shuffle buffer 10k (streams)"] = np.fromiter((int(x) for x in buffered), dtype=np.int64)
    for name, keys in orders.items():
        report = al.order.quality(keys), al.order.neighbour_rate(keys, window=CHUNK_ROWS)
        lines.append(f"| {name} | {report[0]:.3f} | {report[1]:.3f} |")
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    rows = 20_000 if quick else 200_000
    path = make_file(rows)
    dataset = TorchH5Dataset(path)
    source = al.sources.HDF5(path, "x")
    chunks4 = al.Loader.from_source(source, shuffle="chunks", chunk_window=4).batch(BATCH)
    chunks16 = al.Loader.from_source(source, shuffle="chunks", chunk_window=16).batch(BATCH)
    auto = al.Loader.from_source(source, shuffle="chunks").batch(BATCH)  # default window, auto read
    contenders = [
        ("torch DL shuffle w=0", lambda: DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)),
        ("torch DL shuffle w=2", lambda: DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)),
        ("aioloader chunks window 4", lambda: chunks4),
        ("aioloader chunks window 16", lambda: chunks16),
        ("aioloader chunks auto", lambda: auto),
    ]
    try:
        results = compare(contenders, rounds=1 if quick else 3)
    finally:
        chunks4.close()
        chunks16.close()
        auto.close()
        source.close()
    title = f"HDF5 shuffled: {rows:,} rows x 256 float32, chunks of {CHUNK_ROWS} rows, batch {BATCH}"
    return (
        table(title, results, ["torch DL shuffle w=0", "torch DL shuffle w=2"])
        + best_ratio(
            results, "aioloader chunks auto", ["aioloader chunks window 4", "aioloader chunks window 16"]
        )
        + "\n"
        + _order_quality(rows)
    )
