"""Fault injection on reading: a file deleted after listing, a file this user may not read, a
line that is not UTF-8, a malformed JSON Lines record, a corrupt compressed HDF5 chunk. Under
``on_error="skip"`` (the first map's, which reading follows) each is skipped, counted and
reported with its key in ``stats()["errors"]`` under the failure budget; under ``"raise"`` each
raises the library's type, naming the path and the key (still catchable as the OS's type)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import aioloader as al

from .conftest import state_after

MODES = ["lazy", "streaming"]
LINES = 5  # per file


def _keep(x: Any) -> Any:
    return x


def _write(path: Path, count: int = LINES, *, bad: dict[int, bytes] | None = None) -> Path:
    with open(path, "wb") as f:
        for i in range(count):
            f.write((bad or {}).get(i, json.dumps({"file": path.stem, "i": i}).encode() + b"\n"))
    return path


def _files(root: Path, names: str = "abc") -> list[Path]:
    return [_write(root / f"{name}.jsonl") for name in names]


def _loader(source: Any, on_error: str, max_failures: int = 10) -> al.Loader:
    return al.Loader.from_source(source).map(_keep, on_error=on_error, max_failures=max_failures)


def _run(loader: al.Loader) -> tuple[list[Any], list[tuple[Any, str, str]]]:
    with loader:
        got = list(loader)
        errors = [(e["key"], e["type"], e["message"]) for e in loader.stats()["errors"]]
    return got, errors


def _records(names: str) -> list[dict[str, Any]]:
    return [{"file": name, "i": i} for name in names for i in range(LINES)]


# -- a file deleted after listing --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_file_deleted_after_listing_is_skipped_and_reported_under_skip(tmp_path, mode):
    """Before: the epoch ended at the missing file whatever on_error."""
    _files(tmp_path)
    source = al.sources.JsonLines(tmp_path / "*.jsonl", mode=mode)
    (tmp_path / "b.jsonl").unlink()
    got, errors = _run(_loader(source, "skip"))
    assert got == _records("ac")
    # lazy: each of the file's indexed lines fails alone; streaming: the file, in one position
    keys = list(range(5, 10)) if mode == "lazy" else [5]
    assert [(key, kind) for key, kind, _ in errors] == [(k, "DataNotFoundError") for k in keys]
    assert all(str(tmp_path / "b.jsonl") in message for _, _, message in errors)


@pytest.mark.parametrize("mode", MODES)
def test_a_file_deleted_after_listing_raises_naming_path_and_key_under_raise(tmp_path, mode):
    _files(tmp_path)
    source = al.sources.JsonLines(tmp_path / "*.jsonl", mode=mode)
    (tmp_path / "b.jsonl").unlink()
    with pytest.raises(al.DataNotFoundError) as caught:
        _run(_loader(source, "raise"))
    assert caught.value.key == 5
    assert f"file {str(tmp_path / 'b.jsonl')!r} (key 5) is gone" in str(caught.value)


def test_the_failure_budget_applies_to_read_failures(tmp_path):
    _files(tmp_path)
    source = al.sources.JsonLines(tmp_path / "*.jsonl")
    (tmp_path / "b.jsonl").unlink()
    with pytest.raises(
        al.TooManyFailures, match=r"stage 'read': 4 samples failed, more than max_failures=3"
    ) as caught:
        _run(_loader(source, "skip", max_failures=3))
    assert caught.value.key == 8


# -- a line that is not UTF-8, a record that is not JSON ----------------------------------------

_BAD = {
    "not UTF-8": (al.sources.TextLines, b"caf\xe9\n", "is not valid utf-8"),
    "not JSON": (al.sources.JsonLines, b'{"file": "b", "i": \n', "is not valid JSON"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", sorted(_BAD))
def test_a_bad_line_is_skipped_under_skip_and_raises_naming_it_under_raise(tmp_path, mode, bad):
    kind, line, message = _BAD[bad]
    for name in "ab":
        _write(tmp_path / f"{name}.jsonl", bad={2: line} if name == "b" else None)
    source = kind(tmp_path / "*.jsonl", mode=mode)
    got, errors = _run(_loader(source, "skip"))
    expected = [r for r in _records("ab") if r != {"file": "b", "i": 2}]
    parsed = got if kind is al.sources.JsonLines else [json.loads(x) for x in got]
    assert parsed == expected
    assert [(key, kind_) for key, kind_, _ in errors] == [(7, "DataCorruptionError")]
    assert message in errors[0][2] and str(tmp_path / "b.jsonl") in errors[0][2]
    with pytest.raises(al.DataCorruptionError, match=message) as caught:
        _run(_loader(kind(tmp_path / "*.jsonl", mode=mode), "raise"))
    assert caught.value.key == 7
    where = "record" if kind is al.sources.JsonLines and mode == "lazy" else "line"  # lazy counts records
    assert f"{where} 3 of {str(tmp_path / 'b.jsonl')!r} (key 7)" in str(caught.value)


def test_a_streamed_skip_count_carries_over_a_resume(tmp_path):
    """The stream source's budget is saved in the state, as a map's is."""
    # the last bad record far past what the source reads ahead of the consumer
    _write(tmp_path / "a.jsonl", 20_000, bad={i: b"{\n" for i in (3, 9, 15, 19_000)})

    def make() -> al.Loader:
        return al.Loader.from_source(al.sources.JsonLines(tmp_path / "a.jsonl", mode="streaming")).map(
            _keep, on_error="skip", max_failures=3
        )

    with make() as loader, pytest.raises(al.TooManyFailures) as whole:
        list(loader)
    state = state_after(make(), 20)
    assert state["failures"]["source"] == 3
    with make() as resumed, pytest.raises(al.TooManyFailures) as after:
        resumed.load_state_dict(state)
        list(resumed)
    assert after.value.key == whole.value.key == 19_000


def test_a_streaming_json_lines_file_of_blank_lines_raises_as_in_lazy_mode(tmp_path):
    """Before: streaming mode yielded nothing, lazy mode raised."""
    path = tmp_path / "blank.jsonl"
    path.write_text("\n\n\r\n\n")
    messages = []
    for mode in MODES:
        with pytest.raises(al.DataNotFoundError, match="JsonLines: no lines in") as caught:
            al.sources.JsonLines(path, mode=mode)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


# -- a corrupt compressed HDF5 chunk -----------------------------------------------------------


@pytest.fixture
def corrupt_h5(tmp_path) -> Path:
    """400 rows in gzip chunks of 50; the chunk of rows 100..149 overwritten with garbage."""
    path = tmp_path / "rows.h5"
    with h5py.File(path, "w") as f:
        data = np.arange(400 * 4, dtype=np.float32).reshape(400, 4)
        f.create_dataset("x", data=data, chunks=(50, 4), compression="gzip")
    with h5py.File(path, "r") as f:
        chunk = f["x"].id.get_chunk_info(2)
    assert chunk.chunk_offset == (100, 0)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 4)
        f.write(b"\xff" * 16)
    return path


def test_a_corrupt_hdf5_chunk_raises_a_data_corruption_error_still_an_os_error(corrupt_h5):
    """Before: h5py's bare OSError("Can't read data"), no path, no key."""
    source = al.sources.HDF5(corrupt_h5, "x")
    with pytest.raises(al.DataCorruptionError) as caught:
        source[120]
    assert isinstance(caught.value, OSError) and isinstance(caught.value, al.DataReadError)
    assert caught.value.key == 120
    assert f"HDF5: cannot read row 120 of ['x'] in {str(corrupt_h5)!r} (key 120)" in str(caught.value)
    with pytest.raises(OSError, match="key 100"):
        _run(_loader(source, "raise").batch(16))


def test_a_corrupt_hdf5_chunk_is_skipped_row_by_row_under_skip(corrupt_h5):
    source = al.sources.HDF5(corrupt_h5, "x")
    got, errors = _run(_loader(source, "skip", max_failures=50).batch(16))
    rows = np.concatenate([np.asarray(b) for b in got])[:, 0] // 4
    assert rows.tolist() == [*range(100), *range(150, 400)]
    # rows read in parallel (auto may read on threads) report their failures as they happen
    assert sorted((key, kind) for key, kind, _ in errors) == [(k, "DataReadError") for k in range(100, 150)]


# -- a file this user may not read ---------------------------------------------------------------

_UNREADABLE_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import aioloader as al

    def make(root, mode):
        return al.sources.JsonLines(root + "/*.jsonl", mode=mode), al.sources.ImageFolder(root + "/images")

    def described(exc):
        return [type(exc).__name__, str(exc), getattr(exc, "key", None), isinstance(exc, PermissionError)]

    def run(source, images, on_error):
        loader = al.Loader.from_source(source).map(json.dumps, on_error=on_error, max_failures=10)
        out = {}
        try:
            with loader:
                out["got"] = [json.loads(x) for x in loader]
                out["errors"] = [[e["key"], e["type"], e["message"]] for e in loader.stats()["errors"]]
        except Exception as exc:
            out["raised"] = described(exc)
        try:
            images[0]
        except Exception as exc:
            out["image"] = described(exc)
        return out

    root, warm, mode, on_error = sys.argv[1:5]
    run(*make(warm, mode), on_error)  # every module the run needs is imported now
    sources = make(root, mode)  # listed (and indexed) while readable
    for path in (root + "/b.jsonl", root + "/images/cat/a.jpg"):
        os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads a file of mode 000: read as nobody (whose Python
        os.setgroups([])   # could not import from root's home: imports are done)
        os.setgid(65534)
        os.setuid(65534)
    out = run(*sources, on_error)
    try:
        make(root, "lazy")
    except Exception as exc:
        out["index"] = described(exc)
    print(json.dumps({"uid": os.geteuid(), **out}))
    """
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is private to this one)."""
    root = Path(tempfile.mkdtemp(prefix="aioloader-perm-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _as_another_user(args: list[str]) -> dict[str, Any]:
    """The child script, which reads without the right to read a file: as nobody when this
    is root (it drops to that user once it has imported), else as this user."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}
    done = subprocess.run(
        [sys.executable, "-c", _UNREADABLE_CHILD, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["uid"] != 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_an_unreadable_file_is_skipped_under_skip_and_raises_a_permission_error_under_raise(shared_dir, mode):
    """Before: a bare PermissionError (no key) ended the epoch whatever on_error. The child
    lists the files, makes b.jsonl and an image unreadable, and reads as another user."""
    for root in (shared_dir, shared_dir / "warm"):
        root.mkdir(exist_ok=True)
        _files(root)
        (root / "images" / "cat").mkdir(parents=True)
        (root / "images" / "cat" / "a.jpg").write_bytes(b"\xff\xd8 not read")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    skipped = _as_another_user([str(shared_dir), str(shared_dir / "warm"), mode, "skip"])
    assert skipped["got"] == _records("ac")
    keys = list(range(5, 10)) if mode == "lazy" else [5]
    assert [(key, kind) for key, kind, _ in skipped["errors"]] == [(k, "DataPermissionError") for k in keys]
    assert all(str(shared_dir / "b.jsonl") in message for _, _, message in skipped["errors"])
    # raise: the library's type, still a PermissionError, naming the path and the key
    raised = _as_another_user([str(shared_dir), str(shared_dir / "warm"), mode, "raise"])
    kind, message, key, is_permission = raised["raised"]
    assert (kind, key, is_permission) == ("DataPermissionError", 5, True)
    assert f"cannot read file {str(shared_dir / 'b.jsonl')!r} (key 5): Permission denied" in message
    image = raised["image"]
    assert (image[0], image[2], image[3]) == ("DataPermissionError", 0, True)
    assert (
        f"ImageFolder: cannot read file {str(shared_dir / 'images' / 'cat' / 'a.jpg')!r} (key 0)" in image[1]
    )
    # a file unreadable when the source is made: the same type, naming the file
    kind, message, key, is_permission = raised["index"]
    assert (kind, key, is_permission) == ("DataPermissionError", None, True)
    assert f"cannot index {str(shared_dir / 'b.jsonl')!r}" in message


def test_the_permission_error_type_is_both_the_librarys_and_the_os_s():
    error = al.errors.os_read_error(
        PermissionError(13, "Permission denied", "/x"), "TextLines: file '/x'", key=4
    )
    assert isinstance(error, al.DataPermissionError) and isinstance(error, al.DataNotFoundError)
    assert isinstance(error, PermissionError) and error.errno == 13
    assert str(error) == "TextLines: file '/x' (key 4): Permission denied"
    other = al.errors.os_read_error(OSError(5, "Input/output error"), "HDF5: rows 0..9", key=[0, 1])
    assert isinstance(other, al.DataReadError) and isinstance(other, al.DataCorruptionError)
    assert isinstance(other, OSError) and not isinstance(other, PermissionError)
