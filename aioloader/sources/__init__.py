"""Where samples come from.

Any indexable object (``__len__`` + ``__getitem__``, torch map-style datasets included), any
iterable or async iterable (endless ones too) is a source; :func:`adapt` classifies it. The
``al.sources.*`` classes for files (images, text, HDF5, arrays) and for WebDataset tar shards
in object storage (``WebDataset``, ``write_shards``) live in this package too.
"""

from aioloader.sources._adapt import AsyncIterableSource, IndexableSource, IterableSource, adapt
from aioloader.sources._modes import MODES, SourceStream
from aioloader.sources.arrays import Array
from aioloader.sources.hdf5 import HDF5
from aioloader.sources.images import FileBytes, ImageFolder
from aioloader.sources.line_shards import JsonLinesShards, TextShards
from aioloader.sources.mix import Cycle, Mix
from aioloader.sources.parquet_shards import ParquetShards
from aioloader.sources.text import JsonLines, TextLines
from aioloader.sources.webdataset import IndexedShards, WebDataset
from aioloader.sources.write_shards import write_shards

__all__ = [
    "adapt",
    "IndexableSource",
    "IterableSource",
    "AsyncIterableSource",
    "ImageFolder",
    "TextLines",
    "JsonLines",
    "HDF5",
    "Array",
    "FileBytes",
    "SourceStream",
    "MODES",
    "Mix",
    "Cycle",
    "WebDataset",
    "IndexedShards",
    "write_shards",
    "TextShards",
    "JsonLinesShards",
    "ParquetShards",
]
