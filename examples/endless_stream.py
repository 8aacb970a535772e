"""An endless augmented stream through a reservoir, in constant memory.

The source is an endless generator of synthetic images; a random augmentation (drawn from
(seed, epoch, key), so reproducible) runs in threads; ``.shuffle(buffer_size)`` mixes the
stream with a reservoir of 512 samples. The process's memory stays flat while it runs.

    python examples/endless_stream.py
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psutil
import torch

import aioloader as al


class SyntheticImages:
    """An endless stream of (uint8 CHW image, label) pairs; each ``iter`` starts it again."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        rng = np.random.default_rng(0)
        i = 0
        while True:
            yield torch.from_numpy(rng.integers(0, 256, (3, 40, 40), dtype=np.uint8)), i % 10
            i += 1


def main() -> int:
    augment = al.transforms.Compose(
        [al.transforms.RandomResizedCrop(32), al.transforms.RandomHorizontalFlip()]
    )
    loader = (
        al.Loader.from_source(SyntheticImages(), seed=0)
        .map(augment, executor="thread", concurrency=2)
        .shuffle(512)
        .batch(64)
        .prefetch(2)
    )
    process = psutil.Process()
    rss = []
    with loader:
        for step, (images, labels) in enumerate(loader):
            if step % 50 == 0:
                rss.append(process.memory_info().rss / 2**20)
                print(
                    f"step {step}: batch {tuple(images.shape)}, labels {labels[:6].tolist()}, rss {rss[-1]:.0f} MiB"
                )
            if step == 200:
                break
    growth = rss[-1] - rss[1]
    print(f"memory growth after warm-up: {growth:+.1f} MiB over 150 batches")
    return 0 if growth < 64 else 1


if __name__ == "__main__":
    raise SystemExit(main())
