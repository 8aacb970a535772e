"""HDF5 rows: 200k rows x 256 float32 in chunks of 256 rows, batch 256, read in order.

The file is generated once into ``.cache/bench``. aioloader reads each block of keys as one
row range (``__getitems__``); the torch baseline is the usual map-style Dataset that opens the
file lazily in each worker and reads one row per ``__getitem__``. A third contender gives
torch DataLoader the aioloader source itself, which torch then reads a batch at a time through
``__getitems__``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import aioloader as al
from bench.harness import best_ratio, compare, table

BATCH = 256
WIDTH = 256
CHUNK_ROWS = 256
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench"


def make_file(rows: int, path: Path | None = None) -> Path:
    """``rows`` x 256 float32 in dataset ``x``, chunked by 256 rows; made once."""
    path = path or CACHE / f"h5-{rows}.h5"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    rng = np.random.default_rng(0)
    with h5py.File(partial, "w") as f:
        x = f.create_dataset("x", shape=(rows, WIDTH), dtype=np.float32, chunks=(CHUNK_ROWS, WIDTH))
        for start in range(0, rows, 16_384):
            stop = min(rows, start + 16_384)
            x[start:stop] = rng.standard_normal((stop - start, WIDTH), dtype=np.float32)
    partial.rename(path)
    return path


class TorchH5Dataset(Dataset):
    """The common torch recipe: open lazily per worker, one row per ``__getitem__``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        with h5py.File(self.path) as f:
            self.length = len(f["x"])
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return torch.from_numpy(self._file["x"][index])


def run(quick: bool = False) -> str:
    rows = 20_000 if quick else 200_000
    path = make_file(rows)
    dataset = TorchH5Dataset(path)
    source = al.sources.HDF5(path, "x")
    loader = al.Loader.from_source(source).batch(BATCH)
    auto = al.Loader.from_source(source).batch(BATCH)  # the read stage: executor="auto"
    contenders = [
        ("torch DL w=0", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=0)),
        ("torch DL w=2", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=2)),
        ("torch DL w=0 over al.sources.HDF5", lambda: DataLoader(source, batch_size=BATCH, num_workers=0)),
        # iter(): the harness closes what it gets; closing an epoch iterator keeps the loader.
        ("aioloader sync", lambda: iter(loader)),
        ("aioloader auto", lambda: iter(auto)),
    ]
    try:
        results = compare(contenders, rounds=1 if quick else 3)
    finally:
        loader.close()
        auto.close()
        source.close()
    return table(
        f"h5: {rows:,} rows x {WIDTH} float32, chunks of {CHUNK_ROWS} rows, batch {BATCH}, in order",
        results,
        ["torch DL w=0", "torch DL w=2"],
    ) + best_ratio(results, "aioloader auto", ["aioloader sync"])
