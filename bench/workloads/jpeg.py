"""JPEG decode + resize to 224, batch 32: 1500 JPEGs of 320x240 in 10 class folders.

The images are generated once into ``.cache/bench`` (smooth gradients plus noise, so they
compress like photos rather than like pure noise). Every contender decodes with the same
function, ``al.transforms.decode_image(224)`` (Pillow decodes to RGB; the antialiased bilinear
resize to 224x224 runs in torch's uint8 kernel, within one level of Pillow's ``BILINEAR`` and
2.8x faster), and shuffles with the same seed.
aioloader reads the files on its event loop (from the page cache, else with aiofiles) and
decodes in threads (Pillow releases the GIL) or processes; torch DataLoader reads and decodes in
its workers. "decode per sample" is ``.map(decode).batch(32)`` as a user writes it (fused into
one task per batch: decode and stack in the worker); "decode per batch" restructures it by hand.

The "ceiling" row is what this machine can do at all: two processes doing nothing but read +
decode_image on their halves of a list of paths (a ProcessPoolExecutor with tasks of 32 paths,
returning only a count), no batching, no transfer of images, no loader.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import aioloader as al
from aioloader.transforms import decode_image
from bench.harness import best_ratio, compare, table

BATCH = 32
SIZE = 224
CLASSES = 10
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench"


def make_images(n: int, root: Path | None = None) -> Path:
    """``n`` JPEGs of 320x240 under ``root/<class>/``; made once, reused by later runs."""
    root = root or CACHE / f"jpeg-{n}"
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    for i in range(n):
        folder = root / f"class{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * a, yy * b, (xx + yy) * c / 2], axis=-1) % 256
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    done.touch()
    return root


class TorchJpegDataset(Dataset):
    """The torch baseline: read the file and decode it in ``__getitem__``."""

    def __init__(self, source: al.sources.ImageFolder) -> None:
        self.paths = [str(source.root / f) for f in source.files]
        self.labels = source.targets
        self.decode = decode_image(size=SIZE)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[index], "rb") as f:
            return self.decode(f.read()), self.labels[index]


class DecodeBatch:
    """Decode a list of ``(raw, label)`` items into one preallocated batch: one pool task per
    batch, so 32 images cost one thread hand-off instead of 32."""

    def __init__(self) -> None:
        self.decode = decode_image(size=SIZE)

    def __call__(self, items: list[tuple[bytes, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.empty((len(items), 3, SIZE, SIZE), dtype=torch.uint8)
        for i, (raw, _) in enumerate(items):
            images[i] = self.decode.decode(raw)
        return images, torch.tensor([label for _, label in items])


_CEILING_DECODE = decode_image(size=SIZE)


def decode_files(paths: list[str]) -> int:
    """The ceiling's task: read and decode ``paths``, keep nothing."""
    for path in paths:
        with open(path, "rb") as f:
            _CEILING_DECODE.decode(f.read())
    return len(paths)


def _ceiling(pool: ProcessPoolExecutor, paths: list[str]) -> Iterator[torch.Tensor]:
    chunks = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    for count in pool.map(decode_files, chunks):
        yield torch.empty((count, 0))


def run(quick: bool = False) -> str:
    n = 300 if quick else 1500
    root = make_images(n)
    source = al.sources.ImageFolder(root)
    dataset = TorchJpegDataset(source)
    decode = decode_image(size=SIZE)
    threads = max(2, os.cpu_count() or 1)

    def torch_loader(workers: int) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, generator=generator)

    per_item = (
        al.Loader.from_source(source, shuffle=True, seed=0)
        .map(decode, executor="thread", concurrency=threads)
        .batch(BATCH)
    )
    per_batch = (
        al.Loader.from_source(source, shuffle=True, seed=0)
        .batch(BATCH, collate=al.collate.as_list)
        .map(DecodeBatch(), executor="thread", concurrency=threads)
    )
    per_process = (
        al.Loader.from_source(source, shuffle=True, seed=0)
        .map(decode, executor="process", concurrency=2)
        .batch(BATCH)
    )
    auto = al.Loader.from_source(source, shuffle=True, seed=0).map(decode, concurrency="auto").batch(BATCH)
    ceiling = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    list(ceiling.map(decode_files, [dataset.paths[:2]] * 2))  # started before it is measured
    contenders = [
        ("torch DL w=0", lambda: torch_loader(0)),
        ("torch DL w=2", lambda: torch_loader(2)),
        (f"aioloader threads={threads}, decode per sample", lambda: iter(per_item)),
        (f"aioloader threads={threads}, decode per batch", lambda: iter(per_batch)),
        # iter(): the harness closes what it gets; an epoch's iterator closes, the pool persists.
        ("aioloader processes=2, decode per sample", lambda: iter(per_process)),
        ("aioloader auto, decode per sample", lambda: iter(auto)),
        ("ceiling: 2 processes decoding, no loader", lambda: _ceiling(ceiling, dataset.paths)),
    ]
    try:
        results = compare(contenders, rounds=1 if quick else 3)
    finally:
        per_item.close()
        per_batch.close()
        per_process.close()
        auto.close()
        ceiling.shutdown()
    hand_tuned = [name for name, _ in contenders if name.startswith("aioloader") and "auto" not in name]
    by_name = {r.name: r for r in results}
    best = max((by_name[name] for name in hand_tuned), key=lambda r: r.samples_per_s)
    top = by_name["ceiling: 2 processes decoding, no loader"].samples_per_s
    torch_top = by_name["torch DL w=2"].samples_per_s
    ceiling_line = (
        f"\n\nof the ceiling: best aioloader ({best.name}) {best.samples_per_s / top:.2f}, "
        f"torch DL w=2 {torch_top / top:.2f}; the ceiling is {top / torch_top:.2f}x torch DL w=2"
    )
    return (
        table(
            f"jpeg: {n:,} JPEGs 320x240, decode + resize {SIZE}, batch {BATCH}",
            results,
            ["torch DL w=0", "torch DL w=2"],
        )
        + best_ratio(results, "aioloader auto, decode per sample", hand_tuned)
        + ceiling_line
    )
