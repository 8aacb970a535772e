"""Resuming after an interruption: the state saved to a file, a fresh Loader continues.

A child process trains for 5 batches, saves ``loader.state_dict()`` (small JSON: keys and
counters, not data) and dies. A fresh Loader in this process loads the file and yields exactly
the batches the uninterrupted run would have yielded next, reservoir shuffle included.

    python examples/resume.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import aioloader as al

STOP_AFTER = 5


def build_loader() -> al.Loader:
    rows = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    return al.Loader.from_source(rows, shuffle=True, seed=42).shuffle(64).batch(16)


def interrupted_run(state_path: str) -> int:
    """Train a few batches, save the state, then stop abruptly (no clean shutdown)."""
    loader = build_loader()
    batches = iter(loader)
    for _ in range(STOP_AFTER):
        next(batches)
    Path(state_path).write_text(json.dumps(loader.state_dict()))
    loader.close()
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / "loader_state.json"
        subprocess.run([sys.executable, __file__, "--interrupted-run", str(state_path)], check=True)
        state = json.loads(state_path.read_text())
        print(f"saved state: {len(state_path.read_text())} bytes, epoch {state['epoch']}")
        with build_loader() as resumed:
            resumed.load_state_dict(state)
            rest = [batch.clone() for batch in resumed]
    with build_loader() as full:
        uninterrupted = [batch.clone() for batch in full]
    same = len(rest) == len(uninterrupted) - STOP_AFTER and all(
        (a == b).all() for a, b in zip(rest, uninterrupted[STOP_AFTER:], strict=True)
    )
    print(
        f"resumed {len(rest)} batches; equal to batches {STOP_AFTER + 1}.. of the uninterrupted run: {bool(same)}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--interrupted-run":
        raise SystemExit(interrupted_run(sys.argv[2]))
    raise SystemExit(main())
