"""The seed API on the aioloader engine: config, datasets, loader, factory.

- :mod:`~aioloader.compat.config`: ``DataLoaderConfig``, ``LoadingMode``, ``optimal_num_workers``.
- :mod:`~aioloader.compat.datasets`: ``BaseDataset``, ``ImageDataset``, ``TextDataset``,
  ``HDF5Dataset``, ``MemoryEfficientDataset`` (torch Datasets over ``al.sources``).
- :mod:`~aioloader.compat.samplers`: torch samplers and ``al.order`` samplers across backends.
- :mod:`~aioloader.compat.dataloader`: ``EfficientDataLoader`` (backend "aio" or "torch").
- :mod:`~aioloader.compat.worker_info`: torch's ``get_worker_info()`` and worker seeds in the
  aio backend's worker processes.
- :mod:`~aioloader.compat.factory`: ``DataLoaderFactory``.
"""

from aioloader.compat.config import ConfigTypeError, DataLoaderConfig, LoadingMode, optimal_num_workers
from aioloader.compat.dataloader import BACKENDS, EfficientDataLoader
from aioloader.compat.datasets import (
    BaseDataset,
    HDF5Dataset,
    ImageDataset,
    MemoryEfficientDataset,
    TextDataset,
    default_image_transform,
)
from aioloader.compat.factory import DataLoaderFactory

__all__ = [
    "DataLoaderConfig",
    "LoadingMode",
    "ConfigTypeError",
    "optimal_num_workers",
    "BaseDataset",
    "ImageDataset",
    "TextDataset",
    "HDF5Dataset",
    "MemoryEfficientDataset",
    "default_image_transform",
    "EfficientDataLoader",
    "BACKENDS",
    "DataLoaderFactory",
]
