"""``python bench/gpu_copy.py``: does ``to_device("cuda")`` hide the host-to-device copy?

A synthetic training step (a loop of matmuls calibrated to about T ms, T in {5, 20} by default)
consumes batches of about 20 MB (uint8 images, 3x224x224). For each T it measures the step time
(ms per step, wall clock over the epoch) when fed by:

- ``gpu-resident``: the batch already on the GPU (the floor: no data loading at all);
- ``aioloader``: ``Loader...batch(B).prefetch(4).to_device("cuda")``;
- ``aioloader normalize``: the same with ``normalize=True`` (uint8 sent, floats made on the GPU);
- ``torch DataLoader``: ``DataLoader(pin_memory=True, num_workers=2)`` + ``.to(non_blocking=True)``.

It also reports the copy bandwidth the loader achieves with an empty step against a plain
pinned ``.to(non_blocking=True)`` copy of the same bytes. Prints markdown tables; exits 0 with a
message when no GPU is present.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

IMAGE_SHAPE = (3, 224, 224)
IMAGE_BYTES = 3 * 224 * 224
MATMUL_N = 2048


@dataclass(frozen=True)
class Row:
    name: str
    step_ms: float
    floor_ms: float

    @property
    def overhead_ms(self) -> float:
        return self.step_ms - self.floor_ms


def batch_size_for(batch_mb: float) -> int:
    """Images of 3x224x224 uint8 per batch for about ``batch_mb`` MB (at least 1)."""
    return max(1, round(batch_mb * 1e6 / IMAGE_BYTES))


def markdown_table(rows: list[Row], step_target_ms: float) -> str:
    lines = [
        f"step ~{step_target_ms:g} ms | ms/step | overhead vs gpu-resident (ms) | step / gpu-resident",
        "---|---|---|---",
    ]
    for row in rows:
        ratio = row.step_ms / row.floor_ms if row.floor_ms > 0 else float("nan")
        lines.append(f"{row.name} | {row.step_ms:.2f} | {row.overhead_ms:+.2f} | {ratio:.3f}")
    return "\n".join(lines)


def bandwidth_table(results: list[tuple[str, float]]) -> str:
    lines = ["copy | GB/s", "---|---"]
    lines += [f"{name} | {gbps:.2f}" for name, gbps in results]
    return "\n".join(lines)


# -- GPU parts ---------------------------------------------------------------------------------
class Images(torch.utils.data.Dataset):
    """``n`` random uint8 images and int labels, made once (decode is not what we measure)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, *IMAGE_SHAPE), dtype=torch.uint8, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], i


def calibrate(target_ms: float) -> Callable[[Any], torch.Tensor]:
    """A step of ``k`` matmuls taking about ``target_ms`` on this GPU; it reads the batch."""
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda")

    def matmuls(k: int) -> torch.Tensor:
        x = a
        for _ in range(k):
            x = torch.tanh(x @ a)
        return x

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    matmuls(3)
    start.record()
    matmuls(10)
    end.record()
    end.synchronize()
    per = start.elapsed_time(end) / 10
    k = max(1, round(target_ms / per)) if target_ms > 0 else 0

    def step(batch: Any) -> torch.Tensor:
        images = batch[0]
        x = matmuls(k)
        return x[0, 0] + images[:, :, 0, 0].float().mean()  # depends on the batch

    return step


def timed_epoch(batches: Iterable[Any], step: Callable[[Any], torch.Tensor], warmup: int) -> float:
    """ms per step over an epoch, after ``warmup`` steps."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    torch.cuda.synchronize()
    n, started = 0, time.perf_counter()
    for batch in it:
        step(batch)
        n += 1
    torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1e3 / max(n, 1)


def _dataloader(dataset: Images, batch: int) -> Iterable[Any]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, pin_memory=True, num_workers=2)
    for images, labels in loader:
        yield images.to("cuda", non_blocking=True), labels.to("cuda", non_blocking=True)


def plain_copy_gbps(nbytes: int, *, pinned: bool, reps: int = 20) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    host.to("cuda", non_blocking=pinned)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        host.to("cuda", non_blocking=pinned)
    torch.cuda.synchronize()
    return nbytes * reps / (time.perf_counter() - started) / 1e9


def measure(args: argparse.Namespace) -> str:
    import aioloader as al

    batch = batch_size_for(args.batch_mb)
    dataset = Images(batch * (args.steps + args.warmup))
    base = al.Loader.from_source(dataset).batch(batch).prefetch(4)
    out = [
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {batch} x 3x224x224 "
        f"uint8 = {batch * IMAGE_BYTES / 1e6:.1f} MB, {args.steps} steps\n"
    ]
    for target in args.step_ms:
        step = calibrate(target)
        resident = (dataset.images[:batch].cuda(), torch.arange(batch, device="cuda"))
        floor = timed_epoch([resident] * (args.steps + args.warmup), step, args.warmup)
        rows = [Row("gpu-resident", floor, floor)]
        with base.to_device("cuda") as loader:
            rows.append(Row("aioloader", timed_epoch(loader, step, args.warmup), floor))
        with base.to_device("cuda", normalize=True) as loader:
            rows.append(Row("aioloader normalize", timed_epoch(loader, step, args.warmup), floor))
        rows.append(
            Row("torch DataLoader", timed_epoch(_dataloader(dataset, batch), step, args.warmup), floor)
        )
        out.append(markdown_table(rows, target) + "\n")
    nbytes = batch * IMAGE_BYTES
    with base.to_device("cuda") as loader:
        ms = timed_epoch(loader, lambda b: b[0], args.warmup)
    out.append(
        bandwidth_table(
            [
                ("aioloader to_device (empty step, incl. collate)", nbytes / (ms / 1e3) / 1e9),
                ("plain pinned .to(non_blocking=True)", plain_copy_gbps(nbytes, pinned=True)),
                ("plain pageable .to()", plain_copy_gbps(nbytes, pinned=False)),
            ]
        )
    )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/gpu_copy.py", description=__doc__.split("\n")[0])
    parser.add_argument("--step-ms", type=float, nargs="+", default=[5.0, 20.0])
    parser.add_argument("--batch-mb", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_copy: no CUDA device (torch.cuda.is_available() is False); this benchmark measures "
            "host-to-device copies and needs a GPU. Nothing was measured."
        )
        return 0
    print(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
