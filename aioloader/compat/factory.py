"""``DataLoaderFactory``: one call from a data path (or a dataset) to an ``EfficientDataLoader``."""

from __future__ import annotations

import os
from typing import Any

from aioloader.compat.config import DataLoaderConfig, LoadingMode, optimal_num_workers
from aioloader.compat.dataloader import EfficientDataLoader
from aioloader.compat.datasets import HDF5Dataset, ImageDataset, MemoryEfficientDataset, TextDataset

__all__ = ["DataLoaderFactory", "DATASET_TYPES"]

DATASET_TYPES: dict[str, type] = {
    "image": ImageDataset,
    "text": TextDataset,
    "hdf5": HDF5Dataset,
    "memory_efficient": MemoryEfficientDataset,
}
_ALIASES = {"images": "image", "h5": "hdf5", "memory": "memory_efficient"}


class DataLoaderFactory:
    """Ready-made loaders of the seed API. Every method takes ``backend="aio"`` (default) or
    ``"torch"`` and returns an :class:`EfficientDataLoader` (close it, or use ``with``)."""

    @staticmethod
    def get_optimal_num_workers() -> int:
        """See :func:`aioloader.compat.config.optimal_num_workers`."""
        return optimal_num_workers()

    @staticmethod
    def create_dataloader(
        dataset: Any,
        config: DataLoaderConfig | None = None,
        *,
        data_path: str | os.PathLike[str] | None = None,
        backend: str = "aio",
        **dataset_kwargs: Any,
    ) -> EfficientDataLoader:
        """A loader over ``dataset`` as ``config`` says (the seed's ``create_dataloader(dataset,
        config)``). ``dataset`` is a dataset object, or a type name ("image", "text", "hdf5",
        "memory_efficient") built on ``data_path`` with ``dataset_kwargs``
        (e.g. ``create_dataloader("image", config, data_path="train", image_size=(224, 224))``)."""
        _check_config(config)
        if isinstance(dataset, str):
            kind = _ALIASES.get(dataset, dataset)
            if kind not in DATASET_TYPES:
                choices = ", ".join(map(repr, DATASET_TYPES))
                raise ValueError(f"dataset must be a dataset or one of {choices}, got {dataset!r}")
            if data_path is None:
                raise ValueError(f"data_path is needed to build a {kind!r} dataset")
            dataset = DATASET_TYPES[kind](data_path, **dataset_kwargs)
        elif data_path is not None or dataset_kwargs:
            raise ValueError("data_path and dataset options only apply when dataset is a type name")
        return EfficientDataLoader(dataset, config, backend=backend)

    @staticmethod
    def create_image_dataloader(
        data_path: str | os.PathLike[str],
        config: DataLoaderConfig | None = None,
        *,
        backend: str = "aio",
        **dataset_kwargs: Any,
    ) -> EfficientDataLoader:
        """An :class:`ImageDataset` loader (``image_size``, ``transform``, ``loading_mode``,
        ``cache_size`` in ``dataset_kwargs``)."""
        _check_config(config)
        return EfficientDataLoader(ImageDataset(data_path, **dataset_kwargs), config, backend=backend)

    @staticmethod
    def create_text_dataloader(
        data_path: str | os.PathLike[str],
        config: DataLoaderConfig | None = None,
        *,
        tokenizer: Any = None,
        max_length: int = 512,
        loading_mode: LoadingMode | str = LoadingMode.LAZY,
        backend: str = "aio",
    ) -> EfficientDataLoader:
        """A :class:`TextDataset` loader (the seed's ``create_text_dataloader(path, config,
        max_length=512)``): lines tokenized by ``tokenizer`` (characters without one) and padded
        to ``max_length``."""
        _check_config(config)
        dataset = TextDataset(data_path, tokenizer, max_length=max_length, loading_mode=loading_mode)
        return EfficientDataLoader(dataset, config, backend=backend)

    @staticmethod
    def create_hdf5_dataloader(
        data_path: str | os.PathLike[str],
        config: DataLoaderConfig | None = None,
        *,
        dataset_name: str = "data",
        loading_mode: LoadingMode | str = LoadingMode.LAZY,
        label_name: str | None = None,
        backend: str = "aio",
    ) -> EfficientDataLoader:
        """An :class:`HDF5Dataset` loader over ``dataset_name`` (and ``label_name``): the seed's
        ``create_hdf5_dataloader(path, config, dataset_name="features")``."""
        _check_config(config)
        dataset = HDF5Dataset(data_path, dataset_name, loading_mode, label_name=label_name)
        return EfficientDataLoader(dataset, config, backend=backend)


def _check_config(config: Any) -> None:
    """``config`` is the second argument of every factory method, as in the seed: a path or a
    tokenizer there is the argument order of an older aioloader, named in the message."""
    if config is not None and not isinstance(config, DataLoaderConfig):
        raise TypeError(
            f"config (the second argument) must be a DataLoaderConfig, got {type(config).__name__}; "
            "give data_path=, tokenizer= and dataset_name= by name"
        )
