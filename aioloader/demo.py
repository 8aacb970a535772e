"""``aioloader demo``: stream a built-in image dataset and report throughput beside torch.

Builds (once, in a cache folder) 2,000 JPEGs (``--images``) of 320x240 in 10 class folders,
streams two epochs through a realistic pipeline (read + Pillow decode + resize to 224, placed by
``executor="auto"``, batching, prefetch) with a progress bar, then prints samples/s, time to
first batch, ``Loader.report()`` with the bottleneck, and the same work through
``torch.utils.data.DataLoader``. ``--plot out.png`` draws the last epoch's timeline.
"""

from __future__ import annotations

import io
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

IMAGES = 2000
CLASSES = 10
SIZE = (320, 240)
OUT = 224
BATCH = 32


def cache_dir(images: int = IMAGES) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    suffix = "" if images == IMAGES else f"-{images}"
    return Path(base) / "aioloader" / f"demo-images{suffix}"


def build_dataset(root: Path, images: int = IMAGES) -> list[tuple[str, int]]:
    """``images`` JPEGs of smooth random colour fields; made once, reused afterwards."""
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
    return [(str(p), int(p.parent.name[-2:])) for p in sorted(root.glob("class_*/*.jpg"))]


def read_file(item: tuple[str, int]) -> tuple[bytes, int]:
    path, label = item
    with open(path, "rb") as f:
        return f.read(), label


def load(item: tuple[str, int]) -> tuple[torch.Tensor, int]:
    """Read and decode in one task: for local files a thread read beats async file I/O
    (aiofiles costs a thread round trip per open/read/close)."""
    return decode(read_file(item))


def decode(item: tuple[bytes, int]) -> tuple[torch.Tensor, int]:
    """JPEG bytes -> uint8 CHW tensor of OUT x OUT (Pillow releases the GIL meanwhile)."""
    data, label = item
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB").resize((OUT, OUT), Image.BILINEAR)
        array = np.asarray(img)
    return torch.from_numpy(array.copy()).permute(2, 0, 1), label


class _TorchImages(Dataset):
    """The same work as the aioloader pipeline, the torch way: read + decode in __getitem__."""

    def __init__(self, items: list[tuple[str, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load(self.items[index])


def build_loader(items: list[tuple[str, int]]) -> al.Loader:
    return al.Loader.from_source(items, shuffle=True, seed=0).map(load, name="load").batch(BATCH).prefetch(4)


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
    items = build_dataset(root, images)
    print(f"  ready in {time.perf_counter() - started:.1f}s\n")

    loader = build_loader(items)
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
        _TorchImages(items), batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True
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
