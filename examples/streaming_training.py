"""A streaming training loop: images decoded in threads, batched, copied to the GPU ahead.

``.to_device("cuda")`` copies each batch on a side CUDA stream while the previous step runs and
turns uint8 images into normalised floats on the GPU; without a GPU the same pipeline runs on
the CPU (``to_device("cpu")``). A tiny CNN trains two epochs; ``set_epoch`` picks the order.

    python examples/streaming_training.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _data import make_images
from torch import nn

import aioloader as al


def build_loader(root: Path, device: str) -> al.Loader:
    return (
        al.Loader.from_source(al.sources.ImageFolder(root), shuffle=True, seed=0)
        .map(al.transforms.decode_image(48), executor="thread", concurrency=2)
        .batch(32)
        .prefetch(4)
        .to_device(device, normalize=True)  # uint8 -> ImageNet-normalised float32 on the device
    )


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_images(Path(tmp) / "images", count=256)
        with build_loader(root, device) as loader:
            print(f"device {device}: {loader!r}")
            for epoch in range(2):
                loader.set_epoch(epoch)
                started, losses = time.perf_counter(), []
                for images, labels in loader:
                    loss = nn.functional.cross_entropy(model(images), labels.to(device, non_blocking=True))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                elapsed = time.perf_counter() - started
                print(f"epoch {epoch}: loss {sum(losses) / len(losses):.3f}, {256 / elapsed:.0f} samples/s")
            print(f"bottleneck: {loader.stats()['bottleneck']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
