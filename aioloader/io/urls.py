"""Shard URLs: brace expansion, globs, and the protocol of each URL.

``train-{000000..000127}.tar`` expands to 128 URLs (zero padding kept), ``{a,b}`` to two;
a URL with ``*``, ``?`` or ``[`` is matched against the store (local folders, ``s3://``,
``gs://`` ...) once, at build time, through an fsspec filesystem opened for that lookup and
closed after it. Local paths and ``file://`` URLs are the same thing.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = "*?["


def protocol_of(url: str) -> str:
    """``"file"`` for local paths and ``file://``; otherwise the URL's scheme."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else "file"


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"urls: unbalanced '{{' in {text!r}")


def _alternatives(body: str) -> list[str]:
    """The comma-separated parts of a brace body, commas inside nested braces kept."""
    parts, depth, current = [], 0, []
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += char == "{"
        depth -= char == "}"
        current.append(char)
    parts.append("".join(current))
    return parts


def expand_braces(text: str) -> list[str]:
    """``a{1..3}b`` -> ``a1b a2b a3b``; ``{x,y}`` -> ``x y``; nested and repeated braces work."""
    start = text.find("{")
    if start < 0:
        return [text]
    end = _matching_brace(text, start)
    head, body, tail = text[:start], text[start + 1 : end], text[end + 1 :]
    match = _RANGE.match(body)
    if match is not None:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        a, b = int(first), int(last)
        step = 1 if b >= a else -1
        options = [str(i).zfill(width) for i in range(a, b + step, step)]
    elif "," in body:
        options = [o for part in _alternatives(body) for o in expand_braces(part)]
    else:
        options = ["{" + body + "}"]  # not a pattern: keep it as it is
        return [head + options[0] + t for t in expand_braces(tail)]
    return [head + option + t for option in options for t in expand_braces(tail)]


def _is_glob(url: str) -> bool:
    return protocol_of(url) not in ("http", "https") and any(c in url for c in _GLOB_CHARS)


async def _glob(url: str, options: dict[str, Any]) -> list[str]:
    from aioloader.io.store import ObjectStore

    store = ObjectStore(options)
    try:
        fs = await store.filesystem(url)
        protocol = protocol_of(url)
        path = local_path(url) if protocol == "file" else url
        found = sorted(await fs._glob(path))
    finally:
        await store.aclose()
    if protocol == "file":
        return [str(p) for p in found]
    return [p if "://" in p else f"{protocol}://{p}" for p in found]


def expand_urls(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, options: dict[str, Any]) -> list[str]:
    """Every shard URL that ``urls`` names, in order: braces expanded, globs matched. A glob
    that matches nothing raises ``FileNotFoundError`` naming it."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    if not items:
        raise ValueError("urls must name at least one shard")
    out: list[str] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"urls must be strings or paths, got {type(item).__name__}")
        for url in expand_braces(os.fspath(item)):
            if not _is_glob(url):
                out.append(url)
                continue
            # globbing opens an async filesystem; on a loop of its own, whatever the caller runs
            with ThreadPoolExecutor(1, thread_name_prefix="aioloader-glob") as pool:
                found = pool.submit(asyncio.run, _glob(url, options)).result()
            if not found:
                raise FileNotFoundError(f"urls: no shard matches {url!r}")
            out.extend(found)
    return out
