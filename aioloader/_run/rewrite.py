"""Graph rewrites applied when a run is built, before any stage exists: a pooled map fused with
the batch after it (:mod:`aioloader._run.fusion`), an indexable source's read moved into the
map after it (:mod:`aioloader._run.read_fusion`), and a shard stream read in the process map's
workers (:mod:`aioloader._run.stages.shard_map`). All keep the data, order and keys unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from aioloader._run.fusion import MapThenCollate, members, pooled_per_item
from aioloader._run.read_fusion import NamedRead
from aioloader._run.stages.base import StageSpec
from aioloader._run.stages.batch import BatchSpec
from aioloader._run.stages.map import MapSpec
from aioloader._spec import is_picklable
from aioloader.collate import stack
from aioloader.sources._adapt import IndexableSource, ShardStreamSource

__all__ = ["fuse_map_batch", "fuse_read", "fuse_stream"]


def _fusable(spec: MapSpec, batch: BatchSpec) -> bool:
    if not pooled_per_item(spec):
        return False
    if spec.on_error != "raise" or spec.retries or spec.timeout is not None or not spec.ordered:
        return False
    if spec.rewrite.fused_batch is not None or batch.collate is members:
        return False
    # processes need the collate in the workers; a thread or inline run does not
    return spec.executor == "thread" or is_picklable(batch.collate or stack)


def fuse_map_batch(specs: Sequence[StageSpec]) -> list[StageSpec]:
    """``specs`` with each fusable (map, batch) pair rebuilt as (grouping batch, fused map)."""
    out: list[StageSpec] = []
    i = 0
    while i < len(specs):
        spec = specs[i]
        following = specs[i + 1] if i + 1 < len(specs) else None
        if (
            isinstance(spec, MapSpec)
            and isinstance(following, BatchSpec)
            and type(following) is BatchSpec
            and _fusable(spec, following)
        ):
            work = MapThenCollate(spec.fn, following.collate or stack, spec.name, following.name)
            out.append(dataclasses.replace(following, collate=members))
            fused = dataclasses.replace(spec.rewrite, fused_batch=following.name)
            out.append(dataclasses.replace(spec, fn=work, rewrite=fused))
            i += 2
            continue
        out.append(spec)
        i += 1
    return out


def fuse_read(source: IndexableSource, specs: Sequence[StageSpec]) -> list[StageSpec]:
    """``specs`` (the read stage first) with the read moved into the map stage after it, when
    the source can be read in a worker and that stage may run in a pool; else unchanged."""
    read, *rest = specs
    if (source.worker_reader is None and source.dataset_reader is None) or not rest:
        return list(specs)
    at = 0
    if isinstance(rest[0], BatchSpec) and rest[0].collate is members:  # a fused pair's grouping
        at = 1
    spec = rest[at] if at < len(rest) else None
    if not isinstance(spec, MapSpec) or not pooled_per_item(spec) or spec.timeout is not None:
        return list(specs)
    reader = source.worker_reader
    only = getattr(reader, "executors", None)  # a reader for some executors only (remote shards: Ray)
    if only is not None and spec.executor not in only:
        return list(specs)
    if reader is None:  # a user's dataset: only into processes or actors the user asked for
        if spec.executor not in ("process", "ray") or not source.dataset_reader.picklable:
            return list(specs)
        reader = source.dataset_reader
    reads = NamedRead(reader, read.name)
    fn = spec.fn.reading(reads) if isinstance(spec.fn, MapThenCollate) else spec.fn
    rest[at] = dataclasses.replace(spec, fn=fn, rewrite=dataclasses.replace(spec.rewrite, reads=reads))
    return rest


def fuse_stream(source: ShardStreamSource, specs: Sequence[StageSpec], *, prefix: Sequence[int] = ()) -> MapSpec | None:
    """The map that a shard stream's workers run (the first stage, when it may take the
    stream's reads: :mod:`aioloader._run.stages.shard_map`), or None, the stream then read in
    the parent: for a map not in processes or Ray actors (threads share the parent's loop, which reads
    without copies), one that is not per item, random, timed or retried (a shard's task
    would carry them all), a source that offers no ``worker_stream()`` or whose stream says
    its ``reads_in_workers(executor)`` is False (None: measured by the stage), and a resume whose shuffle buffer is read
    again first (its samples come from several shards)."""
    if not specs or prefix or source.worker_stream is None:
        return None
    spec = specs[0]
    if not isinstance(spec, MapSpec) or spec.executor not in ("process", "ray") or not pooled_per_item(spec):
        return None
    reads_in_workers = getattr(source.worker_stream, "reads_in_workers", None)
    if reads_in_workers is not None and reads_in_workers(spec.executor) is False:
        return None
    if spec.timeout is not None or spec.retries or spec.rewrite.fused_batch is not None:
        return None
    return spec
