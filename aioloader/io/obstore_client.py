"""The ``client="obstore"`` reads: obstore (Rust ``object_store``) behind the two calls
:class:`~aioloader.io.store.ObjectStore` makes of a filesystem, ``_info`` and ``_cat_file``.

One obstore store per bucket (or HTTP host), made from the URL with the options given for its
protocol (obstore's own names: ``endpoint``, ``access_key_id``, ``client_options`` ...) and
the usual environment variables. obstore's own retries are off: the loader's
:class:`~aioloader.io.store.Retry` decides, the same as for fsspec. Its errors are mapped to the
built-in ones the retry rule reads: not found, denied, anything else a connection error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def _split(url: str) -> tuple[str, str]:
    """(the store's URL, the path in it)."""
    if "://" not in url or url.startswith("file://"):
        import os

        path = os.path.abspath(url.removeprefix("file://"))
        return "file:///", path.lstrip("/")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")


class ObstoreFileSystem:
    def __init__(self, options: dict[str, dict[str, Any]]) -> None:
        import obstore  # noqa: F401 - fail here, naming the missing package, not at first read

        self._options = options
        self._stores: dict[str, Any] = {}

    def _store(self, base: str) -> Any:
        store = self._stores.get(base)
        if store is None:
            from obstore.store import from_url

            scheme = base.split("://", 1)[0]
            options = dict(self._options.get(scheme, {}))
            if scheme == "http":
                options.setdefault("client_options", {}).setdefault("allow_http", True)
            options.setdefault("retry_config", {"max_retries": 0})
            store = self._stores[base] = from_url(base, **options)
        return store

    async def _call(self, fn: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

        base, path = _split(url)
        try:
            return await fn(self._store(base), path, *args, **kwargs)
        except NotFoundError as exc:
            raise FileNotFoundError(url) from exc
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise PermissionError(f"{url}: {exc}") from exc
        except Exception as exc:
            if "404" in str(exc) or "Not Found" in str(exc):
                raise FileNotFoundError(url) from exc
            raise ConnectionError(f"{url}: {exc}") from exc

    async def _info(self, url: str) -> dict[str, Any]:
        import obstore

        meta = await self._call(obstore.head_async, url)
        return {"size": int(meta["size"])}

    async def _cat_file(self, url: str, start: int, end: int) -> bytes:
        import obstore

        return bytes(await self._call(obstore.get_range_async, url, start=start, end=end))
