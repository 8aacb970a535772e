"""Line-offset index of text files: where each line starts, built once without loading the text.

The files are scanned in blocks of a few MiB; newline positions are found with numpy. For each
file the index keeps the byte offset of every kept line's start plus the file's size, in one
flat array (``uint32`` when every file is under 4 GiB): ``n_lines + n_files`` integers in all.
Line ``g`` of file ``f`` spans ``offsets[g + f] : offsets[g + f + 1]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aioloader.errors import os_read_error

_BLOCK = 4 << 20
_NEWLINE = 10


@dataclass(frozen=True, slots=True)
class LineIndex:
    offsets: np.ndarray  # per file: the start of each line, then the file size
    file_first: np.ndarray  # global index of each file's first line; n_files + 1 entries (int64)

    def __len__(self) -> int:
        return int(self.file_first[-1])

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.file_first.nbytes)

    def locate(self, index: int) -> tuple[int, int, int]:
        """(file, start, stop) of line ``index``."""
        f = int(np.searchsorted(self.file_first, index, side="right")) - 1
        pos = index + f
        return f, int(self.offsets[pos]), int(self.offsets[pos + 1])

    def files_of(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.file_first, indices, side="right") - 1


def _line_starts(path: Path, skip_blank: bool) -> tuple[np.ndarray, int]:
    """Start offsets of the lines of ``path`` (blank lines left out when ``skip_blank``), and its size."""
    ends: list[np.ndarray] = []
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise os_read_error(exc, f"cannot index {str(path)!r}") from None
    with f:
        offset = 0
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            ends.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == _NEWLINE) + (offset + 1))
            offset += len(block)
    size = offset  # what was read, if the file changed since stat
    line_ends = np.concatenate(ends) if ends else np.empty(0, dtype=np.int64)
    unterminated = bool(size) and (not len(line_ends) or line_ends[-1] != size)
    if unterminated:
        line_ends = np.append(line_ends, size)  # a last line without a newline
    starts = np.concatenate([[0], line_ends[:-1]]).astype(np.int64) if len(line_ends) else line_ends
    if skip_blank and len(starts):
        lengths = line_ends - starts
        if unterminated:
            lengths[-1] += 1  # count the missing newline, so "x" at the end is not taken for blank
        keep = lengths > 1  # b"\n" alone is blank; b"\r\n" is checked below
        crlf = np.flatnonzero(lengths == 2)
        if len(crlf):
            with open(path, "rb") as f:
                for i in crlf:
                    f.seek(int(starts[i]))
                    if f.read(2) == b"\r\n":
                        keep[i] = False
        starts = starts[keep]
    return starts, size


def build_line_index(paths: list[Path], *, skip_blank: bool = False) -> LineIndex:
    """Index every line of ``paths`` (in order); ``skip_blank`` leaves out empty lines."""
    per_file = [_line_starts(p, skip_blank) for p in paths]
    biggest = max((size for _, size in per_file), default=0)
    dtype = np.uint32 if biggest < 2**32 else np.uint64
    parts = []
    for starts, size in per_file:
        parts.append(starts.astype(dtype))
        parts.append(np.asarray([size], dtype=dtype))
    offsets = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    counts = np.asarray([len(s) for s, _ in per_file], dtype=np.int64)
    file_first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return LineIndex(offsets, file_first)


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset``: fewer only at the end of the file, which for an indexed
    line means the file shrank since it was indexed (the caller raises, naming the line)."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
