"""Sources already split by rank before they reach the Loader.

A Hugging Face ``datasets`` source split with
``datasets.distributed.split_dataset_by_node(ds, rank, world_size)`` holds only its rank's share;
aioloader's own rank sharding would then keep 1/world_size of that share (rank 0 of 2 read 250
of 1000 rows, silently). ``Loader.from_source`` asks :func:`split_by_node` and reads such a
source whole on each rank.

What is recognised: an ``IterableDataset`` (``datasets`` records the split on it), and a
map-style ``Dataset`` read from an Arrow file (``load_dataset``, ``load_from_disk``) whose rows
are exactly the contiguous shard of this rank (``Dataset.shard(world_size, rank,
contiguous=True)``, what the split does). An in-memory ``Dataset`` keeps no trace of the split.
"""

from __future__ import annotations

from typing import Any

from aioloader.order.sharding import RankInfo, resolve_rank


def split_by_node(source: Any, rank: int | None, world_size: int | None) -> RankInfo | None:
    """The rank and world size ``source`` was split for by ``split_dataset_by_node``, or None.
    A map-style split must be this process's (``rank``/``world_size`` resolved as the Loader
    does).

    ``datasets`` is not imported here: a source from elsewhere costs one attribute look-up."""
    if type(source).__module__.split(".")[0] != "datasets":
        return None
    config = getattr(source, "_distributed", None)  # an IterableDataset's split
    rank, world_size = getattr(config, "rank", None), getattr(config, "world_size", None)
    if isinstance(rank, int) and isinstance(world_size, int):
        return RankInfo(rank, world_size)
    if not hasattr(source, "_data"):
        return None
    info = resolve_rank(rank, world_size)
    return info if info.world_size > 1 and _is_contiguous_shard(source, info) else None


def _is_contiguous_shard(source: Any, info: RankInfo) -> bool:
    """A map-style dataset whose Arrow file was sliced once, to rank ``info.rank``'s contiguous
    shard of the whole file (``Dataset.shard``'s arithmetic)."""
    table = getattr(source, "_data", None)
    path, replays = getattr(table, "path", None), getattr(table, "replays", None)
    if getattr(source, "_indices", None) is not None or not isinstance(path, str) or not replays:
        return False
    slices = [args for name, args, _ in replays if name == "slice"]
    if len(slices) != 1 or any(name not in ("slice", "replace_schema_metadata") for name, _, _ in replays):
        return False
    from datasets.table import MemoryMappedTable

    total = MemoryMappedTable.from_file(path).num_rows
    div, mod = divmod(total, info.world_size)
    start = div * info.rank + min(info.rank, mod)
    return tuple(slices[0]) == (start, div + (1 if info.rank < mod else 0))


def check_no_second_split(source: Any, rank: int | None, world_size: int | None) -> RankInfo | None:
    """For ``from_source``: the split of ``source`` (then the Loader does not shard it again:
    rank 0 of 1), or None. A ``rank``/``world_size`` given for a split source is refused: it
    asks to shard the rank's share once more."""
    split = split_by_node(source, rank, world_size)
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
