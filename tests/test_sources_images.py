"""ImageFolder and decode_image against real image files, checked with Pillow and plain open()."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aioloader as al
from aioloader.transforms import decode_image


def _save(path: Path, seed: int, size: tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{cat,dog,empty}/..., JPEGs and PNGs, a nested folder, files to filter out."""
    root = tmp_path / "images"
    _save(root / "dog" / "b.jpg", 1)
    _save(root / "dog" / "a.png", 2)
    _save(root / "cat" / "z.JPG", 3)
    _save(root / "cat" / "nested" / "y.jpeg", 4)
    _save(root / "cat" / "x.jpg", 5)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.jpg").write_bytes(b"hidden")
    (root / "empty").mkdir()
    (root / "stray.jpg").write_bytes(b"ignored: files beside class folders")
    return root


EXPECTED = [  # (relative path, label) in index order: classes sorted, files sorted within a class
    ("cat/x.jpg", 0),
    ("cat/z.JPG", 0),
    ("cat/nested/y.jpeg", 0),
    ("dog/a.png", 1),
    ("dog/b.jpg", 1),
]


def _pil_chw(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None:
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def test_classes_labels_and_bytes_match_the_files(tree: Path) -> None:
    source = al.sources.ImageFolder(tree)
    assert source.classes == ["cat", "dog", "empty"]
    assert source.class_to_idx == {"cat": 0, "dog": 1, "empty": 2}
    assert len(source) == len(EXPECTED)
    # os.walk order inside a class: files of the folder, then sub-folders
    assert sorted(source.files) == sorted(rel for rel, _ in EXPECTED)
    assert source.targets == [0, 0, 0, 1, 1]
    for i in range(len(source)):
        raw, label = source[i]
        rel = source.files[i]
        assert raw == (tree / rel).read_bytes()
        assert label == dict(EXPECTED)[rel]
        assert raw.path == str(tree / rel) and raw.key == i
        assert source.path(i) == tree / rel


async def test_aget_reads_with_async_io_and_matches(tree: Path) -> None:
    source = al.sources.ImageFolder(tree)
    for i in range(len(source)):
        raw, label = await source.aget(i)
        assert (raw, label) == source[i]
    adapted = al.sources.adapt(source)
    assert adapted.aget_one is not None and adapted.read_concurrency == 16


def test_extensions_filter_and_flat_folder_is_unlabelled(tree: Path) -> None:
    pngs = al.sources.ImageFolder(tree, extensions=["PNG"])
    assert pngs.files == ["dog/a.png"]
    flat = al.sources.ImageFolder(tree / "dog")
    assert flat.classes == [] and flat.targets == []
    assert flat.files == ["a.png", "b.jpg"]
    assert flat[1] == (tree / "dog" / "b.jpg").read_bytes()  # bytes alone, no label


def test_decode_image_equals_pillow(tree: Path) -> None:
    source = al.sources.ImageFolder(tree)
    plain, resized, rect = decode_image(), decode_image(size=8), decode_image(size=(6, 10))
    for i in range(len(source)):
        path = source.path(i)
        image, label = plain(source[i])
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 24)
        assert image.is_contiguous()
        assert torch.equal(image, _pil_chw(path))
        assert label == source.targets[i]
        assert torch.equal(resized(source[i][0]), _pil_chw(path, (8, 8)))
        assert torch.equal(rect(source[i][0]), _pil_chw(path, (6, 10)))
    gray = decode_image(mode="L")(source[0][0])
    assert gray.shape == (1, 16, 24)
    assert pickle.loads(pickle.dumps(resized))(source[0][0]).shape == (3, 8, 8)


def _photo_like(path: Path, width: int, height: int, mode: str) -> None:
    """A JPEG/PNG with gradients and noise, the kind of content a resize filter is judged on."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = np.random.default_rng(width * height).normal(0, 20, (height, width, 4))
    base = np.stack([xx * 0.7, yy * 0.9, (xx + yy) / 3, xx * 0 + 200], axis=-1) % 256
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)


@pytest.mark.parametrize(
    ("mode", "source_size", "size"),
    [
        ("RGB", (320, 240), (224, 224)),  # the common case: a photo down to a square
        ("RGB", (320, 240), (100, 150)),
        ("RGB", (24, 16), (40, 48)),  # upscaling
        ("L", (320, 240), (224, 224)),
        ("RGBA", (320, 240), (57, 91)),
    ],
)
def test_decode_image_bilinear_resize_matches_pillow(
    tmp_path: Path, mode: str, source_size: tuple[int, int], size: tuple[int, int]
) -> None:
    """The default filter resizes with torch's uint8 kernel (2.8x faster than Pillow's): the
    result must stay Pillow's ``BILINEAR``, a pixel off by at most one level."""
    path = tmp_path / ("image.png" if mode == "RGBA" else "image.jpg")
    _photo_like(path, *source_size, mode)
    decoded = decode_image(size=size, mode=mode)(path.read_bytes())
    with Image.open(path) as image:
        expected = np.asarray(image.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    assert decoded.dtype == torch.uint8 and decoded.is_contiguous()
    assert tuple(decoded.shape) == expected.shape
    difference = np.abs(decoded.numpy().astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1
    assert difference.mean() < 0.01  # rounding differences only, not a different filter


def test_decode_image_other_filters_are_pillows(tmp_path: Path) -> None:
    path = tmp_path / "image.jpg"
    _photo_like(path, 64, 48, "RGB")
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB").resize((30, 20), Image.Resampling.BICUBIC))
    decoded = decode_image(size=(20, 30), resample="bicubic")(path.read_bytes())
    assert torch.equal(decoded, torch.from_numpy(expected.transpose(2, 0, 1).copy()))


def test_decode_image_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="size"):
        decode_image(size="big")
    with pytest.raises(ValueError, match="size"):
        decode_image(size=0)
    with pytest.raises(ValueError, match="mode"):
        decode_image(mode="CMYKX")
    with pytest.raises(ValueError, match="resample"):
        decode_image(resample="magic")
    with pytest.raises(TypeError, match="raw bytes"):
        decode_image()(123)


def test_corrupt_image_names_file_and_key(tree: Path) -> None:
    (tree / "dog" / "c.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    source = al.sources.ImageFolder(tree)
    key = source.files.index("dog/c.jpg")
    with pytest.raises(al.DataCorruptionError, match=r"c\.jpg") as info:
        decode_image()(source[key])
    assert info.value.key == key and f"key {key}" in str(info.value)
    with pytest.raises(al.DataCorruptionError, match="sample of 3 bytes"):
        decode_image()(b"abc")


def test_loader_skips_a_corrupt_image_and_reports_its_key(tree: Path) -> None:
    (tree / "dog" / "c.jpg").write_bytes(b"garbage")
    source = al.sources.ImageFolder(tree)
    bad = source.files.index("dog/c.jpg")
    loader = (
        al.Loader.from_source(source, shuffle=True, seed=3)
        .map(decode_image(size=8), executor="thread", on_error="skip", max_failures=1)
        .batch(2)
    )
    with loader:
        labels = [label for _, batch_labels in loader for label in batch_labels.tolist()]
        errors = loader.stats()["errors"]
    assert sorted(labels) == [0, 0, 0, 1, 1]
    assert len(errors) == 1
    assert errors[0]["key"] == bad and errors[0]["type"] == "DataCorruptionError"
    assert "c.jpg" in errors[0]["message"]


def test_loader_decodes_every_image_once_shuffled(tree: Path) -> None:
    source = al.sources.ImageFolder(tree)
    expected = {source.files[i]: _pil_chw(source.path(i), (8, 8)) for i in range(len(source))}
    loader = al.Loader.from_source(source, shuffle=True, seed=1).map(
        lambda item: (decode_image(size=8)(item[0]), item[0].path)
    )
    with loader:
        got = list(loader)
    assert sorted(os.path.relpath(p, tree) for _, p in got) == sorted(expected)
    for image, path in got:
        assert torch.equal(image, expected[os.path.relpath(path, tree)])


def test_bad_roots_and_arguments(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(al.DataNotFoundError, match="nowhere"):
        al.sources.ImageFolder(missing)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(al.DataFormatError, match="not a directory"):
        al.sources.ImageFolder(tmp_path / "file.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(al.DataNotFoundError, match="empty"):
        al.sources.ImageFolder(empty)
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("no images")
    with pytest.raises(al.DataNotFoundError, match="empty"):
        al.sources.ImageFolder(empty)
    with pytest.raises(TypeError, match="root"):
        al.sources.ImageFolder(42)
    with pytest.raises(TypeError, match="extensions"):
        al.sources.ImageFolder(tmp_path, extensions=[1])
    with pytest.raises(ValueError, match="mode"):
        al.sources.ImageFolder(tmp_path, mode="sometimes")
    with pytest.raises(ValueError, match="read_concurrency"):
        al.sources.ImageFolder(tmp_path, read_concurrency=0)


def test_a_file_removed_after_listing_is_data_not_found(tree: Path) -> None:
    source = al.sources.ImageFolder(tree)
    os.remove(source.path(0))
    with pytest.raises(al.DataNotFoundError, match="key 0"):
        source[0]


def test_pickles_and_reads_in_the_copy(tree: Path) -> None:
    source = al.sources.ImageFolder(tree, mode="cached")
    source[0]
    copy = pickle.loads(pickle.dumps(source))
    assert copy[0] == source[0]
    assert copy.cache_stats()["items"] == 1  # each process fills its own cache


def test_cached_read_gives_the_whole_file_or_hands_it_to_a_thread(tmp_path):
    from aioloader.sources._cached_read import CachedReader

    reader = CachedReader()
    big = tmp_path / "big.bin"
    payload = os.urandom(3 << 20)
    big.write_bytes(payload)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path, content in ((big, payload), (empty, b"")):
        data = reader.read(str(path))
        # None only when the page cache lacks part of it (then aiofiles reads it)
        assert data is None or bytes(data) == content
    if CachedReader().enabled:  # a fresh reader: this one may be backing off after a slow read
        with pytest.raises(FileNotFoundError):
            CachedReader().read(str(tmp_path / "missing.bin"))
    if reader.enabled:  # Linux with RWF_NOWAIT: a file just written is in the page cache
        assert reader.hits >= 1


def _evict(path) -> bool:
    """Drop a file's pages from the page cache; False where that cannot be done (tmpfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            return True
        return False
    finally:
        os.close(fd)


def test_uncached_files_go_to_threads_and_a_cold_dataset_turns_the_fast_path_off(tmp_path):
    from aioloader.sources import _cached_read
    from aioloader.sources._cached_read import CachedReader

    if not CachedReader().enabled:
        pytest.skip("no preadv(RWF_NOWAIT) here")
    paths = []
    for i in range(_cached_read.STRIKES + 2):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(os.urandom(64 << 10))
        paths.append(path)
    if not all(_evict(p) for p in paths):
        pytest.skip("this file system keeps files in memory (tmpfs): nothing to evict")
    reader = CachedReader()
    assert [reader.read(str(p)) for p in paths] == [None] * len(paths)
    # the first STRIKES misses were attempts; then the reader backed off without trying
    assert reader.misses == _cached_read.STRIKES and reader.hits == 0
    # and ImageFolder still reads every byte of an evicted file (through the thread)
    root = tmp_path / "flat"
    root.mkdir()
    image = root / "a.jpg"
    image.write_bytes(b"\xff\xd8" + os.urandom(100_000))
    _evict(image)
    source = al.sources.ImageFolder(root)
    (raw,) = list(al.Loader.from_source(source))
    assert bytes(raw) == image.read_bytes()
