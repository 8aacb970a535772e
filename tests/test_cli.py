"""The command line: demo, inspect (each kind of dataset), profile, bench."""

from __future__ import annotations

import json
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
    spec = tmp_path / "spec.py"
    spec.write_text("loader = 3\n")
    with pytest.raises(ValueError, match="loader"):
        main(["profile", str(spec)])


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
