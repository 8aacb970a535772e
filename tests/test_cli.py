"""The command line: demo, inspect (each kind of dataset), profile, bench."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from aioloader.cli import main


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    for i in range(6):
        folder = tmp_path / "images" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 16, 3), i * 30, dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "images"


def test_inspect_image_folder(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(image_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "image folder" and info["count"] == 6
    assert info["classes"] == {"class0": 3, "class1": 3}
    assert info["sample"]["size"] == [16, 12] and info["sample"]["decoded"]["shape"] == [12, 16, 3]


def test_inspect_hdf5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(40, dtype=np.float32).reshape(10, 4), chunks=(5, 4))
        f.create_dataset("labels/y", data=np.arange(10))
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 10
    assert info["datasets"]["x"]["chunks"] == [5, 4] and info["datasets"]["x"]["dtype"] == "float32"
    assert info["datasets"]["labels/y"]["shape"] == [10]
    assert main(["inspect", str(path)]) == 0
    assert "chunks" in capsys.readouterr().out


def test_inspect_text_jsonl_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "lines.txt"
    text.write_text("hello world\nsecond\nthird\n")
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros((7, 3), dtype=np.int16))
    assert main(["inspect", str(text), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 3 and info["sample"] == "'hello world'"
    assert main(["inspect", str(jsonl), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "json lines" and info["keys"] == {"text": "str", "label": "int"}
    assert main(["inspect", str(npy), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [7, 3] and info["dtype"] == "int16" and info["count"] == 7


def test_inspect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "missing.h5")]) == 2
    odd = tmp_path / "file.xyz"
    odd.write_text("?")
    assert main(["inspect", str(odd)]) == 2
    assert "unknown kind" in capsys.readouterr().err


def test_demo_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["demo", "--images", "64", "--epochs", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "bottleneck:" in out and "samples/s" in out


def test_profile_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.py"
    spec.write_text(
        "import aioloader as al\n"
        "def double(x):\n    return 2 * x\n"
        "loader = al.Loader.from_source(list(range(300))).map(double).batch(10)\n"
    )
    assert main(["profile", str(spec), "--concurrency", "1,2", "--items", "100"]) == 0
    out = capsys.readouterr().out
    assert "map(double)" in out and "c=1" in out and "c=2" in out and "headroom" in out


def test_profile_bad_spec(tmp_path: Path) -> None:
    from aioloader.profiling import load_spec

    spec = tmp_path / "spec.py"
    spec.write_text("loader = 3\n")
    with pytest.raises(ValueError, match="loader"):
        load_spec(spec)


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The stderr of a command that failed cleanly: one line, no traceback."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"aioloader {command}: ") and "\n" not in err, captured.err
    assert "Traceback" not in captured.out + captured.err
    return err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("loader = 3\n", r"must define `loader"),
        ("x = 1\n", r"must define `loader.*got None"),
        ("import aioloader_no_such_module\n", r"failed to load: ModuleNotFoundError.*line 1"),
        ("x = 1\nraise RuntimeError('boom')\n", r"failed to load: RuntimeError: boom.*line 2"),
        ("def broken(:\n", r"failed to load: SyntaxError"),
    ],
)
def test_profile_bad_spec_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    spec = tmp_path / "spec.py"
    spec.write_text(body)
    assert main(["profile", str(spec)]) == 2
    err = _one_line_error(capsys, "profile")
    assert str(spec) in err
    assert re.search(message, err), err


def test_profile_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tmp_path / "nope.py")]) == 2
    assert "nope.py" in _one_line_error(capsys, "profile")


def test_profile_spec_whose_data_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "lines.txt"
    spec = tmp_path / "spec.py"
    spec.write_text(
        "import aioloader as al\n"
        f"loader = al.Loader.from_source(al.sources.TextLines({str(data)!r})).map(str.upper)\n"
    )
    data.write_text("")  # no data when the spec runs
    assert main(["profile", str(spec)]) == 2
    err = _one_line_error(capsys, "profile")
    assert "DataNotFoundError" in err and "is empty (line 2)" in err
    spec.write_text(
        "import aioloader as al\n"
        f"open({str(data)!r}, 'w').write('a\\nb\\n')\n"
        f"loader = al.Loader.from_source(al.sources.TextLines({str(data)!r})).map(str.upper)\n"
        f"open({str(data)!r}, 'w').close()  # emptied once indexed: the run fails\n"
    )
    assert main(["profile", str(spec)]) == 2
    assert "changed since it was indexed" in _one_line_error(capsys, "profile")


def test_inspect_empty_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "empty" in _one_line_error(capsys, "inspect")
    (tmp_path / "classes" / "a").mkdir(parents=True)
    assert main(["inspect", str(tmp_path / "classes")]) == 2
    assert "empty" in _one_line_error(capsys, "inspect")


def test_inspect_reports_undecodable_images(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (image_folder / "class0" / "0.png").write_bytes(b"not an image at all")  # the first file
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(image_folder / "class0" / "2.png")
    whole = (image_folder / "class0" / "2.png").read_bytes()
    (image_folder / "class0" / "2.png").write_bytes(whole[: len(whole) // 2])  # truncated
    assert main(["inspect", str(image_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 6
    assert set(info["unreadable"]) == {"class0/0.png", "class0/2.png"}
    assert "cannot identify image file" in info["unreadable"]["class0/0.png"]
    assert info["sample"]["file"] == "class0/4.png" and info["sample"]["decoded"]["shape"] == [12, 16, 3]
    assert main(["inspect", str(image_folder)]) == 0
    assert "class0/0.png" in capsys.readouterr().out


def test_inspect_folder_of_only_undecodable_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "bad" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_text("text, not jpeg")
    assert main(["inspect", str(tmp_path / "bad"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sorted(info["unreadable"]) == ["a/0.jpg", "a/1.jpg", "a/2.jpg"]
    assert "none of the first 3 files decodes" in info["sample"]


def test_inspect_file_of_the_wrong_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_h5 = tmp_path / "fake.h5"
    fake_h5.write_text("line 0\nline 1\n")
    assert main(["inspect", str(fake_h5)]) == 2
    err = _one_line_error(capsys, "inspect")
    assert str(fake_h5) in err and "HDF5" in err
    fake_npy = tmp_path / "fake.npy"
    fake_npy.write_text("not numpy")
    assert main(["inspect", str(fake_npy)]) == 2
    err = _one_line_error(capsys, "inspect")
    assert str(fake_npy) in err and ".npy" in err
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object))
    assert main(["inspect", str(pickled)]) == 2
    assert str(pickled) in _one_line_error(capsys, "inspect")


def test_inspect_jsonl_whose_first_record_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1\n{"a": 2}\n')
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "json lines" and info["count"] == 2
    assert info["error"].startswith(f"line 1 of {str(path)!r} is not valid JSON")


def test_plot_needs_a_timeline(tmp_path: Path) -> None:
    from aioloader.monitor.plot import plot_timeline

    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="timeline"):
        plot_timeline({"timeline": {"t": []}}, tmp_path / "x.png")
    stats = {"bottleneck": "a", "timeline": {"t": [0.25, 0.5], "rate": {"a": [1, 2]}, "queue": {"a": [0, 1]}}}
    out = plot_timeline(stats, tmp_path / "t.png")
    assert Path(out).stat().st_size > 0


def test_bench_quick_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.md"
    assert main(["bench", "--workload", "padding", "--quick", "--output", str(report)]) == 0
    out = capsys.readouterr().out
    assert "### padding" in out and "### padding" in report.read_text()


def test_bench_without_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--bench-dir", str(tmp_path)]) == 2
    assert "not installed with the package" in capsys.readouterr().err
