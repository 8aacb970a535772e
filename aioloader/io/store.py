"""Reading byte ranges of objects (local files, HTTP, S3, GCS, Azure, HF) on the event loop.

The default client (``client="fsspec"``) is fsspec's async filesystems: ``HTTPFileSystem`` (aiohttp), ``s3fs``
(aiobotocore), ``gcsfs``, ``adlfs``, ``huggingface_hub``'s ``HfFileSystem`` where installed,
and the local filesystem behind fsspec's async wrapper. Each is opened on the loop that uses
it, with its own connection pool, and closed by :meth:`ObjectStore.aclose`; credentials come
from each library's usual environment variables and config files (``AWS_*``, ``~/.aws``,
``GOOGLE_APPLICATION_CREDENTIALS`` ...), or per protocol from ``storage_options``.
``client="obstore"`` reads through obstore instead (:mod:`aioloader.io.obstore_client`).

Faults: a read that times out, is reset, comes back short or gets a 5xx (or 429) is retried
with exponential backoff and full jitter. A transfer slower than ``min_bytes_per_s`` (a
trickle) runs past its deadline (``timeout_s`` plus its size at that rate) and is retried too.
A missing object raises :class:`~aioloader.errors.DataNotFoundError` naming the URL; a read
still failing after ``attempts`` raises the last error, annotated with the URL.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from aioloader.errors import DataNotFoundError
from aioloader.io.urls import local_path, protocol_of

CLIENTS = ("fsspec", "obstore")


@dataclass(frozen=True, slots=True)
class Retry:
    """How reads are retried: ``attempts`` in all, sleeping ``backoff_s * 2**k`` (capped at
    ``max_backoff_s``, full jitter) between them; each read must finish within ``timeout_s``
    plus its size at ``min_bytes_per_s``."""

    attempts: int = 5
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    timeout_s: float = 20.0
    min_bytes_per_s: float = 256 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"retry.attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("backoff_s", "max_backoff_s", "timeout_s", "min_bytes_per_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"retry.{name} must be a number > 0, got {value!r}")

    def deadline(self, nbytes: int) -> float:
        return self.timeout_s + nbytes / self.min_bytes_per_s

    def pause(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))


class ShortRead(OSError):
    """A ranged read returned fewer bytes than asked for (a connection cut mid-body)."""


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    response = getattr(exc, "response", None)
    if status is None and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def retryable(exc: BaseException) -> bool:
    """Timeouts, resets, short reads, 5xx and 429: worth another try. Not found, denied, a
    bad request: not."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError, ShortRead)):
        return True
    status = _status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with the remote extra
        return False
    return isinstance(exc, aiohttp.ClientError)


def _make_filesystem(protocol: str, options: dict[str, Any]) -> Any:
    import fsspec

    if protocol == "file":
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
        from fsspec.implementations.local import LocalFileSystem

        return AsyncFileSystemWrapper(LocalFileSystem(), asynchronous=True)
    try:
        return fsspec.filesystem(protocol, asynchronous=True, skip_instance_cache=True, **options)
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"no async client for {protocol}:// URLs here ({exc}); install aioloader[remote] "
            f"(s3fs, aiohttp) or the fsspec package for {protocol}"
        ) from exc


async def _close_filesystem(fs: Any) -> None:
    """Close an async filesystem's connections (aiohttp session, aiobotocore client)."""
    session = getattr(fs, "_session", None)
    if session is not None and hasattr(session, "close"):
        await session.close()
    creator = getattr(fs, "_s3creator", None)
    if creator is not None:
        exit_ = getattr(creator, "__aexit__", None)
        if exit_ is not None:
            await exit_(None, None, None)
        elif hasattr(creator, "clear"):
            await creator.clear()


class ObjectStore:
    """The async filesystems one run reads through (one per protocol), and ranged reads with
    retries. Use it on one event loop; :meth:`aclose` closes every connection it opened."""

    def __init__(
        self,
        options: dict[str, Any] | None = None,
        *,
        retry: Retry | None = None,
        seed: int = 0,
        client: str = "fsspec",
    ) -> None:
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
        self.client = client
        self._options = dict(options or {})
        self._fs: dict[str, Any] = {}
        self.retry = retry or Retry()
        self._rng = random.Random(seed)
        self.bytes_read = 0
        self.requests = 0
        self.retries = 0

    async def filesystem(self, url: str) -> Any:
        if self.client == "obstore":
            fs = self._fs.get("obstore")
            if fs is None:
                from aioloader.io.obstore_client import ObstoreFileSystem

                fs = self._fs["obstore"] = ObstoreFileSystem(self._options)
            return fs
        protocol = protocol_of(url)
        fs = self._fs.get(protocol)
        if fs is None:
            fs = self._fs[protocol] = _make_filesystem(protocol, self._options.get(protocol, {}))
            set_session = getattr(fs, "set_session", None)
            if set_session is not None:
                await set_session()
        return fs

    def _path(self, url: str) -> str:
        return local_path(url) if protocol_of(url) == "file" and self.client == "fsspec" else url

    async def _attempts(self, url: str, what: str, call: Any, nbytes: int) -> Any:
        retry = self.retry
        for attempt in range(retry.attempts):
            self.requests += 1
            try:
                async with asyncio.timeout(retry.deadline(nbytes)):
                    return await call()
            except FileNotFoundError as exc:
                raise DataNotFoundError(f"object not found: {url}", key=url) from exc
            except Exception as exc:
                if not retryable(exc) or attempt + 1 == retry.attempts:
                    exc.add_note(f"aioloader: {what} of {url} failed after {attempt + 1} attempt(s)")
                    raise
                self.retries += 1
                await asyncio.sleep(retry.pause(attempt, self._rng))
        raise AssertionError("unreachable")  # pragma: no cover

    async def size(self, url: str) -> int:
        """The object's size in bytes (a HEAD request, or a stat)."""
        fs = await self.filesystem(url)
        info = await self._attempts(url, "size lookup", lambda: fs._info(self._path(url)), 0)
        size = info.get("size")
        if size is None:
            raise ValueError(f"{url}: the server does not say the object's size (no Content-Length)")
        return int(size)

    async def read(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object at ``url``."""
        if end <= start:
            return b""
        fs = await self.filesystem(url)
        path = self._path(url)

        async def call() -> bytes:
            data = await fs._cat_file(path, start=start, end=end)
            if len(data) != end - start:
                raise ShortRead(f"{url}: asked for bytes {start}-{end}, got {len(data)}")
            return data

        data = await self._attempts(url, f"read of bytes {start}-{end}", call, end - start)
        self.bytes_read += len(data)
        return data

    async def aclose(self) -> None:
        filesystems, self._fs = list(self._fs.values()), {}
        for fs in filesystems:
            await _close_filesystem(fs)
