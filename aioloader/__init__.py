"""aioloader: an asyncio-native streaming data loader for PyTorch.

The public face of the package: everything a user needs is importable from here.
"""

from aioloader import collate, errors, sources
from aioloader.errors import (
    DataCorruptionError,
    DataFormatError,
    DataLoadingError,
    DataNotFoundError,
    StageTimeoutError,
    TooManyFailures,
    WorkerCrashError,
)
from aioloader.loader import Loader

__version__ = "0.1.0"

__all__ = [
    "Loader",
    "collate",
    "errors",
    "sources",
    "DataLoadingError",
    "DataCorruptionError",
    "DataNotFoundError",
    "DataFormatError",
    "WorkerCrashError",
    "StageTimeoutError",
    "TooManyFailures",
    "__version__",
]
