"""aioloader: an asyncio-native streaming data loader for PyTorch.

The public face of the package: everything a user needs is importable from here.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): importing one submodule (a worker process's
# bootstrap imports aioloader.workers._child, then the modules its function needs) does not
# import torch and the whole package (~1 s per worker process on 2 cores).
_FROM = {
    "CustomCollateFn": "aioloader.collate",
    **dict.fromkeys(
        (
            "BaseDataset",
            "DataLoaderConfig",
            "DataLoaderFactory",
            "EfficientDataLoader",
            "HDF5Dataset",
            "ImageDataset",
            "LoadingMode",
            "MemoryEfficientDataset",
            "TextDataset",
            "optimal_num_workers",
        ),
        "aioloader.compat",
    ),
    **dict.fromkeys(
        (
            "DataCorruptionError",
            "DataFormatError",
            "DataLoadingError",
            "DataNotFoundError",
            "StageTimeoutError",
            "StageStalledError",
            "TooManyFailures",
            "WorkerCrashError",
        ),
        "aioloader.errors",
    ),
    "Loader": "aioloader.loader",
    "MemoryMonitor": "aioloader.monitor.memory",
    "DataLoaderPerformanceMonitor": "aioloader.monitor.performance",
    "connect": "aioloader.service",
    "serve": "aioloader.service",
}

if TYPE_CHECKING:
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
        StageStalledError,
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
    "StageStalledError",
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


def __getattr__(name: str) -> Any:
    """A public name, imported on first use; any other submodule too (``al.compat``,
    ``al.monitor``...), as when this module imported them all."""
    if name in _FROM:
        value = getattr(importlib.import_module(_FROM[name]), name)
    elif name.startswith("__") or importlib.util.find_spec(f"aioloader.{name}") is None:
        raise AttributeError(f"module 'aioloader' has no attribute {name!r}")
    else:
        value = importlib.import_module(f"aioloader.{name}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
