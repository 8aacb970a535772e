"""``TextShards`` and ``JsonLinesShards``: the lines of text shards in object storage.

Each URL is a shard of lines, plain or compressed: ``.gz`` (zlib) and ``.zst`` (the
``zstandard`` package) are decompressed as the parts arrive, never whole in memory. A sample is
a line (``str``, without its newline) or, for JSON Lines, the parsed object; empty lines are
not samples. A line that is not valid JSON or UTF-8 raises
:class:`~aioloader.errors.DataCorruptionError` naming (URL, line number), or ends the shard
under ``on_error="skip"``, reported.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

from aioloader.errors import DataCorruptionError
from aioloader.sources._remote_shards import RemoteShards


def _decompressor(url: str) -> Any:
    name = url.split("?", 1)[0].lower()
    if name.endswith(".gz"):
        return zlib.decompressobj(wbits=47)  # gzip or zlib header
    if name.endswith(".zst") or name.endswith(".zstd"):
        try:
            import zstandard
        except ImportError as exc:
            raise ValueError(f"{url}: reading .zst shards needs the zstandard package") from exc
        return zstandard.ZstdDecompressor().decompressobj()
    return None


class TextShards(RemoteShards):
    """Lines of text shards at ``urls``; options as :class:`~aioloader.sources.WebDataset`."""

    kind = "text"

    def _parse(self, line: bytes, url: str, number: int) -> Any:
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataCorruptionError(f"{url}: line {number} is not UTF-8: {exc}", key=(url, number)) from None

    async def _samples(self, url: str, parts: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        decompress = _decompressor(url)
        rest = b""
        line_number = 0
        async for part in parts:
            try:
                data = decompress.decompress(part) if decompress is not None else part
            except Exception as exc:  # zlib.error, zstandard.ZstdError
                raise DataCorruptionError(f"{url}: corrupt compressed data: {exc}", key=(url, None)) from None
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                line_number += 1
                if line.strip():
                    yield self._parse(line.rstrip(b"\r"), url, line_number)
        if decompress is not None and hasattr(decompress, "eof") and not decompress.eof:
            raise DataCorruptionError(f"truncated shard {url}: the compressed stream does not end", key=(url, None))
        if rest.strip():
            yield self._parse(rest.rstrip(b"\r"), url, line_number + 1)


class JsonLinesShards(TextShards):
    """JSON Lines shards: each non-empty line parsed with ``json.loads``."""

    kind = "jsonl"

    def _parse(self, line: bytes, url: str, number: int) -> Any:
        try:
            return json.loads(line)
        except ValueError as exc:
            raise DataCorruptionError(f"{url}: line {number} is not JSON: {exc}", key=(url, number)) from None
