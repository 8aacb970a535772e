"""Every example runs as a user runs it (``python examples/NAME.py``) and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
SEED_EXAMPLES = {"basic_images.py", "text_tokenizer.py", "hdf5_features.py", "ab_backends.py"}
OTHER_EXAMPLES = {
    "streaming_training.py",
    "endless_stream.py",
    "resume.py",
    "distributed.py",
    "async_app.py",
}


def test_every_example_is_listed():
    assert set(EXAMPLES) == SEED_EXAMPLES | OTHER_EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
    result = subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{name} printed nothing"
