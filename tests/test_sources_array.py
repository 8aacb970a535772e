"""Array over in-memory arrays and memory-mapped .npy files, checked against numpy itself."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import aioloader as al


@pytest.fixture
def npy(tmp_path: Path) -> Path:
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32))
    return path


def test_in_memory_rows_and_blocks() -> None:
    data = np.arange(60).reshape(20, 3)
    source = al.sources.Array(data)
    assert len(source) == 20 and source.shape == (20, 3)
    np.testing.assert_array_equal(source[4], data[4])
    keys = [19, 0, 0, 7]
    np.testing.assert_array_equal(np.stack(source.__getitems__(keys)), data[keys])
    np.testing.assert_array_equal(np.stack(source.__getitems__([3, 4, 5])), data[3:6])
    assert source[-1].tolist() == data[-1].tolist()
    assert al.sources.Array(np.arange(5))[2] == 2  # 1-D: numpy scalars


def test_npy_is_memory_mapped_and_pickles_as_its_path(npy: Path) -> None:
    expected = np.load(npy)
    source = al.sources.Array(npy)
    assert source._array is None  # nothing loaded
    keys = list(np.random.default_rng(1).permutation(1000)[:100])
    np.testing.assert_array_equal(np.stack(source.__getitems__(keys)), expected[keys])
    payload = pickle.dumps(source)
    assert len(payload) < 2000 < expected.nbytes
    np.testing.assert_array_equal(pickle.loads(payload)[999], expected[999])
    source.close()


def test_loader_batches_equal_numpy(npy: Path) -> None:
    expected = torch.from_numpy(np.load(npy))
    with al.Loader.from_source(al.sources.Array(npy)).batch(128) as loader:
        assert torch.equal(torch.cat(list(loader)), expected)
    with al.Loader.from_source(al.sources.Array(npy), shuffle=True).batch(100) as loader:
        got = torch.cat(list(loader))
    assert not torch.equal(got, expected)
    assert torch.equal(got[got[:, 0].argsort()], expected[expected[:, 0].argsort()])  # same rows


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(al.DataNotFoundError, match=r"gone\.npy"):
        al.sources.Array(tmp_path / "gone.npy")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(al.DataFormatError, match=r"bad\.npy"):
        al.sources.Array(bad)
    with pytest.raises(al.DataFormatError, match="0-dimensional"):
        al.sources.Array(np.array(3.0))
    with pytest.raises(al.DataNotFoundError, match="empty"):
        al.sources.Array(np.empty((0, 4)))
    np.save(tmp_path / "empty.npy", np.empty((0, 2)))
    with pytest.raises(al.DataNotFoundError, match="empty"):
        al.sources.Array(tmp_path / "empty.npy")
    with pytest.raises(TypeError, match="ndarray_or_npy_path"):
        al.sources.Array([1, 2, 3])
