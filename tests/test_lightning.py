"""PyTorch Lightning with an aioloader Loader under ``strategy="ddp"`` (2 CPU ranks, gloo).

Lightning saves rank 0's loader state in the checkpoint and hands it to every rank; each rank
must continue its own share at the same step. With ``limit_train_batches`` an epoch ends early,
and a checkpoint at its end must resume into the next epoch, as the uninterrupted run does.
The run itself is ``tests/_lightning_ddp.py`` (Lightning starts rank 1 by running it again)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_with_repo

SCRIPT = Path(__file__).with_name("_lightning_ddp.py")
EPOCHS = 2  # as in the script: 6 batches per rank and epoch
LIMIT, MID_STEP = 4, 2  # limit_train_batches; the mid-epoch checkpoint's step
# Two fresh interpreters import Lightning, one after the other: 34 s and 25 s of the 80-86 s a
# run took at load 18 on 2 cores (the training itself: 10 s); 120 s was cut short under load.
RUN_LIMIT_S = 360


@pytest.mark.slow
@pytest.mark.timeout(RUN_LIMIT_S + 60)
def test_ddp_resume_from_rank_0s_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    args = [sys.executable, str(SCRIPT), str(tmp_path), str(LIMIT), str(MID_STEP)]
    done = run_with_repo(args, cwd=tmp_path, timeout=RUN_LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]

    def seen(tag: str, rank: int) -> list[list[int]]:
        return json.loads((tmp_path / f"{tag}-{rank}.json").read_text())

    for rank in (0, 1):
        full = seen("full", rank)
        assert len(full) == EPOCHS * LIMIT
        assert seen("from_mid", rank) == full[MID_STEP:]
        assert seen("from_epoch_end", rank) == full[LIMIT:]

    def samples(batches: list[list[int]]) -> set[int]:
        return {sample for batch in batches for sample in batch[2:]}

    # the ranks read their own shares of the epoch
    assert samples(seen("full", 0)[:LIMIT]).isdisjoint(samples(seen("full", 1)[:LIMIT]))
