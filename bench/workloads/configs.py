"""The seed's configuration table: single process / multi-process 4 / optimized 8 / memory
efficient 2, through ``al.EfficientDataLoader`` on both backends (``"aio"`` and ``"torch"``), on
the same map-style dataset (synthetic 3x64x64 images with a small per-sample transform, batch 32).
Batches/s and peak memory (tree PSS, as % of the machine) side by side, aio / torch ratios.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

import aioloader as al
from bench.harness import measure_once

BATCH = 32

CONFIGS = {
    "single process": {"num_workers": 0, "persistent_workers": False, "prefetch_factor": None},
    "multi-process 4": {"num_workers": 4},
    "optimized 8": {"num_workers": 8, "prefetch_factor": 4},
    "memory efficient 2": {"num_workers": 2, "prefetch_factor": 1, "memory_efficient": True},
}


class SyntheticImages(Dataset):
    """``n`` samples: a 3x64x64 uint8 image made from the index, normalised to float."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator)
        return (image.float() / 255.0 - 0.5) / 0.25, index % 10


def _make(dataset: Dataset, options: dict, backend: str) -> al.EfficientDataLoader:
    config = al.DataLoaderConfig(
        batch_size=BATCH, shuffle=True, pin_memory=False, generator_seed=0, **options
    )
    return al.EfficientDataLoader(dataset, config, backend=backend)


def run(quick: bool = False) -> str:
    n = 2_000 if quick else 8_000
    dataset = SyntheticImages(n)
    lines = [
        f"### configs: {n:,} synthetic 3x64x64 images, batch {BATCH}, al.EfficientDataLoader",
        "",
        "| config | aio batches/s | torch batches/s | x aio vs torch | aio memory % | torch memory % |",
        "|---|---|---|---|---|---|",
    ]
    for name, options in CONFIGS.items():
        measured = {}
        for backend in ("torch", "aio"):
            loader = _make(dataset, options, backend)
            try:
                measure_once(name, lambda loader=loader: iter(loader))  # warm-up: workers start
                measured[backend] = measure_once(name, lambda loader=loader: iter(loader))
            finally:
                loader.close()
        aio, theirs = measured["aio"], measured["torch"]
        lines.append(
            f"| {name} | {aio.batches_per_s:,.1f} | {theirs.batches_per_s:,.1f} | "
            f"{aio.batches_per_s / theirs.batches_per_s:.2f} | {aio.memory_percent:.2f} | "
            f"{theirs.memory_percent:.2f} |"
        )
    return "\n".join(lines)
