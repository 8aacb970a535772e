"""The shared-memory transport on its own (no processes): arrays and tensors come back as views
of a segment, small buffers stay in the pickle, a segment is handed back only when the last view
is gone, and the worker's arena reuses it."""

from __future__ import annotations

import gc
import os

import numpy as np
import torch

from aioloader.workers import shm


def _segments(prefix: str) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


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
