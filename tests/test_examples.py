"""Every example runs as a user runs it (``python examples/NAME.py``) and exits 0."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def _run(name: str) -> subprocess.CompletedProcess[str] | subprocess.TimeoutExpired:
    try:
        return subprocess.run(
            [sys.executable, f"examples/{name}"], cwd=ROOT, capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it; its test reports it
        return exc


@pytest.fixture(scope="module")
def runs(request) -> dict[str, subprocess.CompletedProcess[str] | subprocess.TimeoutExpired]:
    """The selected examples' runs, two at a time: each is a fresh interpreter that spends most
    of its time importing torch on one core, so two of them keep a 2-core machine busy (every
    run has ended when this returns)."""
    names = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and item.originalname == "test_example_runs"
    ]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="examples") as pool:
        return dict(zip(names, pool.map(_run, names), strict=True))


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first test waits for every example's run
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(runs, name):
    result = runs[name]
    assert not isinstance(result, subprocess.TimeoutExpired), f"{name} ran past {result.timeout} s"
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{name} printed nothing"
