"""``TextLines`` and ``JsonLines``: the lines of text files as samples.

Streaming (``mode="streaming"``, or ``source.stream()`` in any mode) reads the files front to
back in constant memory. Random access (so ``shuffle=True`` works) goes through a line-offset
index built once when the source is made (:mod:`aioloader.sources._line_index`), never
loading the text: ``__getitems__`` of plain text slices each line from its file's read-only
mapping (one per file and process); JSON lines, or more files than are kept open, sort a block's
keys, merge neighbours into byte ranges and read each range with one ``os.pread``. A file that shrank since it was indexed (truncated or
rewritten between epochs) raises ``DataCorruptionError`` naming the file and the line rather
than giving short or shifted lines; one rewritten at the same size or larger is not detected.
"""

from __future__ import annotations

import codecs
import itertools
import json
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aioloader.errors import DataCorruptionError, DataNotFoundError, os_read_error
from aioloader.sources._handles import PerProcess, open_fd
from aioloader.sources._line_index import LineIndex, build_line_index, pread_exact
from aioloader.sources._modes import DEFAULT_MAX_MEMORY_USAGE, ModalSource, ReadFailure
from aioloader.sources._paths import expand_files

__all__ = ["TextLines", "JsonLines"]

_MAX_OPEN_FILES = 256  # more files than this: open each for the read, not kept open
_MERGE_GAP_BYTES = 4096  # read across a gap this small rather than issue another pread


def _strip_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    return raw


def _check_line_encoding(encoding: str) -> None:
    """``LookupError`` now for an unknown encoding (not at the first read); ``ValueError`` for one
    whose newline is not the byte ``b"\\n"`` (UTF-16, UTF-32): lines are split on that byte."""
    encoder = codecs.getincrementalencoder(encoding)()
    encoder.encode("\n")  # the first call may write a byte-order mark (utf-8-sig)
    if encoder.encode("\n") != b"\n":
        raise ValueError(
            f"encoding {encoding!r} does not write a newline as the single byte b'\\n', and text "
            "sources split lines on that byte; convert the files to UTF-8 (or another ASCII-compatible "
            "encoding) first"
        )


def _close_fds(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _close_maps(maps: dict[int, mmap.mmap]) -> None:
    for mapped in maps.values():
        mapped.close()
    maps.clear()


def _first_cut(stops: list[int], lo: int, hi: int, end: int) -> int:
    """The first of ``stops[lo:hi]`` past ``end`` (the first line a short read cut), else ``lo``."""
    return next((j for j in range(lo, hi) if stops[j] > end), lo)


class TextLines(ModalSource):
    """Every line of one file, or of the files a glob matches (sorted), as ``str``.

    A line is given without its line ending (``"\\n"`` or ``"\\r\\n"``). ``encoding`` and
    ``errors`` are those of :meth:`bytes.decode`; a line that does not decode raises
    ``DataCorruptionError`` with its key, file and line number.
    """

    _skip_blank = False
    _format: str | None = None  # what a bad line is not valid as (None: the encoding)
    _eager_factor = 1.0
    _eager_per_item = 64

    def __init__(
        self,
        path_or_glob: str | os.PathLike[str],
        *,
        mode: str = "lazy",
        encoding: str = "utf-8",
        errors: str = "strict",
        max_memory_usage: float = DEFAULT_MAX_MEMORY_USAGE,
    ) -> None:
        self._setup_mode(mode, max_memory_usage)
        if not isinstance(encoding, str) or not isinstance(errors, str):
            raise TypeError(f"encoding and errors must be str, got {encoding!r}, {errors!r}")
        _check_line_encoding(encoding)
        codecs.lookup_error(errors)  # LookupError now for an unknown handler, not at the first bad line
        self.encoding = encoding
        self.errors = errors
        self.paths = expand_files(path_or_glob, "path_or_glob")
        if all(p.stat().st_size == 0 for p in self.paths):
            names = ", ".join(repr(str(p)) for p in self.paths[:3])
            raise DataNotFoundError(
                f"{type(self).__name__}: {names} {'is' if len(self.paths) == 1 else 'are'} empty"
            )
        self._index: LineIndex | None = None
        if self.mode == "streaming" and self._skip_blank and not self._has_record():
            raise DataNotFoundError(f"{type(self).__name__}: no lines in {[str(p) for p in self.paths]}")
        if self.mode != "streaming":
            self._index = build_line_index(self.paths, skip_blank=self._skip_blank)
            if len(self._index) == 0:
                raise DataNotFoundError(f"{type(self).__name__}: no lines in {[str(p) for p in self.paths]}")
        self._fds = PerProcess(dict, _close_fds)
        self._maps = PerProcess(dict, _close_maps)  # file -> its indexed bytes, mapped read-only
        self._start_mode()

    def _has_record(self) -> bool:
        """Whether a file holds a line that is not blank (read up to the first one): streaming
        refuses a source of blank lines when it is made, as the line index does in the other modes."""
        for path in self.paths:
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as exc:
                raise os_read_error(exc, f"{type(self).__name__}: cannot read {str(path)!r}") from None
            with f:
                if any(raw not in (b"\n", b"\r\n") for raw in f):
                    return True
        return False

    @property
    def index_nbytes(self) -> int:
        """Memory taken by the line-offset index (0 in streaming mode)."""
        return 0 if self._index is None else self._index.nbytes

    # -- parsing ---------------------------------------------------------------------------
    def _decode(self, raw: bytes) -> Any:
        """A line's bytes (with its line ending) to the sample; raises ``ValueError`` if bad."""
        return _strip_newline(raw).decode(self.encoding, self.errors)

    def _corrupt(self, index: int, where: str, exc: Exception) -> DataCorruptionError:
        what = self._format or self.encoding
        return DataCorruptionError(
            f"{type(self).__name__}: {where} (key {index}) is not valid {what}: {exc}", key=index
        )

    def _where(self, file: int, index: int) -> str:
        first = int(self._require_index().file_first[file])
        kind = "record" if self._skip_blank else "line"
        return f"{kind} {index - first + 1} of {str(self.paths[file])!r}"

    # -- reading ---------------------------------------------------------------------------
    def _require_index(self) -> LineIndex:
        if self._index is None:
            raise TypeError(
                f"{type(self).__name__}(mode='streaming') has no line index: its length is not known "
                "and it has no random access"
            )
        return self._index

    def _length(self) -> int:
        return len(self._require_index())

    def _gone(self, file: int, key: int) -> DataNotFoundError:
        path = str(self.paths[file])
        return DataNotFoundError(f"{type(self).__name__}: file {path!r} (key {key}) is gone", key=key)

    def _unreadable(self, exc: OSError, file: int, key: int) -> Exception:
        """The library's error for ``exc``, raised reading file ``file`` for ``key``."""
        if isinstance(exc, FileNotFoundError):
            return self._gone(file, key)
        return os_read_error(
            exc, f"{type(self).__name__}: cannot read file {str(self.paths[file])!r}", key=key
        )

    def _open(self, file: int, key: int) -> int:
        try:
            return open_fd(str(self.paths[file]))
        except OSError as exc:
            raise self._unreadable(exc, file, key) from None

    def _kept_fd(self, file: int, key: int) -> int:
        """This process's open descriptor of file ``file`` (opened on first use)."""
        fds = self._fds.get()
        fd = fds.get(file)
        if fd is None:
            mine = self._open(file, key)
            fd = fds.setdefault(file, mine)
            if fd != mine:  # another thread opened it first
                os.close(mine)
        return fd

    def _pread(self, file: int, length: int, offset: int, key: int) -> bytes:
        """``length`` bytes at ``offset`` of file ``file`` (fewer if it shrank)."""
        fd = self._open(file, key) if len(self.paths) > _MAX_OPEN_FILES else self._kept_fd(file, key)
        try:
            return pread_exact(fd, length, offset)
        except OSError as exc:
            raise self._unreadable(exc, file, key) from None
        finally:
            if len(self.paths) > _MAX_OPEN_FILES:
                os.close(fd)

    def _size(self, file: int, key: int) -> int:
        """File ``file``'s size now (of the descriptor reads go through, when one is kept)."""
        if len(self.paths) > _MAX_OPEN_FILES:
            try:
                return os.stat(self.paths[file]).st_size
            except OSError as exc:
                raise self._unreadable(exc, file, key) from None
        return os.fstat(self._kept_fd(file, key)).st_size

    def _indexed_size(self, file: int) -> int:
        """File ``file``'s size when the index was built."""
        line_index = self._require_index()
        return int(line_index.offsets[line_index.file_first[file + 1] + file])

    def _check_size(self, file: int, keys: list[int], stops: list[int], lo: int, hi: int) -> None:
        """Raise if file ``file`` shrank since it was indexed (its lines' bytes would be wrong),
        naming the first of ``keys[lo:hi]`` (its lines being read, sorted) that it lost."""
        size = self._size(file, keys[lo])
        if size < self._indexed_size(file):
            raise self._changed(keys[_first_cut(stops, lo, hi, size)], file)

    def _changed(self, index: int, file: int) -> DataCorruptionError:
        """The error for line ``index`` of a file that shrank since it was indexed."""
        name = type(self).__name__
        return DataCorruptionError(
            f"{name}: {self._where(file, index)} (key {index}) cannot be read: the file changed since "
            f"it was indexed (it is now {self._size(file, index)} bytes, {self._indexed_size(file)} "
            f"when indexed); make a new {name} to index it again",
            key=index,
        )

    def _read(self, index: int) -> Any:
        file, start, stop = self._require_index().locate(index)
        self._check_size(file, [index], [stop], 0, 1)
        raw = self._pread(file, stop - start, start, index)
        if len(raw) < stop - start:
            raise self._changed(index, file)
        try:
            return self._decode(raw)
        except ValueError as exc:
            raise self._corrupt(index, self._where(file, index), exc) from None

    def _read_many(self, indices: np.ndarray) -> list[Any]:
        """Sort the keys, merge neighbours into byte ranges, one ``pread`` per range."""
        line_index = self._require_index()
        if len(indices) == 0:
            return []
        if type(self)._decode is TextLines._decode and len(self.paths) <= _MAX_OPEN_FILES:
            return self._read_mapped(np.asarray(indices))
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        one_file = len(line_index.file_first) == 2
        files = np.zeros(len(ordered), dtype=np.int64) if one_file else line_index.files_of(ordered)
        positions = ordered if one_file else ordered + files
        starts = line_index.offsets[positions].astype(np.int64)
        stops = line_index.offsets[positions + 1].astype(np.int64)
        # A new byte range wherever the file changes or the gap to the previous line is large.
        gaps = starts[1:] - stops[:-1]
        far = gaps > _MERGE_GAP_BYTES
        breaks = np.flatnonzero(far if one_file else far | (np.diff(files) != 0)) + 1
        slots, keys = order.tolist(), ordered.tolist()
        starts_list, stops_list = starts.tolist(), stops.tolist()
        # (plain text here: more files than are kept open) decoded inline, not through _decode
        plain = type(self)._decode is TextLines._decode
        bounds = [0, *breaks.tolist(), len(ordered)]
        results: list[Any] = [None] * len(indices)
        decode = self._decode
        encoding, errors = self.encoding, self.errors
        checked = -1  # the last file whose size was checked; a short read is checked per range
        fd = -1
        files_list = files.tolist()
        for lo, hi in itertools.pairwise(bounds):
            file = files_list[lo]
            if file != checked:
                checked = file
                self._check_size(file, keys, stops_list, lo, int(np.searchsorted(files, file, side="right")))
                fd = -1 if len(self.paths) > _MAX_OPEN_FILES else self._kept_fd(file, keys[lo])
            base = starts_list[lo]
            stop = stops_list[lo] if hi - lo == 1 else max(stops_list[lo:hi])
            span = os.pread(fd, stop - base, base) if fd >= 0 else b""
            if len(span) < stop - base:  # not kept open, or a short read: the careful path
                span = self._pread(file, stop - base, base, keys[lo])
                if len(span) < stop - base:
                    raise self._changed(keys[_first_cut(stops_list, lo, hi, base + len(span))], file)
            single = hi - lo == 1
            for j in range(lo, hi):
                raw = span if single else span[starts_list[j] - base : stops_list[j] - base]
                try:
                    if plain:
                        if raw[-1:] == b"\n":
                            raw = raw[:-2] if raw[-2:-1] == b"\r" else raw[:-1]
                        results[slots[j]] = raw.decode(encoding, errors)
                    else:
                        results[slots[j]] = decode(raw)
                except ValueError as exc:
                    raise self._corrupt(keys[j], self._where(file, keys[j]), exc) from None
        return results

    def _mapped(self, file: int, key: int) -> mmap.mmap:
        """File ``file``'s indexed bytes mapped read-only in this process (mapped on first use,
        after its size was checked: a file that shrank raises, see :meth:`_check_size`)."""
        maps = self._maps.get()
        mapped = maps.get(file)
        if mapped is None:
            fd = self._kept_fd(file, key)
            try:
                mine = mmap.mmap(fd, self._indexed_size(file), prot=mmap.PROT_READ)
            except OSError as exc:
                raise self._unreadable(exc, file, key) from None
            mapped = maps.setdefault(file, mine)
            if mapped is not mine:  # another thread mapped it first
                mine.close()
        return mapped

    def _read_mapped(self, indices: np.ndarray) -> list[str]:
        """Plain text lines in the keys' order, each a slice of its file's mapping: a shuffled
        block was one ``pread`` per line (4.3 us a line, against 1 us for a slice), and needs
        no sorting. Each file's size is checked once per call, as for the reads; a file cut
        short while a block is being read (after its check) is not detected in time and ends
        the process with SIGBUS: rewrite training files between runs, not during one."""
        line_index = self._require_index()
        one_file = len(line_index.file_first) == 2
        files = None if one_file else line_index.files_of(indices)
        positions = indices if one_file else indices + files
        starts = line_index.offsets[positions].tolist()
        stops = line_index.offsets[positions + 1].tolist()
        keys = indices.tolist()
        encoding, errors = self.encoding, self.errors
        if files is None:
            by_key = [0] * len(keys)
            distinct = [0]
        else:
            by_key = files.tolist()
            distinct = sorted(set(by_key))
        maps: dict[int, mmap.mmap] = {}
        for file in distinct:
            lo = by_key.index(file)
            size = self._size(file, keys[lo])
            if size < self._indexed_size(file):  # name the first line it lost, in the keys' order
                lost = next((j for j, stop in enumerate(stops) if by_key[j] == file and stop > size), lo)
                raise self._changed(keys[lost], file)
            if self._indexed_size(file):
                maps[file] = self._mapped(file, keys[lo])
        results: list[str] = []
        append = results.append
        mapped = maps.get(0) if files is None else None
        for j, (start, stop) in enumerate(zip(starts, stops, strict=True)):
            raw = (mapped if files is None else maps[by_key[j]])[start:stop]
            if raw[-1:] == b"\n":
                raw = raw[:-2] if raw[-2:-1] == b"\r" else raw[:-1]
            try:
                append(raw.decode(encoding, errors))
            except ValueError as exc:
                raise self._corrupt(keys[j], self._where(by_key[j], keys[j]), exc) from None
        return results

    def shards(self, *, tolerant: bool = False) -> list[_FileShard]:
        """One stream per file, in order: a sharded stream gives each rank whole files (see
        :class:`~aioloader.order.stream_shard.RoundSharder` for when it does). ``tolerant``:
        each yields a ``ReadFailure`` where a line or file cannot be read (see :meth:`_scan`)."""
        return [_FileShard(self, path, tolerant) for path in self.paths]

    def _scan_tolerant(self) -> Iterator[Any]:
        return self._scan(tolerant=True)

    def _scan(self, paths: Sequence[Path] | None = None, *, tolerant: bool = False) -> Iterator[Any]:
        """Every line (record) of ``paths`` (all files by default), front to back. A line that
        does not decode, a file gone or unreadable, raise naming the file and key; ``tolerant``:
        each is yielded as a ``ReadFailure`` instead, in one position (a whole file in one), and
        the scan goes on."""
        position = 0
        decode, skip_blank, name = self._decode, self._skip_blank, type(self).__name__
        for path in self.paths if paths is None else paths:
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    error: Exception = DataNotFoundError(
                        f"{name}: file {str(path)!r} (key {position}) is gone", key=position
                    )
                else:
                    error = os_read_error(exc, f"{name}: cannot read file {str(path)!r}", key=position)
                if not tolerant:
                    raise error from None
                yield ReadFailure(error)
                position += 1
                continue
            with f:
                number = 0
                lines = iter(f)
                while True:
                    try:
                        raw = next(lines, None)
                    except OSError as exc:  # an I/O error mid-file: the rest of it is lost
                        error = os_read_error(
                            exc, f"{name}: cannot read line {number + 1} of {str(path)!r}", key=position
                        )
                        if not tolerant:
                            raise error from None
                        yield ReadFailure(error)
                        position += 1
                        break
                    if raw is None:
                        break
                    number += 1
                    if skip_blank and raw in (b"\n", b"\r\n"):
                        continue
                    try:
                        item = decode(raw)
                    except ValueError as exc:
                        error = self._corrupt(position, f"line {number} of {str(path)!r}", exc)
                        if not tolerant:
                            raise error from None
                        item = ReadFailure(error)
                    yield item
                    position += 1

    def _estimate_nbytes(self) -> int:
        size = sum(p.stat().st_size for p in self.paths)
        return int(size * self._eager_factor) + self._eager_per_item * self._length()

    def _close(self) -> None:
        self._maps.close()
        self._fds.close()

    def __repr__(self) -> str:
        where = str(self.paths[0]) if len(self.paths) == 1 else f"{len(self.paths)} files"
        n = "" if self._index is None else f", {len(self._index)} lines"
        return f"{type(self).__name__}({where!r}{n}, mode={self.mode!r})"


class JsonLines(TextLines):
    """Every non-blank line of JSON Lines file(s), parsed with :func:`json.loads` (usually a dict).

    A line that is not valid JSON raises ``DataCorruptionError`` with its key, file and line.
    To skip bad records rather than stop, read ``TextLines`` and
    ``.map(json.loads, on_error="skip")``.
    """

    _skip_blank = True
    _format = "JSON"
    _eager_factor = 6.0
    _eager_per_item = 256

    def _decode(self, raw: bytes) -> Any:
        return json.loads(raw.decode(self.encoding, self.errors))


class _FileShard:
    """The lines of one file of a text source, read front to back (a fresh pass per ``iter``)."""

    def __init__(self, source: TextLines, path: Path, tolerant: bool = False) -> None:
        self.source = source
        self.path = path
        self.tolerant = tolerant

    def __iter__(self) -> Iterator[Any]:
        return self.source._scan([self.path], tolerant=self.tolerant)
