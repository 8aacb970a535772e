"""Loading modes: lazy, eager, streaming and cached give the same items for every file source;
eager refuses what does not fit the budget; the cache stays under its byte budget."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import pytest
from PIL import Image

import aioloader as al

MODES = ("lazy", "eager", "streaming", "cached")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, (np.ndarray, np.generic)):
        return np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype
    if isinstance(a, bytes):  # FileBytes is a bytes
        return isinstance(b, bytes) and a == b
    return type(a) is type(b) and a == b


Factory = Callable[..., Any]


def _images(root: Path) -> tuple[Factory, list[Any]]:
    rng = np.random.default_rng(0)
    files = []
    for cls in ("a", "b"):
        for i in range(6):
            path = root / "img" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            files.append((path.read_bytes(), 0 if cls == "a" else 1))
    return (lambda **kw: al.sources.ImageFolder(root / "img", **kw)), files


def _text(root: Path) -> tuple[Factory, list[Any]]:
    lines = [f"{i}: " + "z" * (i % 13) for i in range(200)]
    (root / "t.txt").write_text("\n".join(lines) + "\n")
    return (lambda **kw: al.sources.TextLines(root / "t.txt", **kw)), lines


def _jsonl(root: Path) -> tuple[Factory, list[Any]]:
    records = [{"i": i, "s": "q" * (i % 5)} for i in range(150)]
    (root / "r.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    return (lambda **kw: al.sources.JsonLines(root / "r.jsonl", **kw)), records


def _hdf5(root: Path) -> tuple[Factory, list[Any]]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    with h5py.File(root / "d.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(16, 4))
        f.create_dataset("y", data=y)
    with h5py.File(root / "d.h5") as f:
        rows = [(f["x"][i], f["y"][i]) for i in range(300)]
    return (lambda **kw: al.sources.HDF5(root / "d.h5", ["x", "y"], **kw)), rows


def _npy(root: Path) -> tuple[Factory, list[Any]]:
    data = np.arange(400, dtype=np.int32).reshape(100, 4)
    np.save(root / "a.npy", data)
    return (lambda **kw: al.sources.Array(root / "a.npy", **kw)), list(data)


KINDS = {"images": _images, "text": _text, "jsonl": _jsonl, "hdf5": _hdf5, "npy": _npy}


@pytest.fixture(params=sorted(KINDS))
def kind(request, tmp_path: Path) -> tuple[Factory, list[Any]]:
    return KINDS[request.param](tmp_path)


def _through_loader(source: Any) -> list[Any]:
    with al.Loader.from_source(source) as loader:
        return list(loader)


def test_every_mode_gives_the_same_items(kind: tuple[Factory, list[Any]]) -> None:
    make, expected = kind
    for mode in MODES:
        source = make(mode=mode)
        assert source.mode == mode
        got = _through_loader(source)
        assert len(got) == len(expected), mode
        assert all(map(_same, got, expected)), mode
        assert all(map(_same, source.stream(), expected)), mode  # the sequential view
        if mode != "streaming":
            keys = [len(expected) - 1, 0, 3, 3, 1]
            assert all(map(_same, source.__getitems__(keys), [expected[k] for k in keys])), mode
            assert _same(source[2], expected[2]), mode
        source.close()


def test_streaming_mode_is_a_re_iterable_stream(kind: tuple[Factory, list[Any]]) -> None:
    make, expected = kind
    source = make(mode="streaming")
    assert isinstance(al.sources.adapt(source), al.sources.IterableSource)
    with pytest.raises(TypeError, match="streaming"):
        source[0]
    with pytest.raises(TypeError, match="streaming"):
        source.__getitems__([0])
    with pytest.raises(ValueError, match="indexable"):
        al.Loader.from_source(source, shuffle=True)
    with al.Loader.from_source(source) as loader:
        assert len(list(loader)) == len(expected)
        assert all(map(_same, loader, expected))  # a second epoch reads it again


def test_lazy_source_stream_view_goes_through_the_loader(kind: tuple[Factory, list[Any]]) -> None:
    make, expected = kind
    stream = make().stream()
    assert isinstance(al.sources.adapt(stream), al.sources.IterableSource)
    assert all(map(_same, _through_loader(stream), expected))


def test_eager_refuses_more_than_the_budget(kind: tuple[Factory, list[Any]]) -> None:
    make, _ = kind
    with pytest.raises(MemoryError, match="max_memory_usage"):
        make(mode="eager", max_memory_usage=1e-12)


def test_cache_stays_under_a_small_budget_and_reports_hits(kind: tuple[Factory, list[Any]]) -> None:
    make, expected = kind
    capacity = 4096
    fraction = capacity / psutil.virtual_memory().available
    source = make(mode="cached", max_memory_usage=fraction)
    stats = source.cache_stats()
    assert 0 < stats["capacity_bytes"] < 2 * capacity
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(expected)).tolist()
        for start in range(0, len(order), 16):
            keys = order[start : start + 16]
            assert all(map(_same, source.__getitems__(keys), [expected[k] for k in keys]))
            assert source.cache_stats()["bytes"] <= source.cache_stats()["capacity_bytes"]
        for key in order[:10]:
            assert _same(source[key], expected[key])
    stats = source.cache_stats()
    assert stats["peak_bytes"] <= stats["capacity_bytes"]
    assert stats["evictions"] > 0 and 0 < stats["items"] < len(expected)
    assert stats["hits"] + stats["misses"] == 3 * (len(expected) + 10)
    assert 0 <= source.hit_rate < 1


def test_a_cache_big_enough_hits_every_second_read(kind: tuple[Factory, list[Any]]) -> None:
    make, expected = kind
    source = make(mode="cached")
    keys = list(range(len(expected)))
    first = _through_loader(source)
    second = source.__getitems__(keys)
    assert all(map(_same, first, expected)) and all(map(_same, second, expected))
    stats = source.cache_stats()
    assert stats["misses"] == len(expected) and stats["hits"] == len(expected)
    assert source.hit_rate == 0.5
    assert make().cache_stats() is None and make().hit_rate is None


def test_bad_mode_and_budget_arguments(tmp_path: Path) -> None:
    make, _ = _npy(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        make(mode="lazy-ish")
    with pytest.raises(ValueError, match="max_memory_usage"):
        make(max_memory_usage=2.0)
    with pytest.raises(TypeError, match="max_memory_usage"):
        make(max_memory_usage="all")
