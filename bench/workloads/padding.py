"""Padding waste: the fraction of padded positions in text batches, with and without bucketing.

200k lines of 5-120 words (uniform, fixed seed), tokenized by words, batch 64, padded to the
longest in the batch. Plain batching pads every batch to ~its longest line (~47% padding);
bucketing by length (``Loader.bucket``) groups similar lengths, so padding falls to a few percent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

import aioloader as al

BATCH = 64
SEED = 0


class WordIds:
    """A word-level tokenizer over a fixed vocabulary (picklable)."""

    def __init__(self, vocabulary: list[str]) -> None:
        self.ids = {word: i + 1 for i, word in enumerate(vocabulary)}

    def encode(self, text: str) -> list[int]:
        ids = self.ids
        return [ids.get(word, 0) for word in text.split()]


def make_lines(n: int, seed: int = SEED) -> tuple[list[str], list[str]]:
    """``n`` lines of 5-120 words from a 5,000-word vocabulary; and the vocabulary."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    lengths = rng.integers(5, 121, n)
    words = rng.integers(0, len(vocabulary), int(lengths.sum())).tolist()
    lines, start = [], 0
    for length in lengths.tolist():
        lines.append(" ".join([vocabulary[w] for w in words[start : start + length]]))
        start += length
    return lines, vocabulary


def measure(name: str, make: Callable[[], al.Loader]) -> dict[str, float | str]:
    real = total = batches = samples = 0
    started = time.perf_counter()
    with make() as loader:
        for batch in loader:
            mask = batch.mask
            real += int(mask.sum())
            total += mask.numel()
            batches += 1
            samples += mask.shape[0]
    elapsed = time.perf_counter() - started
    return {
        "name": name,
        "padding": 1 - real / total,
        "batches": batches,
        "mean batch": samples / batches,
        "samples/s": samples / elapsed,
        "tokens (padded)": total,
    }


def run(quick: bool = False) -> str:
    n = 20_000 if quick else 200_000
    lines, vocabulary = make_lines(n)
    tokenize = al.transforms.Tokenize(WordIds(vocabulary))

    def base() -> al.Loader:
        return al.Loader.from_source(lines, shuffle=True, seed=SEED).map(tokenize)

    contenders = [
        ("batch(64)", lambda: base().batch(BATCH, collate=al.collate.pad)),
        (
            "bucket(width 16, 64)",
            lambda: base().bucket(range(16, 121, 16), batch_size=BATCH, collate=al.collate.pad),
        ),
        (
            "bucket(width 8, 64)",
            lambda: base().bucket(range(8, 121, 8), batch_size=BATCH, collate=al.collate.pad),
        ),
    ]
    results = [measure(name, make) for name, make in contenders]
    baseline = results[0]["padding"]
    lines_out = [
        f"### padding: {n:,} lines of 5-120 words, word tokens, batch {BATCH}, pad to longest",
        "",
        "| loader | padding fraction | x less padding | batches | mean batch | samples/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines_out.append(
            f"| {r['name']} | {r['padding']:.3f} | {baseline / r['padding']:.1f} | {r['batches']:,} | "
            f"{r['mean batch']:.1f} | {r['samples/s']:,.0f} |"
        )
    return "\n".join(lines_out)
