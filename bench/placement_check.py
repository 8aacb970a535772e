"""Where ``executor="auto"`` places five functions it was not tuned on, in fresh loaders.

``python -m bench.placement_check [--runs 5]``: each of a 5 us GIL holder, the issue 23 tokenizer
function, a 1 ms sleeper, sha256 of 1 MB (releases the GIL) and a JPEG decode with Pillow
(releases it) runs as ``Loader.from_source(...).map(fn).batch(64)`` in ``--runs`` fresh loaders;
each line prints the placements and the readings behind them (cost per batch in us, two threads'
speedup over one, the cores two threads used at once, the share of a core one thread had). Every
run of a function must agree. Right: the holder and the tokenizer never on threads (processes on
2 cores), the sleeper on threads; sha256 and the decode on threads where two cores are free (on a
machine too busy to give this process two cores at once they show no parallelism and go to
processes).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

import aioloader as al
from bench.workloads.gil import calibrate
from bench.workloads.text import text_file
from bench.workloads.tokenizer import tokenize

_MB = b"x" * (1 << 20)
_READINGS = ("cost_us", "thread_speedup", "parallel", "core_share")


def _jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


_JPEG = _jpeg()


def sha(x: int) -> int:
    hashlib.sha256(_MB).digest()
    return x


def sleeper(x: int) -> int:
    time.sleep(0.001)
    return x


def decode(x: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(_JPEG)).convert("RGB"))


def _cases() -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
    lines = text_file()
    return {
        "gil 5 us": (lambda: list(range(20_000)), calibrate(5)),
        "tokenizer": (lambda: al.sources.TextLines(lines), tokenize),
        "sleep 1 ms": (lambda: list(range(640)), sleeper),
        "sha256 1 MB": (lambda: list(range(640)), sha),
        "JPEG decode": (lambda: list(range(640)), decode),
    }


def placements(source: Callable[[], Any], fn: Callable[[Any], Any], runs: int) -> list[tuple[Any, ...]]:
    """(executor, readings...) of ``runs`` fresh loaders, each stopped after a few batches."""
    out = []
    for _ in range(runs):
        with (
            al.Loader.from_source(source()).map(fn, name="m").batch(64, collate=al.collate.as_list) as loader
        ):
            batches = iter(loader)
            for _ in range(3):  # the decision is made after the first block
                next(batches)
            stage = next(s for s in loader.stats()["stages"] if s["name"] == "m")
            batches.close()
        out.append((stage["executor"], *(stage["placement"][k] for k in _READINGS)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for name, (source, fn) in _cases().items():
        got = placements(source, fn, args.runs)
        print(
            f"{name}: {dict(collections.Counter(g[0] for g in got))}  (executor, {', '.join(_READINGS)}): {got}"
        )


if __name__ == "__main__":
    main()
