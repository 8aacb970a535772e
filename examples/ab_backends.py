"""Seed example 4: A/B testing the two backends with the performance monitor.

The same dataset and DataLoaderConfig run on ``backend="torch"`` (the seed's torch
DataLoader) and ``backend="aio"`` (the aioloader engine). Unshuffled, both yield the same
batches (checked here); a DataLoaderPerformanceMonitor measures each.

    python examples/ab_backends.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _data import make_images

from aioloader import DataLoaderConfig, DataLoaderPerformanceMonitor, EfficientDataLoader, ImageDataset


def run(dataset: ImageDataset, config: DataLoaderConfig, backend: str) -> tuple[list, dict]:
    monitor = DataLoaderPerformanceMonitor()
    batches = []
    with EfficientDataLoader(dataset, config, backend=backend) as loader:
        monitor.start()
        for images, labels in loader:
            monitor.record_batch(images.size(0))
            batches.append((images, labels))
        monitor.stop()
    return batches, monitor.get_stats()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        dataset = ImageDataset(make_images(Path(tmp) / "images", count=128), image_size=(64, 64))
        config = DataLoaderConfig(batch_size=16, num_workers=2, pin_memory=False, shuffle=False)
        results = {backend: run(dataset, config, backend) for backend in ("torch", "aio")}
    (theirs, _), (ours, _) = results["torch"], results["aio"]
    same = len(theirs) == len(ours) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(theirs, ours, strict=True)
    )
    print(f"{'backend':<8}{'batches/s':>11}{'avg batch ms':>14}{'memory %':>10}{'cpu %':>8}")
    for backend, (_, stats) in results.items():
        print(
            f"{backend:<8}{stats['batches_per_second']:>11.1f}{stats['avg_batch_time'] * 1000:>14.2f}"
            f"{stats['avg_memory_usage']:>10.1f}{stats['avg_cpu_usage']:>8.0f}"
        )
    print(f"same batches, same order: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
