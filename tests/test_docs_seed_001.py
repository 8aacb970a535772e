"""docs/seed-001.md: every seed 001 sketch has a row, and every Python block of the page runs
as written (each in a fresh namespace, in a temporary directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "seed-001.md"
TEXT = PAGE.read_text()
BLOCKS = re.findall(r"^## (.+?)\n.*?^```python\n(.*?)^```", TEXT, flags=re.S | re.M)
SKETCHES = [
    "RobustDataLoader",
    "DataValidator",
    "ProfiledDataLoader",
    "ABTestDataLoader",
    "AdaptiveDataLoader",
    "StreamingDataset",
    "MemoryMappedDataset",
    "balanced_distributed_sampler",
    "pinned memory",
    "stream overlap",
    "MemoryPool",
]


def test_every_sketch_of_seed_001_has_a_row_and_a_snippet():
    rows = [line for line in TEXT.splitlines() if line.startswith("| ")]
    titles = [title for title, _ in BLOCKS]
    for sketch in SKETCHES:
        assert any(row.split("|")[1].strip(" `").startswith(sketch) for row in rows), sketch
        assert any(sketch.lower() in t.lower() for t in titles), sketch
    assert len(BLOCKS) == 12


@pytest.mark.parametrize("title, code", BLOCKS, ids=[t for t, _ in BLOCKS])
def test_snippet_runs(title, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{PAGE.name}: {title}", "exec"), {"__name__": "seed001_snippet"})
