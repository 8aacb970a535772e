"""TextLines and JsonLines against real files, checked with plain open() and json.loads."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import aioloader as al


def _lines(path: Path) -> list[str]:
    """The independent reader: Python's own line splitting on the bytes, endings removed."""
    with open(path, "rb") as f:
        out = []
        for raw in f:
            text = raw.decode("utf-8")
            text = text[:-1] if text.endswith("\n") else text
            out.append(text[:-1] if text.endswith("\r") else text)
        return out


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "a.txt"
    rng = np.random.default_rng(0)
    lines = [f"line {i} " + "x" * int(rng.integers(0, 40)) for i in range(300)]
    lines[5] = ""
    lines[7] = "héllo wörld ✓"
    body = "\n".join(lines[:100]) + "\r\n" + "\r\n".join(lines[100:200]) + "\n" + "\n".join(lines[200:])
    path.write_bytes(body.encode())  # CRLF and LF mixed, no newline at the end
    return path


def test_lines_equal_plain_open(text_file: Path) -> None:
    expected = _lines(text_file)
    source = al.sources.TextLines(text_file)
    assert len(source) == len(expected) == 300
    assert [source[i] for i in range(len(source))] == expected
    assert source[-1] == expected[-1]
    assert list(source.stream()) == expected
    keys = [299, 3, 3, 150, 0, 151, 152, 7]
    assert source.__getitems__(keys) == [expected[k] for k in keys]
    with pytest.raises(IndexError):
        source[300]
    with pytest.raises(TypeError, match="integers"):
        source["3"]


def test_lines_read_one_pread_each_equal_plain_open(tmp_path: Path) -> None:
    """Lines far apart (each its own read, the shuffled case): endings removed as plain open()
    does, a lone carriage return kept, the unterminated last line whole."""
    path = tmp_path / "long.txt"
    pad = "y" * 5000
    lines = [f"{i} {pad}" for i in range(12)]
    lines[3] = f"3 {pad}\r"  # ends in "\r\r\n" below: one "\r" stays
    lines[4] = f"\r4 {pad}"
    body = "\r\n".join(lines[:6]) + "\r\n" + "\n".join(lines[6:])
    path.write_bytes(body.encode())
    expected = _lines(path)
    source = al.sources.TextLines(path)
    keys = [11, 3, 0, 9, 4, 5, 6, 1]
    assert source.__getitems__(keys) == [expected[k] for k in keys]
    assert expected[3].endswith("\r") and expected[4].startswith("\r")


def test_index_is_compact_and_built_without_loading_text(text_file: Path) -> None:
    source = al.sources.TextLines(text_file)
    index = source._index
    assert index.offsets.dtype == np.uint32  # 4 bytes per line for a file under 4 GiB
    assert source.index_nbytes <= 4 * (len(source) + 1) + 8 * 2
    assert al.sources.TextLines(text_file, mode="streaming").index_nbytes == 0


def test_glob_reads_matching_files_in_sorted_order(tmp_path: Path) -> None:
    for name, lines in [("b.txt", ["b1", "b2"]), ("a.txt", ["a1"]), ("c.log", ["no"]), ("d.txt", ["d1\n"])]:
        (tmp_path / name).write_text("\n".join(lines))
    source = al.sources.TextLines(tmp_path / "*.txt")
    expected = ["a1", "b1", "b2", "d1"]
    assert [source[i] for i in range(len(source))] == expected
    assert source.__getitems__([3, 0, 2, 1]) == ["d1", "a1", "b2", "b1"]
    assert list(source) == expected


def test_shuffled_loader_yields_every_line_once(text_file: Path) -> None:
    expected = _lines(text_file)
    with al.Loader.from_source(al.sources.TextLines(text_file), shuffle=True, seed=5) as loader:
        first = list(loader)
        second = list(loader)
    assert sorted(first) == sorted(expected) == sorted(second)
    assert first != expected and first != second  # a permutation, new per epoch


def test_streaming_reads_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = "y" * 100
    with open(path, "w") as f:
        for i in range(40_000):
            f.write(f"{i} {line}\n")  # about 4.3 MB
    source = al.sources.TextLines(path, mode="streaming")
    tracemalloc.start()
    try:
        count = 0
        for item in source.stream():
            count += len(item) > 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 40_000
    assert peak < 512 * 1024, f"streaming a 4 MB file peaked at {peak} bytes"


def test_jsonlines_yields_dicts_and_skips_blank_lines(tmp_path: Path) -> None:
    records = [{"id": i, "text": f"t{i}", "tags": list(range(i % 3))} for i in range(50)]
    lines = [json.dumps(r) for r in records]
    lines.insert(10, "")
    lines.insert(20, "\r")  # a CRLF blank line once the "\n" is added
    path = tmp_path / "data.jsonl"
    path.write_text("\n" + "\n".join(lines) + "\n\n")
    source = al.sources.JsonLines(path)
    assert len(source) == 50
    assert [source[i] for i in range(50)] == records
    assert source.__getitems__([49, 0, 25]) == [records[49], records[0], records[25]]
    for mode in ("streaming", "eager", "cached"):
        with al.Loader.from_source(al.sources.JsonLines(path, mode=mode)) as loader:
            assert list(loader) == records


def test_corrupt_json_line_names_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    source = al.sources.JsonLines(path)
    with pytest.raises(al.DataCorruptionError, match="record 2 of") as info:
        source[1]
    assert info.value.key == 1
    with pytest.raises(al.DataCorruptionError, match="key 1"):
        source.__getitems__([0, 1, 2])
    with pytest.raises(al.DataCorruptionError, match="line 2 of"):
        list(source.stream())


def test_skipping_corrupt_records_with_textlines_and_map(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    loader = al.Loader.from_source(al.sources.TextLines(path)).map(
        json.loads, on_error="skip", max_failures=1
    )
    with loader:
        assert list(loader) == [{"a": 1}, {"a": 3}]
        errors = loader.stats()["errors"]
    assert [e["key"] for e in errors] == [1]


def test_undecodable_line_is_data_corruption(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"ok\ncaf\xe9\nok\n")
    source = al.sources.TextLines(path)
    with pytest.raises(al.DataCorruptionError, match="line 2") as info:
        source[1]
    assert info.value.key == 1
    assert al.sources.TextLines(path, encoding="latin-1")[1] == "café"
    assert al.sources.TextLines(path, errors="replace")[1] == "caf\ufffd"


def test_bad_paths_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(al.DataNotFoundError, match=r"missing\.txt"):
        al.sources.TextLines(tmp_path / "missing.txt")
    with pytest.raises(al.DataNotFoundError, match=r"\*\.nothing"):
        al.sources.TextLines(tmp_path / "*.nothing")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(al.DataNotFoundError, match="empty"):
        al.sources.TextLines(tmp_path / "empty.txt")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(al.DataNotFoundError, match="no lines"):
        al.sources.JsonLines(tmp_path / "blank.jsonl")
    with pytest.raises(TypeError, match="path_or_glob"):
        al.sources.TextLines(None)
    with pytest.raises(LookupError):
        al.sources.TextLines(tmp_path / "blank.jsonl", encoding="no-such-codec")


def test_streaming_mode_is_a_stream(text_file: Path) -> None:
    source = al.sources.TextLines(text_file, mode="streaming")
    with pytest.raises(TypeError, match="streaming"):
        source[0]
    with pytest.raises(TypeError, match="length"):
        len(source)
    with pytest.raises(ValueError, match="indexable"):
        al.Loader.from_source(source, shuffle=True)
    with al.Loader.from_source(source).batch(64, collate=al.collate.as_list) as loader:
        assert [x for batch in loader for x in batch] == _lines(text_file)


def test_pickled_copy_reopens_its_own_file(text_file: Path) -> None:
    source = al.sources.TextLines(text_file)
    first = source[10]
    copy = pickle.loads(pickle.dumps(source))
    assert not copy._fds.is_open
    assert copy[10] == first
    source.close()
    assert source[11] == _lines(text_file)[11]  # reopens after close
    source.close()


def _numbered(path: Path, count: int, prefix: str = "line") -> None:
    path.write_text("".join(f"{prefix} {i}\n" for i in range(count)))


@pytest.mark.parametrize("cls", [al.sources.TextLines, al.sources.JsonLines])
def test_file_truncated_since_indexed_is_data_corruption(tmp_path: Path, cls: type) -> None:
    path = tmp_path / "data.txt"
    path.write_text("".join(json.dumps(f"line {i}") + "\n" for i in range(10)))
    source = cls(path)
    with al.Loader.from_source(source) as loader:
        assert len(list(loader)) == 10
        path.write_text('"a"\n"b"\n')  # rewritten shorter between epochs
        with pytest.raises(al.DataCorruptionError, match="changed since it was indexed") as info:
            list(loader)
    message = str(info.value)
    assert str(path) in message and f"{cls.__name__}:" in message
    assert f"key {info.value.key}" in message and f"of {str(path)!r}" in message


def test_truncated_file_names_line_and_key_for_single_and_block_reads(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    _numbered(path, 10)  # "line i\n": 7 bytes each
    source = al.sources.TextLines(path)
    assert source[9] == "line 9"
    with open(path, "r+b") as f:
        f.truncate(7 * 8 + 3)  # line 9 gone, line 8 cut short
    with pytest.raises(
        al.DataCorruptionError, match=r"line 9 of .*\(key 8\).*changed since it was indexed"
    ) as info:
        source[8]
    assert info.value.key == 8
    with pytest.raises(al.DataCorruptionError, match=r"line 10 of .*\(key 9\)") as info:
        source.__getitems__([9, 0])
    assert info.value.key == 9
    with pytest.raises(al.DataCorruptionError, match=r"\(key 8\)"):
        source.__getitems__([0, 1, 8, 9])  # one merged read: the first line it cannot cover


def test_file_rewritten_shorter_is_caught_before_reading_wrong_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    _numbered(path, 10)
    source = al.sources.TextLines(path)
    assert source[0] == "line 0"
    _numbered(path, 4, prefix="L")  # "L 0\nL 1\n...": line 0's byte range still exists
    with pytest.raises(al.DataCorruptionError, match=r"line 1 of .*\(key 0\).*changed since it was indexed"):
        source[0]
    with pytest.raises(al.DataCorruptionError, match="changed since it was indexed"):
        source.__getitems__([0, 1])


def test_appending_to_an_indexed_file_keeps_its_lines_readable(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    _numbered(path, 10)
    source = al.sources.TextLines(path)
    with open(path, "a") as f:
        f.write("more\n")
    assert source.__getitems__([9, 0]) == ["line 9", "line 0"]
    assert len(source) == 10


def test_deleted_file_with_many_files_is_not_found_or_corrupt(tmp_path: Path) -> None:
    for i in range(300):  # more files than are kept open: each read opens its file
        (tmp_path / f"{i:03d}.txt").write_text(f"a{i}\nb{i}\n")
    source = al.sources.TextLines(tmp_path / "*.txt")
    assert source[599] == "b299"
    (tmp_path / "299.txt").write_text("a\n")
    with pytest.raises(al.DataCorruptionError, match=r"299\.txt.*\(key 599\).*changed since"):
        source[599]
    (tmp_path / "299.txt").unlink()
    with pytest.raises(al.DataNotFoundError, match=r"299\.txt"):
        source[599]
    source.close()


def _long_lines(tmp_path: Path, name: str, count: int, *, ending: str = "\n", last_ending: str = "") -> Path:
    """Lines over 4 KB, so a shuffled block reads each with a pread of its own."""
    path = tmp_path / name
    lines = [f"{name} {i} " + "é" * (2100 + i) for i in range(count)]
    path.write_bytes((ending.join(lines) + last_ending).encode())
    return path


def test_shuffled_reads_of_long_lines_one_read_each(tmp_path: Path) -> None:
    """Every line a read of its own (the shuffled-block path) when no two keys are neighbours:
    CRLF and LF files, a last line without a newline, two files, keys in any order."""
    paths = [
        _long_lines(tmp_path, "a.txt", 7, ending="\r\n"),
        _long_lines(tmp_path, "b.txt", 5, last_ending="\n"),
    ]
    expected = _lines(paths[0]) + _lines(paths[1])
    source = al.sources.TextLines(str(tmp_path / "*.txt"))
    assert source.paths == paths
    for keys in ([10, 0, 6, 2, 4, 8], [11, 5, 3], [9, 1, 11]):  # no two within a line: a read each
        assert source.__getitems__(keys) == [expected[k] for k in keys]
    order = np.random.default_rng(1).permutation(len(expected))  # neighbours too: merged reads
    assert source.__getitems__(order) == [expected[k] for k in order]


def test_shuffled_reads_of_long_lines_report_the_line(tmp_path: Path) -> None:
    path = _long_lines(tmp_path, "a.txt", 6, last_ending="\n")
    data = bytearray(path.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 3] = 0xFF  # line 2 is no longer UTF-8
    path.write_bytes(bytes(data))
    source = al.sources.TextLines(path)
    with pytest.raises(al.DataCorruptionError, match=r"line 2 of .*\(key 1\) is not valid utf-8"):
        source.__getitems__([4, 1])
    with open(path, "r+b") as f:
        f.truncate(len(data) - 10)  # the last line cut short
    with pytest.raises(al.DataCorruptionError, match=r"line 6 of .*\(key 5\).*changed since it was indexed"):
        source.__getitems__([0, 5, 2])


def test_block_reads_check_their_keys_as_single_reads_do(text_file: Path) -> None:
    """A list of keys (a run's block) and an array of them are checked alike: negative keys
    count from the end, a key out of range is named, a non-integer key is refused."""
    source = al.sources.TextLines(text_file)
    expected = _lines(text_file)
    assert source.__getitems__([3, -1, 0]) == [expected[3], expected[-1], expected[0]]
    assert source.__getitems__(np.array([-300, 299])) == [expected[0], expected[299]]
    for keys in ([0, 300], np.array([0, 300]), [-301, 2]):
        with pytest.raises(IndexError, match=r"index (300|-301) out of range for 300 items"):
            source.__getitems__(keys)
    with pytest.raises(TypeError, match="indices must be integers"):
        source.__getitems__([1.5, 2])


def test_block_reads_slice_each_file_mapped_once_and_close_unmaps(tmp_path: Path) -> None:
    """A shuffled block of plain text is sliced from each file's read-only mapping, made on the
    first read and closed by ``close()``; reads after it map again."""
    paths = [
        _long_lines(tmp_path, "a.txt", 4, ending="\r\n"),
        _long_lines(tmp_path, "b.txt", 3, last_ending="\n"),
    ]
    expected = _lines(paths[0]) + _lines(paths[1])
    source = al.sources.TextLines(str(tmp_path / "*.txt"))
    assert not source._maps.is_open
    order = [6, 0, 3, 5, 1]
    assert source.__getitems__(order) == [expected[k] for k in order]
    assert sorted(source._maps.get()) == [0, 1]  # one mapping per file read
    source.close()
    assert not source._maps.is_open
    assert source.__getitems__([4, 2]) == [expected[4], expected[2]]
    source.close()
