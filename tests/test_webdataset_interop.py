"""Interoperability with the ``webdataset`` package, both ways: shards its ``ShardWriter``
wrote read by ``al.sources.WebDataset``, and shards ``al.sources.write_shards`` wrote read by
``webdataset.WebDataset``, with the same samples (keys and member bytes)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

import aioloader as al

wds = pytest.importorskip("webdataset")


def _samples(count: int) -> list[dict]:
    return [
        {"__key__": f"sample{i:04d}", "jpg": os.urandom(500 + i), "cls": i, "json": {"i": i}}
        for i in range(count)
    ]


def test_shards_from_webdataset_shardwriter_are_read_unchanged(tmp_path):
    samples = _samples(20)
    with wds.ShardWriter(str(tmp_path / "w-%06d.tar"), maxcount=7, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 3
    with al.Loader.from_source(al.sources.WebDataset(str(tmp_path / "w-{000000..000002}.tar"))) as loader:
        got = list(loader)
    assert [g["__key__"] for g in got] == [f"sample{i:04d}" for i in range(20)]
    assert [int(g["cls"]) for g in got] == list(range(20))
    assert [g["jpg"] for g in got] == [s["jpg"] for s in samples]


def test_our_shards_are_read_by_webdataset(tmp_path):
    samples = _samples(25)
    index = al.sources.write_shards(samples, str(tmp_path / "ours-%06d.tar"), max_count=10)
    urls = sorted(str(tmp_path / n) for n in os.listdir(tmp_path) if n.endswith(".tar"))
    assert len(urls) == 3
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in samples]
    assert [s["jpg"] for s in theirs] == [s["jpg"] for s in samples]
    assert [int(s["cls"]) for s in theirs] == list(range(25))
    # and the index gives the same samples, indexable
    indexed = al.sources.WebDataset(index=index)
    with al.Loader.from_source(indexed) as loader:
        assert [s["jpg"] for s in loader] == [s["jpg"] for s in samples]


def test_write_shards_from_a_loader_with_fields_and_arrays(tmp_path):
    rows = [(np.full((2, 3), i, dtype=np.float32), i) for i in range(12)]
    loader = al.Loader.from_source(rows)
    with loader:
        index = al.sources.write_shards(loader, str(tmp_path / "a-%03d.tar"), fields=("npy", "cls"), max_bytes=4096)
    with al.Loader.from_source(al.sources.WebDataset(index=index), shuffle=True) as back:
        got = sorted((int(s["cls"]), np.load(io.BytesIO(s["npy"]))[0, 0]) for s in back)
    assert got == [(i, float(i)) for i in range(12)]
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".tar")]) > 1  # max_bytes split them
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_write_shards_rejects_bad_arguments_naming_them(tmp_path):
    with pytest.raises(ValueError, match="pattern"):
        al.sources.write_shards([], str(tmp_path / "no-field.tar"))
    with pytest.raises(TypeError, match="sample 0"):
        al.sources.write_shards([object()], str(tmp_path / "x-%d.tar"))
    with pytest.raises(TypeError, match="field 'obj'"):
        al.sources.write_shards([{"obj": object()}], str(tmp_path / "y-%d.tar"))
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n or n.endswith(".tar")]
