"""Samplers across the two backends: torch samplers as aioloader key orders, and back.

``DataLoaderConfig.custom_sampler`` may be a torch ``Sampler`` or an ``al.order`` sampler; each
backend needs its own kind. :func:`key_order` turns a torch sampler into what
``Loader.from_source(shuffle=...)`` takes (the exact equivalent for the standard samplers, else
:class:`SamplerOrder`, which iterates the sampler each epoch); :class:`OrderSampler` turns an
``al.order`` sampler into a torch ``Sampler`` drawing the same keys for the same seed and epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import (
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from aioloader.order import Weighted
from aioloader.order.orders import order_sequence
from aioloader.order.permutation import index_dtype
from aioloader.order.sequence import KeySequence

__all__ = ["is_key_order", "key_order", "SamplerOrder", "OrderSampler"]


def is_key_order(obj: Any) -> bool:
    """Whether ``obj`` is an ``al.order`` sampler (``keys(n, seed, epoch)`` + ``describe()``)."""
    return callable(getattr(obj, "keys", None)) and callable(getattr(obj, "describe", None))


class SamplerOrder:
    """Any torch sampler as a key order: each epoch iterates it (after ``set_epoch(epoch)`` when
    it has one). Deterministic and resumable exactly when the sampler is, per epoch."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def keys(self, n: int, seed: int, epoch: int) -> np.ndarray:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        keys = np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        if keys.size and (keys.min() < 0 or keys.max() >= n):
            raise ValueError(f"custom_sampler yielded index {int(keys.max())} outside a dataset of {n} items")
        return keys.astype(index_dtype(n))

    def count(self, n: int) -> int:
        return len(self.sampler)

    def describe(self) -> dict[str, Any]:
        return {"order": "torch-sampler", "type": type(self.sampler).__name__, "length": len(self.sampler)}


def key_order(sampler: Any, n: int) -> Any:
    """What ``from_source(shuffle=...)`` takes for ``sampler`` over a dataset of ``n`` items."""
    if is_key_order(sampler):
        return sampler
    if type(sampler) is SequentialSampler:
        return False
    if type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == n:
        return True
    if type(sampler) is WeightedRandomSampler:
        return Weighted(sampler.weights.tolist(), int(sampler.num_samples), bool(sampler.replacement))
    if isinstance(sampler, DistributedSampler):
        raise ValueError(
            "custom_sampler: a DistributedSampler is handled by the loader itself; "
            "see EfficientDataLoader (rank and world size come from it)"
        )
    return SamplerOrder(sampler)


class OrderSampler(Sampler[int]):
    """An ``al.order`` sampler as a torch ``Sampler``: epoch ``e`` yields ``order.keys(n, seed,
    e)``, computed a block at a time for the orders that are functions of the position (a
    permutation of 10^9 indices is never built). Each iteration moves to the next epoch;
    ``set_epoch`` chooses the next one."""

    def __init__(self, order: Any, n: int, seed: int) -> None:
        self.order = order
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        keys = order_sequence(self.order, self.n, self.seed, self.epoch)
        self.epoch += 1
        return _blocks(keys)

    def __len__(self) -> int:
        count = getattr(self.order, "count", None)
        return self.n if count is None else int(count(self.n))


def _blocks(keys: KeySequence, block: int = 8192) -> Iterator[int]:
    for start in range(0, len(keys), block):
        yield from keys.take(start, min(start + block, len(keys))).tolist()
