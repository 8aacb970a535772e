"""Read fusion (``aioloader._run.read_fusion``): the files of an ``ImageFolder`` are read by the
process pool's workers, with the map stage after the read. Checked against the same pipeline
read by the parent: the same batches, pixel by pixel, over two shuffled epochs; a missing file
still fails the run named by the read stage; corrupt files, killed workers and resume behave as
before; the other loading modes keep the read in the parent. Real files, real processes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aioloader as al
from aioloader.monitor.autotune import THREAD_ABOVE_S, place
from aioloader.sources._cached_read import read_files
from aioloader.transforms import decode_image
from tests.test_sources_images import _evict  # drop a file from the page cache

N = 40


def _images(root: Path, n: int = N) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (12 + i % 5, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.jpg")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _images(tmp_path / "images")


def _loader(source: al.sources.ImageFolder, executor: str, **options) -> al.Loader:
    return (
        al.Loader.from_source(source, shuffle=True, seed=5)
        .map(decode_image(size=8), executor=executor, concurrency=2, **options)
        .batch(4)
    )


def _epochs(loader: al.Loader, epochs: int = 2) -> list[tuple[torch.Tensor, list[int]]]:
    return [(images, labels.tolist()) for _ in range(epochs) for images, labels in loader]


def _same(got: list, expected: list) -> bool:
    return len(got) == len(expected) and all(
        torch.equal(a, b) and la == lb for (a, la), (b, lb) in zip(got, expected, strict=True)
    )


class DieOnceDecoding:
    """decode_image(size=8) that kills its worker the first time it sees the image of ``key``."""

    def __init__(self, marker: Path, key: int) -> None:
        self.marker, self.key, self.decode = str(marker), key, decode_image(size=8)

    def __call__(self, item: tuple[bytes, int]) -> tuple[torch.Tensor, int]:
        if item[0].key == self.key:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(3)
            except FileExistsError:
                pass
        return self.decode(item)


@pytest.mark.parametrize("on_error", ["raise", "skip"])  # skip: the map is not fused with the batch
def test_workers_read_the_files_and_give_the_batches_the_parent_would(root: Path, on_error: str) -> None:
    expected = _epochs(_loader(al.sources.ImageFolder(root), "inline"))
    source = al.sources.ImageFolder(root)
    with _loader(source, "process", on_error=on_error) as loader:
        got = _epochs(loader)
        stages = loader.stats()["stages"]
    assert _same(got, expected)
    assert [s["name"] for s in stages] == ["source", "map(ImageDecoder)", "batch"]
    assert stages[1]["reads"] == "read" and stages[1]["fused"] == ("batch" if on_error == "raise" else None)
    assert source._cached.hits + source._cached.misses == 0  # no file was read in this process


def test_a_missing_file_fails_the_run_named_by_the_read_stage(root: Path) -> None:
    source = al.sources.ImageFolder(root)
    gone = 17
    os.remove(source.path(gone))
    with (
        _loader(source, "process", on_error="raise", max_failures=5) as loader,
        pytest.raises(al.DataNotFoundError) as info,
    ):
        list(loader)
    assert (info.value.stage, info.value.key) == ("read", gone)
    assert str(source.path(gone)) in str(info.value)


def test_a_missing_file_is_skipped_under_skip_and_reported_with_its_key(root: Path) -> None:
    """Issue 21: on_error="skip" covers reading (it ended the run before)."""
    source = al.sources.ImageFolder(root)
    gone = 17
    os.remove(source.path(gone))
    with _loader(source, "process", on_error="skip", max_failures=5) as loader:
        labels = [label for _, batch in loader for label in batch.tolist()]
        errors = loader.stats()["errors"]
    assert len(labels) == N - 1
    assert [(e["key"], e["type"]) for e in errors] == [(gone, "DataNotFoundError")]
    assert str(source.path(gone)) in errors[0]["message"]


def test_a_corrupt_file_is_skipped_and_reported_with_its_key(root: Path) -> None:
    source = al.sources.ImageFolder(root)
    bad = 9
    source.path(bad).write_bytes(b"\xff\xd8 not a jpeg")
    with _loader(source, "process", on_error="skip", max_failures=1) as loader:
        labels = [label for _, batch in loader for label in batch.tolist()]
        errors = loader.stats()["errors"]
    assert len(labels) == N - 1
    assert [(e["key"], e["type"]) for e in errors] == [(bad, "DataCorruptionError")]


@pytest.mark.slow
def test_a_worker_killed_while_decoding_is_replaced_and_its_files_read_again(root: Path, tmp_path: Path) -> None:
    expected = _epochs(_loader(al.sources.ImageFolder(root), "inline"), 1)
    source = al.sources.ImageFolder(root)
    loader = (
        al.Loader.from_source(source, shuffle=True, seed=5)
        .map(DieOnceDecoding(tmp_path / "died", 23), executor="process", concurrency=2)
        .batch(4)
    )
    with loader:
        got = _epochs(loader, 1)
    assert (tmp_path / "died").exists()
    assert _same(got, expected)  # nothing lost, nothing doubled, in order


def test_resume_mid_epoch_continues_with_the_next_batch(root: Path) -> None:
    expected = _epochs(_loader(al.sources.ImageFolder(root), "inline"), 2)
    with _loader(al.sources.ImageFolder(root), "thread") as first:
        done = []
        for batch in first:
            done.append((batch[0], batch[1].tolist()))
            if len(done) == 3:
                break
        state = first.state_dict()
    with _loader(al.sources.ImageFolder(root), "thread") as resumed:
        resumed.load_state_dict(state)
        rest = _epochs(resumed, 1) + _epochs(resumed, 1)
    assert _same(done + rest, expected)


@pytest.mark.parametrize("mode", ["cached", "eager"])
def test_modes_that_hold_items_here_keep_the_read_in_this_process(root: Path, mode: str) -> None:
    expected = _epochs(_loader(al.sources.ImageFolder(root), "inline"), 1)
    with _loader(al.sources.ImageFolder(root, mode=mode), "thread") as loader:
        got = _epochs(loader, 1)
        names = [s["name"] for s in loader.stats()["stages"]]
    assert _same(got, expected)
    assert names == ["source", "read", "map(ImageDecoder)", "batch"]


def test_threads_and_auto_read_in_their_workers_too(root: Path) -> None:
    expected = _epochs(_loader(al.sources.ImageFolder(root), "inline"))
    for executor in ("thread", "auto"):
        with _loader(al.sources.ImageFolder(root), executor) as loader:
            assert _same(_epochs(loader), expected)
            assert loader.stats()["stages"][1]["reads"] == "read"


def test_auto_sends_a_costly_stage_that_reads_its_own_items_to_processes() -> None:
    costly = 5 * THREAD_ABOVE_S
    assert place(costly, False, True, True, reads_keys=True) == "process"  # though it frees the GIL
    assert place(costly, False, True, True, reads_keys=False) == "thread"
    assert place(costly, False, False, True, reads_keys=True) == "thread"  # cannot be pickled
    assert place(THREAD_ABOVE_S / 4, False, True, True, reads_keys=True) == "thread"  # cheap
    assert place(1e-7, None, True, True, reads_keys=True) == "thread"  # never inline: reads block


def label_of(item: tuple[bytes, int]) -> int:
    return item[1]


def test_auto_times_fn_without_the_reads_so_cold_files_do_not_send_a_cheap_fn_to_processes(
    tmp_path: Path,
) -> None:
    """Reads of cold files are slow; a cheap fn must not be placed by their cost (it went to
    processes, and kept them in the warm epochs, at 0.66x of inline's rate)."""
    root = tmp_path / "big"
    for i in range(24):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 2}" / f"{i}.jpg").write_bytes(os.urandom(200_000))
    source = al.sources.ImageFolder(root)
    cold = all(_evict(source.path(i)) for i in range(len(source)))
    with al.Loader.from_source(source).map(label_of) as loader:
        labels = list(loader)
        placement = loader.stats()["stages"][1]["placement"]
    assert labels == source.targets
    assert placement["decision"] == "thread", placement
    if not cold:
        pytest.skip("this file system keeps files in memory: the reads were not cold")


class Captioned(al.sources.ImageFolder):
    """A subclass that reads its own way: items carry the file name too."""

    async def aget(self, key: int):
        raw, label = await super().aget(key)
        return raw, label, self.files[key]


class WithTransform(al.sources.ImageFolder):
    """A subclass holding what cannot be pickled (a lambda, as torchvision-style datasets do)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.transform = lambda x: x


def caption_of(item: tuple[bytes, int, str]) -> str:
    return item[2]


def test_a_subclass_that_reads_its_own_way_keeps_its_read_stage(root: Path) -> None:
    source = Captioned(root)
    with al.Loader.from_source(source).map(caption_of, executor="process", concurrency=1) as loader:
        assert list(loader) == source.files
        assert [s["name"] for s in loader.stats()["stages"]] == ["source", "read", "map(caption_of)"]


def test_what_the_source_holds_besides_its_files_need_not_pickle(root: Path) -> None:
    expected = _epochs(_loader(al.sources.ImageFolder(root), "inline"), 1)
    with _loader(WithTransform(root), "process") as loader:
        assert _same(_epochs(loader, 1), expected)
        assert loader.stats()["stages"][1]["reads"] == "read"


def test_a_file_that_cannot_be_read_is_named_by_its_key_and_path(root: Path) -> None:
    source = al.sources.ImageFolder(root)
    bad = 13
    os.remove(source.path(bad))
    os.mkdir(source.path(bad))  # a directory where the file was: IsADirectoryError
    with _loader(source, "process") as loader, pytest.raises(IsADirectoryError) as info:
        list(loader)
    assert (info.value.stage, info.value.key) == ("read", bad)
    assert str(source.path(bad)) in str(info.value)


def test_read_files_reads_cached_cold_and_empty_files_whole_in_order(tmp_path: Path) -> None:
    contents = [os.urandom(n) for n in (70_000, 0, 5, 300_000)]
    paths = []
    for i, content in enumerate(contents):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(content)
    cold = [_evict(paths[0]), _evict(paths[3])]
    assert [bytes(b) for b in read_files([str(p) for p in paths])] == contents
    if not all(cold):
        pytest.skip("this file system keeps files in memory: the cold path was not exercised")


def test_read_files_names_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "here.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as info:
        read_files([str(tmp_path / "here.bin"), str(tmp_path / "gone.bin")])
    assert info.value.filename == str(tmp_path / "gone.bin")


_MANY_COLD_FILES = """
import os, resource, sys
from aioloader.sources._cached_read import COLD_WINDOW, read_files
paths = sys.argv[1:]
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used + COLD_WINDOW + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(sum(len(b) for b in read_files(paths)))
"""


def test_read_files_keeps_a_big_cold_batch_under_the_descriptor_limit(tmp_path: Path) -> None:
    """A task of more cold files than descriptors left: they are opened a window at a time
    (each file open until read failed with EMFILE past the limit)."""
    import subprocess
    import sys

    paths = []
    for i in range(300):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(b"x" * (1000 + i))
    cold = all(_evict(p) for p in paths)
    done = subprocess.run(
        [sys.executable, "-c", _MANY_COLD_FILES, *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == sum(1000 + i for i in range(300))
    if not cold:
        pytest.skip("this file system keeps files in memory: nothing was cold")
