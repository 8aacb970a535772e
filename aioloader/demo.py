"""``aioloader demo``: stream a built-in image dataset and report throughput beside torch.

Builds (once, in a cache folder) 2,000 JPEGs (``--images``) of 320x240 in 10 class folders and
streams two epochs of the pipeline the README starts with: an ``ImageFolder``, decode + resize to
224 (``al.transforms.decode_image``) in threads that read their own files, batching, prefetch;
with a progress bar, then prints samples/s, time to first batch, ``Loader.report()`` with the
bottleneck, and the same read + decode through ``torch.utils.data.DataLoader``.
``--plot out.png`` draws the last epoch's timeline.

Threads, not processes: a process pool runs this ~15% faster once started, but its start (its
workers import torch, ~1 s on 2 cores) would weigh on a two-epoch demo.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import aioloader as al
from aioloader.transforms import decode_image

IMAGES = 2000
CLASSES = 10
SIZE = (320, 240)
OUT = 224
BATCH = 32


def cache_dir(images: int = IMAGES) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    suffix = "" if images == IMAGES else f"-{images}"
    return Path(base) / "aioloader" / f"demo-images{suffix}"


DECODE = decode_image(OUT)  # Pillow decodes, the antialiased resize runs in torch's uint8 kernel


def build_dataset(root: Path, images: int = IMAGES) -> al.sources.ImageFolder:
    """``images`` JPEGs of smooth random colour fields under ``root``; made once, reused."""
    done = root / ".complete"
    if not done.exists():
        rng = np.random.default_rng(0)
        for i in range(images):
            folder = root / f"class_{i % CLASSES:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize(SIZE, Image.BILINEAR)
            img.save(folder / f"{i:05d}.jpg", quality=90)
        done.touch()
    return al.sources.ImageFolder(root)


class _TorchImages(Dataset):
    """The same work as the aioloader pipeline, the torch way: read + decode in __getitem__."""

    def __init__(self, source: al.sources.ImageFolder) -> None:
        self.paths = [str(source.path(i)) for i in range(len(source))]
        self.labels = source.targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[index], "rb") as f:
            return DECODE(f.read()), self.labels[index]


def build_loader(source: al.sources.ImageFolder) -> al.Loader:
    return (
        al.Loader.from_source(source, shuffle=True, seed=0)
        .map(DECODE, executor="thread", name="decode")
        .batch(BATCH)
        .prefetch(4)
    )


def _epoch(iterable: Any, total: int, desc: str) -> tuple[int, float, float]:
    started = time.perf_counter()
    first = None
    samples = 0
    for images, _labels in tqdm(iterable, total=total, desc=desc, unit="batch", leave=False):
        if first is None:
            first = time.perf_counter() - started
        samples += len(images)
    return samples, time.perf_counter() - started, first or 0.0


def main(epochs: int = 2, images: int = IMAGES, compare: bool = True, plot: str | None = None) -> int:
    """Run the demo; ``compare=False`` skips torch DataLoader; ``plot``: a PNG of the timeline."""
    root = cache_dir(images)
    print(f"dataset: {images} JPEGs {SIZE[0]}x{SIZE[1]} in {CLASSES} classes at {root}")
    started = time.perf_counter()
    source = build_dataset(root, images)
    print(f"  ready in {time.perf_counter() - started:.1f}s\n")

    loader = build_loader(source)
    batches = len(loader)
    print(f"aioloader: {loader!r}")
    results = []
    with loader:
        for epoch in range(epochs):
            results.append(_epoch(loader, batches, f"aioloader epoch {epoch}"))
            samples, elapsed, first = results[-1]
            print(
                f"  epoch {epoch}: {samples / elapsed:8,.0f} samples/s   first batch {first * 1000:6.1f} ms"
            )
        stats = loader.stats()
        print(loader.report())
    if plot is not None:
        from aioloader.monitor.plot import plot_timeline

        print(f"timeline written to {plot_timeline(stats, plot)}")
    if not compare:
        return 0
    print()

    torch_loader = DataLoader(
        _TorchImages(source), batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True
    )
    print("torch DataLoader(num_workers=2, persistent_workers=True), same read + decode:")
    torch_results = []
    for epoch in range(epochs):
        torch_results.append(_epoch(torch_loader, batches, f"torch epoch {epoch}"))
        samples, elapsed, first = torch_results[-1]
        print(f"  epoch {epoch}: {samples / elapsed:8,.0f} samples/s   first batch {first * 1000:6.1f} ms")
    del torch_loader

    ours = sum(r[0] for r in results) / sum(r[1] for r in results)
    theirs = sum(r[0] for r in torch_results) / sum(r[1] for r in torch_results)
    print(f"\naioloader / torch DataLoader: {ours / theirs:.2f}x ({ours:,.0f} vs {theirs:,.0f} samples/s)")
    return 0
