"""Where samples come from.

Any indexable object (``__len__`` + ``__getitem__``, torch map-style datasets included), any
iterable or async iterable (endless ones too) is a source; :func:`adapt` classifies it. The
``al.sources.*`` classes for files (images, text, HDF5, arrays) live in this package too.
"""

from aioloader.sources._adapt import AsyncIterableSource, IndexableSource, IterableSource, adapt

__all__ = ["adapt", "IndexableSource", "IterableSource", "AsyncIterableSource"]
