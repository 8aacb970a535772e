"""Incremental reading of WebDataset tar shards: bytes in, samples out.

:class:`TarParser` takes a shard's bytes in any pieces and yields its file members (name, the
offset of the member's first header, the data), following the pax and GNU long-name headers
that Python's ``tarfile`` writes. :class:`SampleGrouper` groups consecutive members into
samples by key prefix, as the ``webdataset`` package does: ``dir/x.jpg`` and ``dir/x.cls``
form one sample ``{"__key__": "dir/x", "jpg": ..., "cls": ...}``.

Damage is reported, not guessed around: a header with a bad checksum, or a shard that ends
inside a member, raises :class:`~aioloader.errors.DataCorruptionError` naming the shard's URL
and the member.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

from aioloader.errors import DataCorruptionError

_BLOCK = 512
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
# webdataset's ``base_plus_ext``: the key is the path up to the first dot of the file's name
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(slots=True)
class Member:
    name: str
    offset: int  # of its first header (a pax or long-name header included)
    data: bytes


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if it has one."""
    pos = 0
    found = None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        keyword, _, value = record.partition(b"=")
        if keyword == b"path":
            found = value.decode("utf-8", "surrogateescape")
        pos += length
    return found


class TarParser:
    """Feed a shard's bytes in order; get its file members. ``url`` names the shard in errors;
    ``base`` is the shard offset of the first byte fed (a ranged read of some samples)."""

    def __init__(self, url: str, *, base: int = 0) -> None:
        self.url = url
        self._buffer = bytearray()
        self._pos = base  # shard offset of _buffer[0]
        self._next_name: str | None = None  # from a pax or GNU long-name header
        self._member_start: int | None = None
        self._ended = False
        self.last_name: str | None = None

    def feed(self, data: bytes) -> list[Member]:
        self._buffer += data
        out: list[Member] = []
        buffer = self._buffer
        used = 0
        while not self._ended and len(buffer) - used >= _BLOCK:
            header = bytes(buffer[used : used + _BLOCK])
            if header.count(0) == _BLOCK:  # the end-of-archive marker
                self._ended = True
                used = len(buffer)
                break
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise DataCorruptionError(
                    f"corrupt tar header at byte {self._pos + used} of {self.url} "
                    f"(after member {self.last_name!r}): {exc}",
                    key=(self.url, self.last_name),
                ) from None
            total = _BLOCK + _padded(info.size)
            if len(buffer) - used < total:
                break  # the member's data (and its padding) is not all here yet
            data_start = used + _BLOCK
            payload = bytes(buffer[data_start : data_start + info.size])
            if self._member_start is None:
                self._member_start = self._pos + used
            if info.type == tarfile.XHDTYPE:
                self._next_name = _pax_path(payload) or self._next_name
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                self._next_name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type in _FILE_TYPES:
                name = self._next_name or info.name
                out.append(Member(name, self._member_start, payload))
                self.last_name = name
                self._next_name = None
                self._member_start = None
            else:  # directories, links, global pax headers: not samples
                self._next_name = None
                self._member_start = None
            used += total
        if used:
            del buffer[:used]
            self._pos += used
        return out

    def finish(self) -> None:
        """The shard's last byte was fed: raise if it ended inside a member."""
        if self._buffer and not self._ended and bytes(self._buffer).count(0) != len(self._buffer):
            raise DataCorruptionError(
                f"truncated shard {self.url}: it ends inside the member after {self.last_name!r} "
                f"({len(self._buffer)} bytes of a header or its data)",
                key=(self.url, self.last_name),
            )


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, or None for names that belong to no sample."""
    match = _KEY_RE.match(name)
    if match is None:
        return None
    key, ext = match.group(1), match.group(2)
    if key.split("/")[-1].startswith("__"):  # webdataset's metadata files
        return None
    return key, ext.lower()


@dataclass(slots=True)
class Sample:
    index: int  # in the shard
    offset: int  # of its first member's header
    end: int  # shard offset just past its last member
    fields: dict[str, Any] = field(default_factory=dict)


class SampleGrouper:
    """Consecutive members with the same key prefix make one sample."""

    def __init__(self, url: str, *, first_index: int = 0) -> None:
        self.url = url
        self._current: Sample | None = None
        self._index = first_index

    def push(self, member: Member) -> list[Sample]:
        parts = split_name(member.name)
        if parts is None:
            return []
        key, ext = parts
        current = self._current
        end = member.offset + _BLOCK + _padded(len(member.data))
        if current is not None and current.fields["__key__"] == key:
            if ext in current.fields:
                raise DataCorruptionError(
                    f"{self.url}: sample {key!r} has two {ext!r} members", key=(self.url, member.name)
                )
            current.fields[ext] = member.data
            current.end = end
            return []
        done = [] if current is None else [current]
        self._current = Sample(self._index, member.offset, end, {"__key__": key, ext: member.data})
        self._index += 1
        return done

    def finish(self) -> list[Sample]:
        done, self._current = self._current, None
        return [] if done is None else [done]
