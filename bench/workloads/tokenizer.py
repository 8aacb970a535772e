"""A tokenizer the placement rules were not tuned on (issue 23), written the way a new user
would: ``TextLines(path)`` shuffled, ``.map(tokenize).batch(64, collate=al.collate.pad)``.

``tokenize`` is Python ``str.split``, a hash per word and ``torch.tensor`` (20-30 us a line on
an idle core), over the text workload's 200k lines of 5-120 words. The hash is ``zlib.crc32``,
not ``hash()``: Python's string hash is salted per process, so the same line would give other
ids in a worker process. torch DataLoader reads the lines from a list in a map-style Dataset,
tokenizes in ``__getitem__`` and pads with ``pad_sequence``. aioloader runs it inline, in 2
threads, in 2 processes and with the default ``executor="auto"``.
"""

from __future__ import annotations

import zlib
from functools import partial

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

import aioloader as al
from bench.harness import auto_verdict, compare, table
from bench.workloads.text import text_file

BATCH = 64
VOCAB = 50_000


def tokenize(line: str) -> torch.Tensor:
    """Word ids by hashing (pure Python per word, then one ``torch.tensor``)."""
    return torch.tensor([zlib.crc32(word.encode()) % VOCAB for word in line.split()], dtype=torch.int64)


class LinesDataset(Dataset):
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> torch.Tensor:
        return tokenize(self.lines[index])


def run(quick: bool = False) -> str:
    path = text_file()
    lines = path.read_text().splitlines()
    if quick:  # a shorter file of the same lines
        path = path.with_name("tokenizer_quick.txt")
        if not path.exists():
            path.write_text("\n".join(lines[:40_000]) + "\n")
        lines = lines[:40_000]
    dataset = LinesDataset(lines)
    collate = partial(pad_sequence, batch_first=True)

    def plain(**options: object) -> al.Loader:
        source = al.sources.TextLines(path)
        return al.Loader.from_source(source, shuffle=True, seed=0).map(tokenize, **options).batch(
            BATCH, collate=al.collate.pad
        )

    loaders = {
        "aioloader inline": plain(executor="inline"),
        "aioloader thread=2": plain(executor="thread", concurrency=2),
        "aioloader process=2": plain(executor="process", concurrency=2),
        "aioloader auto": plain(),
    }
    contenders = [
        ("torch DL w=0", lambda: DataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=collate)),
        (
            "torch DL w=2",
            lambda: DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2, collate_fn=collate),
        ),
        # iter(): a pool starts in the first round and persists across epochs, as designed
        *((name, lambda loader=loader: iter(loader)) for name, loader in loaders.items()),
    ]
    try:
        results = compare(contenders, rounds=1 if quick else 3)
    finally:
        for loader in loaders.values():
            loader.close()
    by_name = {r.name: r for r in results}
    torch_best = max(by_name["torch DL w=0"].samples_per_s, by_name["torch DL w=2"].samples_per_s)
    auto = by_name["aioloader auto"].samples_per_s / torch_best
    title = f"tokenizer: TextLines shuffled, {len(lines):,} lines, split + crc32 + torch.tensor, pad, batch {BATCH}"
    placed = ["aioloader inline", "aioloader thread=2", "aioloader process=2"]
    return (
        table(title, results, ["torch DL w=0", "torch DL w=2"], steady=True)
        + auto_verdict(results, "aioloader auto", "aioloader inline", placed)
        + f"\n\nauto / torch DL's best: **{auto:.2f}x** (target 1.3x)"
    )
