"""A map-style dataset's reads as a pool worker runs them, as torch DataLoader's workers do.

``Loader.from_source(dataset).map(fn, executor="process")`` over a dataset whose ``__getitem__``
decodes would decode in the trainer's process and send the decoded samples to the workers. With
read fusion (:mod:`aioloader._run.read_fusion`) the dataset is pickled into each worker once
(with ``fn``, when the pool starts) and each task carries keys: the worker calls the dataset's
``__getitems__(keys)`` (torch's batched-fetch protocol) when it has one, else ``__getitem__``
per key, then ``fn``.

Offered for a user's dataset (a torch ``Dataset`` or any class with ``__len__`` and
``__getitem__``), not for containers whose items already sit in memory (a list, an array, a
tensor: a copy per worker would only cost memory), aioloader's own sources (which read their
own way) or a dataset with an async ``aget`` (its reads belong on the event loop). Only an
explicit ``executor="process"`` (or ``"ray"``) stage uses it, and only when the dataset can be
pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from aioloader._spec import is_picklable

__all__ = ["DatasetReader", "dataset_reader"]

_IN_MEMORY_MODULES = ("builtins", "numpy", "torch", "collections", "array", "pandas", "aioloader")


class DatasetReader:
    """keys -> ``dataset``'s items, in a worker process; a failing key is named on its error."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @cached_property
    def picklable(self) -> bool:
        """Whether the dataset can reach a spawned worker (checked once, when first fused)."""
        return is_picklable(self.dataset)

    def __call__(self, keys: Sequence[int]) -> list[Any]:
        get_many = getattr(self.dataset, "__getitems__", None)
        if get_many is not None:
            return list(get_many(list(keys)))
        items = []
        for key in keys:
            try:
                items.append(self.dataset[key])
            except Exception as exc:
                try:
                    exc.key = key  # type: ignore[attr-defined]  # the read stage's error names it
                except (AttributeError, TypeError):
                    pass
                raise
        return items

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset": self.dataset}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dataset = state["dataset"]

    def __repr__(self) -> str:
        return f"DatasetReader({type(self.dataset).__name__})"


def dataset_reader(dataset: Any) -> DatasetReader | None:
    """A reader for ``dataset`` when its reads may move to worker processes, else None."""
    if getattr(dataset, "aget", None) is not None or _in_memory(dataset):
        return None
    return DatasetReader(dataset)


def _in_memory(dataset: Any) -> bool:
    """A container whose items already sit in this process (or an aioloader source). A torch
    wrapper (``Subset``, ``ConcatDataset``) is as its wrapped datasets are."""
    root = (type(dataset).__module__ or "").split(".", 1)[0]
    if root == "torch":
        inner = getattr(dataset, "datasets", None) or [getattr(dataset, "dataset", None)]
        return all(d is None or _in_memory(d) for d in inner)
    return root in _IN_MEMORY_MODULES
