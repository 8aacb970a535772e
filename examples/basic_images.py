"""Seed example 1: basic image loading with DataLoaderFactory.

Makes 96 small JPEGs in 4 class folders, then loads them as the seed's first usage example
does: an ``ImageDataset``, a DataLoaderConfig, ``DataLoaderFactory.create_dataloader(dataset,
config)``, and a loop over (images, labels) batches.

    python examples/basic_images.py
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from _data import make_images

import aioloader as al
from aioloader import DataLoaderConfig, DataLoaderFactory, ImageDataset, LoadingMode


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = make_images(Path(tmp) / "images")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pin_memory turns itself off without CUDA
            config = DataLoaderConfig(
                batch_size=16, num_workers=2, pin_memory=True, shuffle=True, generator_seed=0
            )
        dataset = ImageDataset(data_path=str(path), image_size=(64, 64), loading_mode=LoadingMode.LAZY)
        image_loader = DataLoaderFactory.create_dataloader(dataset, config)
        with image_loader:
            print(f"{len(image_loader.dataset)} images, {len(image_loader)} batches per epoch")
            for epoch in range(2):
                for batch_idx, (images, labels) in enumerate(image_loader):
                    if batch_idx == 0:
                        print(
                            f"epoch {epoch}: images {tuple(images.shape)} {images.dtype} on {images.device}, labels {labels[:8].tolist()}"
                        )
            stats = image_loader.get_stats()
        print(
            f"{stats['samples']} samples in {stats['epochs']} epochs; last epoch {stats['batches_per_second']:.0f} batches/s"
        )
        print(f"bottleneck stage: {stats['pipeline']['bottleneck']}")
    print(f"optimal number of workers here: {al.optimal_num_workers()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
