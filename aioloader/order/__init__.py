"""Ordering on keys, before any payload is read: per-epoch permutations and rank sharding."""

from aioloader.order.permutation import epoch_permutation, index_dtype
from aioloader.order.sharding import RankInfo, resolve_rank, shard_keys

__all__ = ["epoch_permutation", "index_dtype", "RankInfo", "resolve_rank", "shard_keys"]
