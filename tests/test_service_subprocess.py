"""``Loader.in_subprocess()``: the same batches, states and stats as in-process, from a child
process through shared memory, and nothing left behind on any exit path (the autouse fixture
checks child processes and /dev/shm segments after each test)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

import aioloader as al
from aioloader.errors import WorkerCrashError

ROOT = Path(__file__).resolve().parents[1]


def image(i: int) -> dict:
    # 64 KiB per sample: a batch of 8 goes through a shared-memory segment
    return {"pixels": torch.full((128, 128), i, dtype=torch.float32), "key": i, "label": np.int64(i % 3)}


def spec(n: int = 60) -> al.Loader:
    return al.Loader.from_source(list(range(n)), shuffle=True, seed=5).map(image).batch(8)


def keys(batches) -> list[list[int]]:
    return [b["key"].tolist() for b in batches]


def test_same_batches_states_and_stats_as_in_process():
    reference = spec()
    with reference, spec().in_subprocess() as sub:
        assert len(sub) == len(reference) == 8
        for _ in range(2):
            got = list(sub)
            expected = list(reference)
            assert keys(got) == keys(expected)
            assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(got, expected, strict=True))
            assert sub.state_dict() == reference.state_dict()
        stats = sub.stats()
        assert stats["batches"] == 8
        assert [s["name"] for s in stats["stages"]] == [s["name"] for s in reference.stats()["stages"]]
        # leaving the loop, or an exception in its body, stops the child's run; the next
        # iteration is the next epoch, as in-process
        epochs = [keys(reference) for _ in range(3)]
        for i, _ in enumerate(sub):
            if i == 2:
                break
        with pytest.raises(RuntimeError, match="training step"):
            for _ in sub:
                raise RuntimeError("training step failed")
        assert keys(sub) == epochs[2]


def test_async_iteration_and_resume_in_a_fresh_child():
    reference = keys(spec())

    async def head(sub) -> list[list[int]]:
        out = []
        async for batch in sub:
            out.append(batch["key"].tolist())
            if len(out) == 3:
                break
        return out

    with spec().in_subprocess(credits=2) as sub:
        first = asyncio.run(head(sub))
        state = sub.state_dict()
    assert state["position"] == 24
    with spec().in_subprocess() as fresh:
        fresh.load_state_dict(state)
        assert first + keys(fresh) == reference


def failing(i: int) -> int:
    if i == 13:
        raise ValueError("sample 13 is corrupt")
    return i


def test_pipeline_error_keeps_its_type_and_note():
    loader = al.Loader.from_source(list(range(40))).map(failing).batch(4)
    with loader.in_subprocess() as sub, pytest.raises(ValueError, match="corrupt") as info:
        list(sub)
    assert any("key 13" in note for note in info.value.__notes__)


def test_unpicklable_spec_is_refused_clearly():
    loader = al.Loader.from_source(list(range(4))).map(lambda x: x)
    with pytest.raises(TypeError, match="cannot be pickled"):
        loader.in_subprocess()


def test_close_mid_epoch_ends_the_child():
    sub = spec(600).in_subprocess()
    it = iter(sub)
    next(it)
    child = psutil.Process(sub.pid)
    sub.close()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(RuntimeError):
        next(it)
    sub.close()  # idempotent


@pytest.mark.slow
def test_a_killed_child_is_an_error_not_a_hang():
    with spec(600).in_subprocess(credits=1) as sub:
        it = iter(sub)
        next(it)
        os.kill(sub.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashError, match="SIGKILL"):
            for _ in it:
                pass


@pytest.mark.slow
def test_the_child_ends_when_the_parent_dies(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from tests.test_service_subprocess import spec
            if __name__ == "__main__":
                sub = spec(600).in_subprocess()
                it = iter(sub)
                next(it)
                print(sub.pid, flush=True)
                time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        child_pid = int(parent.stdout.readline())
        child = psutil.Process(child_pid)
        parent.kill()
        parent.wait()
        child.wait(timeout=10)  # its lifeline reached end of file
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    leftovers = [n for n in os.listdir("/dev/shm") if n.startswith(f"aioloader_{parent.pid}_")]
    assert not leftovers
