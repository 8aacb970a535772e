"""HDF5 against real h5py files: values, range reads, chunk layout, lazy per-process handles."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import aioloader as al

N = 500


@pytest.fixture
def h5_path(tmp_path: Path) -> Path:
    path = tmp_path / "data.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=rng.standard_normal((N, 8)).astype(np.float32), chunks=(32, 8))
        f.create_dataset("y", data=rng.integers(0, 10, N))
        f.create_dataset(
            "group/z", data=rng.standard_normal((N, 2, 3)), chunks=(64, 2, 3), compression="gzip"
        )
        f.create_dataset("flat", data=np.arange(N * 4, dtype=np.int16).reshape(N, 4))  # contiguous
        f.create_dataset("short", data=np.arange(7))
        f.create_dataset("none", shape=(0, 3), dtype=np.float32)
        f.create_dataset("scalar", data=3.0)
    return path


class _Spy:
    """A real h5py dataset that records each selection it is read with."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        self.shape, self.dtype = dataset.shape, dataset.dtype
        self.reads: list[object] = []

    def __getitem__(self, selection: object) -> np.ndarray:
        self.reads.append(selection)
        return self.dataset[selection]


def test_rows_equal_h5py(h5_path: Path) -> None:
    source = al.sources.HDF5(h5_path, "x")
    with h5py.File(h5_path) as f:
        x = f["x"][()]
        for i in (0, 1, 31, 32, N - 1):
            np.testing.assert_array_equal(source[i], f["x"][i])
        keys = [5, 400, 6, 7, 5, 0, 499, 100]
        for key, row in zip(keys, source.__getitems__(keys), strict=True):
            np.testing.assert_array_equal(row, x[key])
        both = al.sources.HDF5(h5_path, ["y", "group/z"])
        y, z = both[123]
        assert y == f["y"][123] and type(y) is type(f["y"][123])
        np.testing.assert_array_equal(z, f["group/z"][123])
        for key, (yy, zz) in zip(keys, both.__getitems__(keys), strict=True):
            assert yy == f["y"][key]
            np.testing.assert_array_equal(zz, f["group/z"][key])


def test_loader_sequential_and_shuffled_match_h5py(h5_path: Path) -> None:
    with h5py.File(h5_path) as f:
        x, y = f["x"][()], f["y"][()]
    source = al.sources.HDF5(h5_path, ("x", "y"))
    with al.Loader.from_source(source).batch(64) as loader:
        xs, ys = zip(*loader, strict=True)
    assert torch.equal(torch.cat(xs), torch.from_numpy(x)) and torch.equal(torch.cat(ys), torch.from_numpy(y))
    with al.Loader.from_source(source, shuffle=True, seed=2).map(lambda item: item[1]).batch(50) as loader:
        shuffled = torch.cat(list(loader)).numpy()
    assert sorted(shuffled.tolist()) == sorted(y.tolist()) and not np.array_equal(shuffled, y)


def test_a_block_of_keys_is_read_in_ranges_not_rows(h5_path: Path) -> None:
    source = al.sources.HDF5(h5_path, "x")
    with h5py.File(h5_path) as f:
        spy = _Spy(f["x"])
        source._sources = lambda: (spy,)  # the real dataset, watched
        sequential = list(range(64, 192))
        rows = source.__getitems__(sequential)
        assert spy.reads == [slice(64, 192)]
        np.testing.assert_array_equal(np.stack(rows), f["x"][64:192])
        spy.reads.clear()
        scattered = [300, 10, 11, 12, 13, 301, 302, 450]
        rows = source.__getitems__(scattered)
        assert spy.reads == [slice(10, 14), slice(300, 303), slice(450, 451)]
        for key, row in zip(scattered, rows, strict=True):
            np.testing.assert_array_equal(row, f["x"][key])


def test_chunk_layout(h5_path: Path) -> None:
    source = al.sources.HDF5(h5_path, "x")
    assert source.chunked and source.chunk_rows == 32
    ranges = source.chunks()
    assert ranges[0] == range(0, 32) and ranges[-1] == range(480, 500)
    assert [i for r in ranges for i in r] == list(range(N))
    assert al.sources.HDF5(h5_path, ["x", "group/z"]).chunk_rows == 64  # lcm of 32 and 64
    flat = al.sources.HDF5(h5_path, "flat")
    assert not flat.chunked and flat.chunk_rows == N  # ~1 MiB read units, capped at the length


def test_opens_lazily_in_the_reading_process_and_pickles_without_handle(h5_path: Path) -> None:
    source = al.sources.HDF5(h5_path, "x")
    assert not source.is_open  # building it checked the file and closed it
    first = source[3]
    assert source.is_open and source._handle.opened_in == os.getpid()
    copy = pickle.loads(pickle.dumps(source))
    assert not copy.is_open
    np.testing.assert_array_equal(copy[3], first)
    copy.close()
    source.close()
    assert not source.is_open


def _child_read(source: al.sources.HDF5, conn) -> None:
    try:
        row = source[7]
        conn.send((os.getpid(), source._handle.opened_in, row))
    finally:
        conn.close()
        source.close()


def test_a_forked_child_opens_its_own_handle(h5_path: Path) -> None:
    source = al.sources.HDF5(h5_path, "x")
    expected = source[7]  # the parent holds a handle when it forks
    parent_handle = source._handle.get()[0]
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_read, args=(source, sender))
    child.start()
    sender.close()
    pid, opened_in, row = receiver.recv()
    child.join(10)
    assert child.exitcode == 0
    assert opened_in == pid != os.getpid()
    np.testing.assert_array_equal(row, expected)
    assert source._handle.get()[0] is parent_handle and parent_handle.id.valid  # untouched
    source.close()


def test_torch_dataloader_workers_read_it(h5_path: Path) -> None:
    source = al.sources.HDF5(h5_path, "y")
    source[0]  # open in the parent before the workers fork
    loader = DataLoader(source, batch_size=100, num_workers=2, multiprocessing_context="fork")
    got = torch.cat(list(loader))
    with h5py.File(h5_path) as f:
        assert torch.equal(got, torch.from_numpy(f["y"][()]))
    source.close()


def test_bad_inputs(h5_path: Path, tmp_path: Path) -> None:
    with pytest.raises(al.DataNotFoundError, match=r"missing\.h5"):
        al.sources.HDF5(tmp_path / "missing.h5", "x")
    with pytest.raises(al.DataFormatError, match="nope") as info:
        al.sources.HDF5(h5_path, ["x", "nope"])
    assert "'group/z'" in str(info.value) and "'x'" in str(info.value)  # lists what is there
    with pytest.raises(al.DataFormatError, match="different numbers of rows"):
        al.sources.HDF5(h5_path, ["x", "short"])
    with pytest.raises(al.DataNotFoundError, match="empty"):
        al.sources.HDF5(h5_path, "none")
    with pytest.raises(al.DataFormatError, match="scalar"):
        al.sources.HDF5(h5_path, "scalar")
    not_h5 = tmp_path / "fake.h5"
    not_h5.write_bytes(b"plain text, not HDF5")
    with pytest.raises(al.DataFormatError, match=r"fake\.h5"):
        al.sources.HDF5(not_h5, "x")
    with pytest.raises(TypeError, match="datasets"):
        al.sources.HDF5(h5_path, [])
    with pytest.raises(ValueError, match="repeated"):
        al.sources.HDF5(h5_path, ["x", "x"])
