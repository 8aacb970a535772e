"""Sharding keys over ranks, with the three policies of the public contract.

- ``"uneven"``: rank r takes keys r, r+W, ...; each key exactly once over all ranks.
- ``"drop"``: the tail that does not divide evenly (at most W-1 keys) is left out, so every
  rank gets the same number of keys.
- ``"pad"``: the order is extended cyclically from its start until it divides evenly; only that
  padding repeats keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RankInfo:
    rank: int
    world_size: int


def resolve_rank(rank: int | None, world_size: int | None) -> RankInfo:
    """Explicit values, else torch.distributed when initialised, else RANK/WORLD_SIZE, else 0/1."""
    if rank is None or world_size is None:
        dist_rank, dist_world = _from_torch_distributed() or _from_environment() or (0, 1)
        rank = dist_rank if rank is None else rank
        world_size = dist_world if world_size is None else world_size
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return RankInfo(rank, world_size)


def _from_torch_distributed() -> tuple[int, int] | None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _from_environment() -> tuple[int, int] | None:
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        return int(rank), int(world)
    except ValueError:
        raise ValueError(f"RANK={rank!r} and WORLD_SIZE={world!r} must be integers") from None


def shard_keys(keys: np.ndarray, info: RankInfo, policy: str) -> np.ndarray:
    """This rank's share of ``keys`` (already in epoch order)."""
    world, rank = info.world_size, info.rank
    if world == 1:
        return keys
    n = len(keys)
    if policy == "uneven":
        return keys[rank::world]
    if policy == "drop":
        return keys[: (n // world) * world][rank::world]
    if policy == "pad":
        total = -(-n // world) * world
        if n == 0:
            return keys
        return np.resize(keys, total)[rank::world]
    raise ValueError(f"shard_policy must be 'drop', 'pad' or 'uneven', got {policy!r}")


def shard_count(n: int, info: RankInfo, policy: str) -> int:
    """How many keys this rank gets out of ``n`` (without building them)."""
    world, rank = info.world_size, info.rank
    if policy == "uneven":
        return len(range(rank, n, world))
    if policy == "drop":
        return n // world
    return -(-n // world) if n else 0


def shard_boundaries(starts: np.ndarray, n: int, info: RankInfo, policy: str) -> np.ndarray:
    """Offsets in this rank's share where the global ``starts`` (block boundaries of the
    unsharded order of ``n`` keys) fall, so a rank's reads stay within one global block."""
    world, rank = info.world_size, info.rank
    if world == 1:
        return starts
    local = -(-(starts - rank) // world)  # first local index whose global position >= start
    count = shard_count(n, info, policy)
    return np.unique(np.clip(local, 0, count))
