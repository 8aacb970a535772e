"""Text lines: pure-Python tokenisation (a word->id dict lookup per word, a per-character
fallback for unknown words) and padding to the longest line of the batch; batch 64, 200k lines
of 5-120 words, generated once into ``.cache/bench``.

The tokeniser holds the GIL, so threads cannot help: this is the process pool's workload. torch
DataLoader tokenises in ``__getitem__`` and pads in ``collate_fn``. aioloader runs it as written
naturally (``.map(tokenize, executor="process").batch(64, collate=pad)``, which map-then-batch
fusion runs as one task per batch: tokenize and pad in the worker) and restructured by hand
(``.batch(64, collate=list).map(tokenize_and_pad, executor="process")``); auto is the natural
spelling with ``executor="auto"``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import aioloader as al
from bench.harness import best_ratio, compare, table

BATCH = 64
LINES = 200_000
_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench"
_VOCAB_WORDS = 6000
_KNOWN_WORDS = 5000  # the rest fall back to characters
_CHAR_BASE = _KNOWN_WORDS + 2


def _words(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(_VOCAB_WORDS)]


def text_file(lines: int = LINES) -> Path:
    """The corpus (``lines`` lines of 5-120 words, Zipf-like word frequencies), made once."""
    path = _CACHE / f"text_{lines}.txt"
    if path.exists():
        return path
    rng = random.Random(0)
    words = _words(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(words, weights, k=rng.randint(5, 120))) + "\n")
    tmp.replace(path)
    return path


VOCAB = {word: i + 2 for i, word in enumerate(_words(random.Random(0))[:_KNOWN_WORDS])}


def tokenize(line: str) -> list[int]:
    """Word ids; an unknown word becomes its characters' ids (pure Python, holds the GIL)."""
    ids = []
    vocab = VOCAB
    for word in line.split():
        token = vocab.get(word)
        if token is None:
            ids.extend(_CHAR_BASE + (ord(c) & 255) for c in word)
        else:
            ids.append(token)
    return ids


def pad(batch: list[list[int]]) -> torch.Tensor:
    """Right-pad with 0 to the longest sequence of the batch."""
    longest = max(len(ids) for ids in batch)
    out = np.zeros((len(batch), longest), dtype=np.int64)
    for row, ids in enumerate(batch):
        out[row, : len(ids)] = ids
    return torch.from_numpy(out)


def tokenize_and_pad(lines: list[str]) -> torch.Tensor:
    return pad([tokenize(line) for line in lines])


class TextDataset(Dataset):
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> list[int]:
        return tokenize(self.lines[index])


def run(quick: bool = False) -> str:
    lines = text_file().read_text().splitlines()
    if quick:
        lines = lines[:40_000]
    dataset = TextDataset(lines)
    per_item = (
        al.Loader.from_source(lines)
        .map(tokenize, executor="process", concurrency=2)
        .batch(BATCH, collate=pad)
    )
    per_batch = (
        al.Loader.from_source(lines)
        .batch(BATCH, collate=al.collate.as_list)
        .map(tokenize_and_pad, executor="process", concurrency=2)
    )
    auto = al.Loader.from_source(lines).map(tokenize, concurrency="auto").batch(BATCH, collate=pad)
    contenders = [
        ("torch DL w=0", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=0, collate_fn=pad)),
        ("torch DL w=2", lambda: DataLoader(dataset, batch_size=BATCH, num_workers=2, collate_fn=pad)),
        # iter(): the harness closes what it gets; closing an epoch's iterator keeps the pool,
        # which starts once (the first round) and persists across epochs, as designed.
        ("aioloader process, per item", lambda: iter(per_item)),
        ("aioloader process, per batch", lambda: iter(per_batch)),
        ("aioloader auto, per item", lambda: iter(auto)),
    ]
    try:
        results = compare(contenders, rounds=1 if quick else 3)
    finally:
        per_item.close()
        per_batch.close()
        auto.close()
    title = f"text: {len(lines):,} lines of 5-120 words, tokenize + pad, batch {BATCH}"
    return table(title, results, ["torch DL w=0", "torch DL w=2"]) + best_ratio(
        results, "aioloader auto, per item", ["aioloader process, per item", "aioloader process, per batch"]
    )
