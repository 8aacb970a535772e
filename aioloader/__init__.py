"""aioloader: an asyncio-native streaming data loader for PyTorch.

The public face of the package: everything a user needs is importable from here.
"""

from aioloader import collate, device, errors, order, sources, transforms
from aioloader.collate import CustomCollateFn
from aioloader.compat import (
    BaseDataset,
    DataLoaderConfig,
    DataLoaderFactory,
    EfficientDataLoader,
    HDF5Dataset,
    ImageDataset,
    LoadingMode,
    MemoryEfficientDataset,
    TextDataset,
    optimal_num_workers,
)
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
from aioloader.monitor.memory import MemoryMonitor
from aioloader.monitor.performance import DataLoaderPerformanceMonitor
from aioloader.service import connect, serve

__version__ = "0.1.0"

__all__ = [
    "Loader",
    "collate",
    "order",
    "device",
    "errors",
    "sources",
    "transforms",
    "CustomCollateFn",
    "DataLoadingError",
    "DataCorruptionError",
    "DataNotFoundError",
    "DataFormatError",
    "WorkerCrashError",
    "StageTimeoutError",
    "TooManyFailures",
    "MemoryMonitor",
    "DataLoaderPerformanceMonitor",
    "DataLoaderConfig",
    "LoadingMode",
    "BaseDataset",
    "ImageDataset",
    "TextDataset",
    "HDF5Dataset",
    "MemoryEfficientDataset",
    "EfficientDataLoader",
    "DataLoaderFactory",
    "optimal_num_workers",
    "serve",
    "connect",
    "__version__",
]
