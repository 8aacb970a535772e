"""Review of the file sources with real files a user meets: files replaced or deleted between
epochs, encodings whose newline is not one byte, symlink loops in an image tree, 16-bit images,
and file descriptors left after a loop is left early. Every bad input must name the argument or
the sample, never give a short block or a wrong sample silently."""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import aioloader as al
from aioloader.errors import DataCorruptionError, DataNotFoundError
from aioloader.sources import HDF5, Array, ImageFolder, JsonLines, TextLines
from aioloader.transforms import decode_image


def _write_h5(path: Path, rows: int) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(rows * 2, dtype=np.float32).reshape(rows, 2), chunks=(4, 2))


def _open_files_under(folder: Path) -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, already closed
            pass
    return sorted(t for t in targets if t.startswith(str(folder)))


# -- a file changed between epochs -----------------------------------------------------------
def test_hdf5_replaced_with_fewer_rows_raises_instead_of_a_short_block(tmp_path: Path) -> None:
    path = tmp_path / "rows.h5"
    _write_h5(path, 10)
    source = HDF5(path, "x")
    assert source.__getitems__([8, 9]).shape == (2, 2)
    source.close()  # the next epoch (or a worker) opens the file again
    _write_h5(path, 5)
    with pytest.raises(DataCorruptionError, match=r"changed since.*'x'.*\(5, 2\).*\(10, 2\)"):
        source.__getitems__([8, 9])
    with pytest.raises(DataCorruptionError, match="changed since"):
        source[1]


def test_hdf5_deleted_between_epochs_is_data_not_found(tmp_path: Path) -> None:
    path = tmp_path / "gone.h5"
    _write_h5(path, 10)
    source = HDF5(path, "x")
    source.close()
    path.unlink()
    with pytest.raises(DataNotFoundError, match=r"gone\.h5"):
        source[0]


def test_npy_replaced_with_fewer_rows_raises_instead_of_a_short_block(tmp_path: Path) -> None:
    path = tmp_path / "rows.npy"
    np.save(path, np.arange(10))
    source = Array(path)
    assert source.__getitems__([8, 9]).tolist() == [8, 9]
    source.close()
    np.save(tmp_path / "new.npy", np.arange(3))
    os.replace(tmp_path / "new.npy", path)
    with pytest.raises(DataCorruptionError, match=r"changed since.*\(3,\).*\(10,\)"):
        source.__getitems__([8, 9])
    path.unlink()
    with pytest.raises(DataNotFoundError, match=r"rows\.npy"):
        source[0]


def test_streaming_text_file_deleted_between_epochs_is_data_not_found(tmp_path: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("1\n2\n")
    second.write_text("3\n")
    source = TextLines(tmp_path / "*.txt", mode="streaming")
    assert list(source) == ["1", "2", "3"]
    second.unlink()
    with pytest.raises(DataNotFoundError, match=r"b\.txt.*key 2"):
        list(source)


# -- encodings -------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-le"])
def test_an_encoding_whose_newline_is_not_one_byte_is_refused_at_build(tmp_path: Path, encoding) -> None:
    path = tmp_path / "wide.txt"
    path.write_text("ab\ncd\n", encoding=encoding)
    with pytest.raises(ValueError, match=f"encoding '{encoding}'"):
        TextLines(path, encoding=encoding)


def test_utf8_sig_is_accepted_and_drops_the_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}')
    assert [TextLines(path, encoding="utf-8-sig")[i] for i in range(2)] == ['{"a": 1}', '{"a": 2}']
    assert list(JsonLines(path, encoding="utf-8-sig")) == [{"a": 1}, {"a": 2}]


def test_an_unknown_error_handler_is_refused_at_build(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"
    path.write_text("ok\n")
    with pytest.raises(LookupError, match="nope"):
        TextLines(path, errors="nope")


# -- image trees -----------------------------------------------------------------------------
def test_a_symlink_loop_lists_each_image_once(tmp_path: Path) -> None:
    (tmp_path / "cat" / "inner").mkdir(parents=True)
    (tmp_path / "cat" / "inner" / "a.jpg").write_bytes(b"a")
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "inner" / "back")  # points up the tree
    assert ImageFolder(tmp_path).files == [os.path.join("cat", "inner", "a.jpg")]


def test_eager_mode_with_a_dangling_link_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"a")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "cat" / "b.jpg")
    with pytest.raises(DataNotFoundError, match=r"b\.jpg.*key 1"):
        ImageFolder(tmp_path, mode="eager")


def test_empty_extensions_are_refused_naming_the_argument(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    with pytest.raises(ValueError, match="extensions"):
        ImageFolder(tmp_path, extensions=[])


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(fmt: str) -> None:
    depth = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)  # up to 59,900
    buffer = io.BytesIO()
    Image.fromarray(depth).save(buffer, format=fmt)
    expected = (depth >> 8).astype(np.uint8)
    gray = decode_image(mode="L")(buffer.getvalue())
    assert np.array_equal(gray[0].numpy(), expected)
    rgb = decode_image()(buffer.getvalue())
    assert all(np.array_equal(rgb[c].numpy(), expected) for c in range(3))


# -- file descriptors on every stop path ------------------------------------------------------
@pytest.mark.parametrize("stop", ["break", "exception", "end"])
def test_no_descriptor_is_left_after_the_loop_and_close(tmp_path: Path, stop: str) -> None:
    _write_h5(tmp_path / "rows.h5", 64)
    (tmp_path / "lines.txt").write_text("".join(f"{i}\n" for i in range(64)))
    sources = [HDF5(tmp_path / "rows.h5", "x"), TextLines(tmp_path / "lines.txt")]
    for source in sources:
        with al.Loader.from_source(source, shuffle=True).batch(4) as loader:
            try:
                for i, _ in enumerate(loader):
                    if i == 3 and stop == "break":
                        break
                    if i == 3 and stop == "exception":
                        raise KeyError("the training step failed")
            except KeyError:
                pass
        source.close()
    assert _open_files_under(tmp_path) == []
