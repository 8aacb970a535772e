"""Small generated datasets shared by the examples (each example makes its own in a temp dir)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from PIL import Image


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer (``encode`` + ``pad_token_id``): words hashed
    into a 30k vocabulary. Stateless and picklable, so worker processes agree on the ids."""

    pad_token_id = 0
    vocab_size = 30_000

    def encode(self, text: str) -> list[int]:
        return (
            [101]
            + [
                sum(ord(c) * 31**i for i, c in enumerate(w)) % (self.vocab_size - 200) + 200
                for w in text.split()
            ]
            + [102]
        )


def make_images(root: Path, count: int = 96, classes: int = 4, size: tuple[int, int] = (64, 48)) -> Path:
    """``count`` JPEGs of smooth random colour fields in ``classes`` class folders under ``root``."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize(size, Image.Resampling.BILINEAR).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def make_text(path: Path, lines: int = 2000) -> Path:
    """A text file of ``lines`` sentences of 3-20 words."""
    rng = np.random.default_rng(1)
    words = ["data", "loader", "async", "stream", "batch", "tensor", "shuffle", "epoch", "model", "token"]
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choice(words, rng.integers(3, 21))) + "\n")
    return path


def make_hdf5(path: Path, rows: int = 4096, features: int = 32, classes: int = 10) -> Path:
    """An HDF5 file with ``features`` [rows, features] float32 (chunked) and ``labels`` [rows]."""
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "features", data=rng.standard_normal((rows, features), dtype=np.float32), chunks=(256, features)
        )
        f.create_dataset("labels", data=rng.integers(0, classes, rows))
    return path


def make_jsonl(path: Path, records: int = 500) -> Path:
    with open(path, "w") as f:
        for i in range(records):
            f.write(json.dumps({"id": i, "text": f"record {i}"}) + "\n")
    return path
