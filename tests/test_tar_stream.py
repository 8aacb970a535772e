"""The tar header reader of the shard streams reads what ``tarfile`` reads."""

from __future__ import annotations

import io
import tarfile

import pytest

from aioloader.errors import DataCorruptionError
from aioloader.io.tar_stream import TarParser, _header

_LONG_DIR = "d" * 90 + "/" + "e" * 60  # over 100 characters: a ustar prefix, or a long-name header


def _archive(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in (("a/x.jpg", b"jpeg"), (f"{_LONG_DIR}/y.cls", b"7"), ("a/z.txt", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        directory = tarfile.TarInfo("a/sub")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
    return out.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_headers_read_as_tarfile_reads_them(fmt: int) -> None:
    data = _archive(fmt)
    seen = 0
    for at in range(0, len(data), 512):
        header = data[at : at + 512]
        try:
            expected = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            continue  # data blocks and the end marker
        assert _header(header) == (expected.name, expected.size, expected.type)
        seen += 1
    assert seen >= 4
    members = TarParser("mem://shard").feed(data)
    assert [(m.name, m.data) for m in members] == [
        ("a/x.jpg", b"jpeg"),
        (f"{_LONG_DIR}/y.cls", b"7"),
        ("a/z.txt", b""),
    ]


def test_bad_checksum_is_corruption_naming_the_member_before() -> None:
    data = bytearray(_archive(tarfile.USTAR_FORMAT))
    second = 1024  # "a/x.jpg": one header block and one data block
    data[second + 10] ^= 0x01  # a name byte: the stored checksum no longer matches
    with pytest.raises(tarfile.HeaderError):
        _header(bytes(data[second : second + 512]))
    with pytest.raises(DataCorruptionError) as caught:
        TarParser("mem://shard").feed(bytes(data))
    assert caught.value.key == ("mem://shard", "a/x.jpg")
