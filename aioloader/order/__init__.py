"""Ordering on keys, before any payload is read: key orders (permutation, chunk shuffle,
samplers), rank sharding, the shuffle buffer, resume state and a shuffle-quality measure."""

from aioloader.order.orders import Chunks, ClassBalanced, KeyOrder, Permutation, Sequential, Weighted
from aioloader.order.permutation import epoch_permutation, index_dtype
from aioloader.order.quality import neighbour_rate, quality
from aioloader.order.sharding import RankInfo, resolve_rank, shard_keys

__all__ = [
    "KeyOrder",
    "Sequential",
    "Permutation",
    "Chunks",
    "Weighted",
    "ClassBalanced",
    "quality",
    "neighbour_rate",
    "epoch_permutation",
    "index_dtype",
    "RankInfo",
    "resolve_rank",
    "shard_keys",
]
