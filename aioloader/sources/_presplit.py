"""Sources already split by rank before they reach the Loader.

A Hugging Face ``datasets.IterableDataset`` split with
``datasets.distributed.split_dataset_by_node(ds, rank, world_size)`` yields only its rank's share;
aioloader's own rank sharding would then keep 1/world_size of that share (rank 0 of 2 read 250
of 1000 rows, silently). ``Loader.from_source`` asks :func:`split_by_node` and reads such a
source whole on each rank.
"""

from __future__ import annotations

from typing import Any

from aioloader.order.sharding import RankInfo


def split_by_node(source: Any) -> RankInfo | None:
    """The rank and world size ``source`` was split for by ``split_dataset_by_node``, or None.

    ``datasets`` records the split on the iterable dataset it returns (``_distributed``); the
    module is not imported here, so a source from elsewhere costs one attribute look-up."""
    if type(source).__module__.split(".")[0] != "datasets":
        return None
    config = getattr(source, "_distributed", None)
    rank, world_size = getattr(config, "rank", None), getattr(config, "world_size", None)
    if not isinstance(rank, int) or not isinstance(world_size, int):
        return None
    return RankInfo(rank, world_size)


def check_no_second_split(source: Any, rank: int | None, world_size: int | None) -> RankInfo | None:
    """For ``from_source``: the split of ``source`` (then the Loader does not shard it again:
    rank 0 of 1), or None. A ``rank``/``world_size`` given for a split source is refused: it
    asks to shard the rank's share once more."""
    split = split_by_node(source)
    if split is None:
        return None
    if (rank is not None and rank != 0) or (world_size is not None and world_size != 1):
        raise ValueError(
            f"source is already split by datasets.distributed.split_dataset_by_node (rank {split.rank} "
            f"of {split.world_size}) and rank={rank}, world_size={world_size} would split it again: "
            "remove rank/world_size (each rank reads its split whole), or remove split_dataset_by_node "
            "and let the Loader shard the whole dataset"
        )
    return split
