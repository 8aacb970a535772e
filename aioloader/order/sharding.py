"""Sharding keys over ranks, with the three policies of the public contract.

- ``"uneven"``: rank r takes keys r, r+W, ...; each key exactly once over all ranks.
- ``"drop"``: the tail that does not divide evenly (at most W-1 keys) is left out, so every
  rank gets the same number of keys.
- ``"pad"``: the order is extended cyclically from its start until it divides evenly; only that
  padding repeats keys.

:class:`ShardedKeys` is a rank's share of a key sequence by position (rank r's i-th key is the
order's key at ``r + W * i``), so sharding never builds the order either; :func:`shard_keys`
does the same on an array.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from aioloader.order.sequence import NO_CUTS, KeySequence, as_positions


@dataclass(frozen=True, slots=True)
class RankInfo:
    rank: int
    world_size: int


def resolve_rank(rank: int | None, world_size: int | None) -> RankInfo:
    """Explicit values, else torch.distributed when initialised, else RANK/WORLD_SIZE, else 0/1.

    Only the values not given explicitly are taken from torch.distributed or the environment.
    A partial environment (``WORLD_SIZE`` > 1 without ``RANK``, ``RANK`` > 0 without
    ``WORLD_SIZE``) or a non-integer or out-of-range value raises ``ValueError``.
    """
    if rank is None or world_size is None:
        found = _from_torch_distributed() or _from_environment(rank is None, world_size is None) or (0, 1)
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
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


def _env_int(name: str, text: str, minimum: int) -> int:
    """The integer value ``text`` of environment variable ``name``, at least ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} must be an integer") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={text!r} must be >= {minimum}")
    return value


def _from_environment(need_rank: bool = True, need_world: bool = True) -> tuple[int, int] | None:
    """(rank, world size) from RANK/WORLD_SIZE; None when neither is set.

    A variable that is missing is an error when its value is needed (``need_rank`` /
    ``need_world``) and could matter: WORLD_SIZE=1 without RANK, or RANK=0 without WORLD_SIZE,
    is rank 0 of 1. When one is not needed (given explicitly), its placeholder is ignored.
    """
    rank_text, world_text = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank_text is None and world_text is None:
        return None
    rank = None if rank_text is None else _env_int("RANK", rank_text, 0)
    world = None if world_text is None else _env_int("WORLD_SIZE", world_text, 1)
    if rank is None:
        if need_rank and world != 1:
            raise ValueError(
                f"environment variable WORLD_SIZE={world_text!r} is set but RANK is not; every "
                f"process would read all the data; set RANK (0 to {world - 1 if world else 0}) in "
                "each process, or pass rank= and world_size="
            )
        return 0, world or 1
    if world is None:
        if need_world and rank != 0:
            raise ValueError(
                f"environment variable RANK={rank_text!r} is set but WORLD_SIZE is not; set "
                "WORLD_SIZE in each process, or pass rank= and world_size="
            )
        return rank, 1
    if rank >= world:
        raise ValueError(f"environment variable RANK={rank_text!r} must be below WORLD_SIZE={world_text!r}")
    return rank, world


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


def shard_sequence(keys: KeySequence, info: RankInfo, policy: str) -> KeySequence:
    """This rank's share of ``keys`` (a sequence in epoch order), by position."""
    if policy not in ("drop", "pad", "uneven"):
        raise ValueError(f"shard_policy must be 'drop', 'pad' or 'uneven', got {policy!r}")
    return keys if info.world_size == 1 else ShardedKeys(keys, info, policy)


class ShardedKeys:
    """Rank ``r`` of ``W``'s keys of a sequence: its i-th key is the one at position ``r + W*i``
    (``"pad"``: modulo the length, the padding wraps to the start)."""

    def __init__(self, keys: KeySequence, info: RankInfo, policy: str) -> None:
        self._keys = keys
        self._n = len(keys)
        self._rank, self._world = info.rank, info.world_size
        self._count = shard_count(self._n, info, policy)

    def __len__(self) -> int:
        return self._count

    def _global(self, local: np.ndarray) -> np.ndarray:
        positions = self._rank + self._world * np.asarray(local, dtype=np.int64)
        if len(positions) and int(positions.max()) >= self._n:
            positions %= self._n  # "pad": past the end, the order starts again
        return positions

    def at(self, positions: np.ndarray | range) -> np.ndarray:
        return self._keys.at(self._global(as_positions(positions)))

    def take(self, start: int, stop: int) -> np.ndarray:
        first, count = self._rank + self._world * start, max(0, stop - start)
        if count and first + self._world * (count - 1) >= self._n:
            return self.at(np.arange(start, stop, dtype=np.int64))  # "pad": wraps to the start
        # a range, which the order computes from without an array of the span's positions
        return self._keys.at(range(first, first + self._world * count, self._world))

    def cuts(self, start: int, stop: int) -> np.ndarray:
        """The order's cuts, moved to this rank's positions: the first of its positions at or
        after each one, so a rank's reads stay within one block of the order's."""
        if stop - start < 2:
            return NO_CUTS
        first = self._rank + self._world * start
        cuts = self._keys.cuts(first, min(self._n, self._rank + self._world * (stop - 1) + 1))
        if not len(cuts):
            return NO_CUTS
        local = np.unique(-(-(cuts - self._rank) // self._world))
        return local[(local > start) & (local < stop)]

