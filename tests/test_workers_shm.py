"""The shared-memory transport on its own (no processes): arrays and tensors come back as views
of a segment, small buffers stay in the pickle, a segment is handed back only when the last view
is gone, and the worker's arena reuses it."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

from aioloader.workers import shm

from .conftest import run_with_repo


def _segments(prefix: str) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def _pool_segments() -> set[str]:
    """The segments of the worker pools this test process started: their names begin with
    ``aioloader_<pid of the pool's owner>_`` (other test processes' pools share /dev/shm)."""
    return _segments(f"aioloader_{os.getpid()}_")


def test_large_arrays_travel_as_views_of_a_segment_and_are_released_when_unused():
    prefix = f"aioloader_test_{os.getpid()}_"
    arena = shm.SegmentArena(prefix)
    try:
        big = np.arange(200_000, dtype=np.float32)
        tensor = torch.arange(50_000, dtype=torch.int64)  # 400 KB
        small = np.arange(10, dtype=np.int16)
        frame = shm.pack({"big": big, "t": tensor, "small": small, "s": "text"}, arena)
        name, _, spans, data, dropped = frame
        assert dropped == []
        assert name is not None and len(spans) == 2  # big and t; small stays in the pickle
        assert len(data) < 2_000
        released: list[str] = []
        out = shm.unpack(frame, released.append)
        assert np.array_equal(out["big"], big) and torch.equal(out["t"], tensor)
        assert np.array_equal(out["small"], small) and out["s"] == "text"
        assert isinstance(out["t"], torch.Tensor)
        view = out["big"][1000:2000]
        del out
        gc.collect()
        assert released == []  # a view of the segment is still alive
        assert view[0] == 1000
        del view
        gc.collect()
        assert released == [name]
        arena.release(released)
        again = shm.pack(np.ones(100_000), arena)
        assert again[0] == name  # the segment is reused
        assert _segments(prefix) == {name}
    finally:
        arena.unlink_all()
    assert not _segments(prefix)


def test_without_an_arena_everything_is_pickled_in_band():
    frame = shm.pack(np.zeros(1_000_000), None)
    assert frame[0] is None
    assert np.array_equal(shm.unpack(frame, lambda name: None), np.zeros(1_000_000))


def test_the_parent_maps_a_reused_segment_once_and_forgets_what_the_arena_unlinked():
    prefix = f"aioloader_test_{os.getpid()}_maps_"
    arena = shm.SegmentArena(prefix)
    mappings = shm.Mappings()
    released: list[str] = []
    try:
        first = mappings.unpack(shm.pack(np.full(300_000, 1.0), arena), released.append)
        (name,) = _segments(prefix)
        del first
        gc.collect()
        assert released == [name]
        arena.release(released)
        released.clear()
        # the reused segment: the same mapping, the new values
        again = mappings.unpack(shm.pack(np.full(300_000, 2.0), arena), released.append)
        assert len(mappings) == 1 and np.all(again == 2.0)
        # more results held at once than the arena keeps free: when they come back, it unlinks
        # the surplus and names it in its next frame, and the parent lets go of those mappings
        held = [again] + [
            mappings.unpack(shm.pack(np.full(300_000, float(i)), arena), released.append)
            for i in range(shm._MAX_FREE + 3)
        ]
        assert len(mappings) == shm._MAX_FREE + 4
        kept = held[-1]
        del held, again
        gc.collect()
        arena.release(released)
        assert len(_segments(prefix)) == shm._MAX_FREE + 1  # the one kept, and the free ones
        last = mappings.unpack(shm.pack(np.zeros(10), arena), released.append)  # in band
        assert last.sum() == 0
        assert len(mappings) == shm._MAX_FREE + 1
        assert kept[0] == float(shm._MAX_FREE + 2)  # a result alive keeps its view valid
    finally:
        arena.unlink_all()
        mappings.clear()
    assert not _segments(prefix)


# -- through real worker processes ---------------------------------------------------------------
def kb_array(x: int) -> np.ndarray:
    """A 64 KB array: below the per-item threshold, above the batch one."""
    return np.full(16 * 1024, x, dtype=np.float32)


def test_per_item_results_stay_out_of_segments_whole_batches_go_through_them():
    """A kept sample keeps its whole segment lent (every item of its chunk): per-item results
    take one only from SHM_MIN_BYTES, whole batches (fused map + batch) from
    BATCH_SHM_MIN_BYTES. (A reservoir of 64 KB samples from a process map held 370 MB of
    segments when per-item results took one from 16 KB.)"""
    import aioloader as al

    assert shm.BATCH_SHM_MIN_BYTES <= 64 * 1024 < shm.SHM_MIN_BYTES
    per_item = al.Loader.from_source(range(300)).map(kb_array, executor="process", concurrency=2)
    with per_item:
        kept = []
        for x in per_item:
            kept.append(x)
            assert not _pool_segments()  # every result came through the pipe
        assert [int(x[0]) for x in kept] == list(range(300))
    fused = per_item.batch(4)  # one task per batch: 256 KB batches
    over_batches = al.Loader.from_source(range(300)).batch(4).map(kb_batch, executor="process", concurrency=2)
    for batched in (fused, over_batches):
        with batched:
            seen = set()
            for _batch in batched:
                seen |= _pool_segments()
            assert seen  # the batches came through segments
    assert not _pool_segments()


def kb_batch(batch: torch.Tensor) -> np.ndarray:
    """A 64 KB array per batch."""
    return np.full(16 * 1024, int(batch[0]), dtype=np.float32)


_TINY_SHM = """
import numpy as np
import pytest
import aioloader as al
from tests.test_workers_shm import mb3_array

if __name__ == "__main__":
    loader = al.Loader.from_source(range(24)).map(mb3_array, executor="process", concurrency=2).batch(1)
    with loader:
        firsts = [int(batch[0, 0]) for batch in loader]
    print("ok", firsts == list(range(24)))
"""


def mb3_array(x: int) -> np.ndarray:
    return np.full(3 * 2**20 // 8, x, dtype=np.int64)


def test_a_full_dev_shm_sends_results_through_the_pipe_instead_of_killing_workers(tmp_path):
    """/dev/shm of 8 MB (Docker gives 64 MB): 3 MB batches fill it after two segments. A new
    segment's memory is taken when it is made, so the result goes through the pipe; before,
    the worker got SIGBUS writing a page tmpfs could not give, and the run failed."""
    import shutil
    import subprocess
    import sys

    mount = "mount -t tmpfs -o size=8m tmpfs /dev/shm"
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small /dev/shm")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:  # no user or mount namespaces here (a locked-down container)
        pytest.skip(f"cannot mount a private /dev/shm here: {probe.stderr.strip()[:200]}")
    script = tmp_path / "tiny_shm.py"
    script.write_text(_TINY_SHM)
    done = run_with_repo(["unshare", "-rm", "sh", "-c", f"{mount} && exec {sys.executable} {script}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ok True" in done.stdout
