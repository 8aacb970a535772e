"""Ordering on keys, before any payload is read: key orders (permutation, chunk shuffle,
samplers) as functions of the position, rank sharding, the shuffle buffer, resume state and a
shuffle-quality measure."""

from aioloader.order.orders import (
    Chunks,
    ClassBalanced,
    KeyOrder,
    Permutation,
    Sequential,
    Weighted,
    order_sequence,
)
from aioloader.order.permutation import Bijection, epoch_permutation, index_dtype
from aioloader.order.quality import neighbour_rate, quality
from aioloader.order.sequence import KeySequence
from aioloader.order.sharding import RankInfo, resolve_rank, shard_keys, shard_sequence

__all__ = [
    "KeyOrder",
    "Sequential",
    "Permutation",
    "Chunks",
    "Weighted",
    "ClassBalanced",
    "KeySequence",
    "order_sequence",
    "Bijection",
    "quality",
    "neighbour_rate",
    "epoch_permutation",
    "index_dtype",
    "RankInfo",
    "resolve_rank",
    "shard_keys",
    "shard_sequence",
]
