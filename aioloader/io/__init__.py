"""Reading from object storage on the event loop: URLs (braces, globs), ranged reads with
retries (:class:`Retry`), read-ahead within a byte budget, and the tar shard format."""

from aioloader.io.store import ObjectStore, Retry
from aioloader.io.urls import expand_braces, expand_urls

__all__ = ["ObjectStore", "Retry", "expand_braces", "expand_urls"]
