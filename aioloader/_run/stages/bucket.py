"""The bucketing batch stage: items go to a bucket by length and a bucket that reaches its
batch size is emitted, so each batch holds items of similar length and padding stays small.

``boundaries`` ``[b0, b1, ...]`` make buckets ``[0, b0), [b0, b1), ..., [b_last, inf)``. At the
end of the input the partial buckets are emitted in bucket order (dropped with
``drop_last``). Memory is bounded: at most ``batch_size - 1`` items wait in each bucket. The
output depends only on the input sequence (no timing), so it is deterministic and resumable.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

from aioloader._run.stages._grouping import GroupStage, unknown_length
from aioloader._run.stages.base import BuildContext, StageSpec
from aioloader._spec import check_bool, check_callable, check_positive_int


@dataclass(frozen=True, slots=True)
class BucketSpec(StageSpec):
    makes_batches: ClassVar[bool] = True
    resume_blocker: ClassVar[str | None] = "it holds items in buckets and emits them out of input order"
    boundaries: tuple[int, ...]
    batch_sizes: tuple[int, ...]  # one per bucket: len(boundaries) + 1
    length_fn: Callable[[Any], int] = len
    collate: Callable[[list[Any]], Any] | None = None
    drop_last: bool = False

    def length(self, n: int) -> int:
        """For ``len(loader)``: the batch count depends on the data."""
        raise unknown_length(self.name)

    def build(self, ctx: BuildContext) -> BucketStage:
        return BucketStage(self)


class _Bucket:
    __slots__ = ("keys", "seqs", "values")

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.seqs: list[Any] = []
        self.values: list[Any] = []


class BucketStage(GroupStage):
    def __init__(self, spec: BucketSpec) -> None:
        super().__init__(spec.name, spec.collate)
        self._spec = spec

    async def run(self) -> None:
        spec = self._spec
        boundaries, sizes = spec.boundaries, spec.batch_sizes
        buckets = [_Bucket() for _ in sizes]
        async for block in self.input:
            self.stats.items_in += len(block)
            started = perf_counter()
            for key, seq, value in zip(block.keys, block.seqs, block.values, strict=True):
                index = bisect.bisect_right(boundaries, self.measure(spec.length_fn, key, value))
                bucket = buckets[index]
                bucket.keys.append(key)
                bucket.seqs.append(seq)
                bucket.values.append(value)
                if len(bucket.values) >= sizes[index]:
                    buckets[index] = _Bucket()
                    self.stats.busy_s += perf_counter() - started
                    await self.emit(bucket.keys, bucket.seqs, bucket.values)
                    started = perf_counter()
            self.stats.busy_s += perf_counter() - started
        if not spec.drop_last:
            for bucket in buckets:
                if bucket.values:
                    await self.emit(bucket.keys, bucket.seqs, bucket.values)
        self.output.close()


def bucket_spec(
    boundaries: Sequence[int],
    batch_size: int | Sequence[int],
    length: Callable[[Any], int],
    collate: Callable[[list[Any]], Any] | None,
    drop_last: bool,
) -> BucketSpec:
    """Validate ``Loader.bucket`` arguments (naming each) and build the spec."""
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence) or not boundaries:
        raise TypeError(f"boundaries must be a non-empty sequence of ints, got {boundaries!r}")
    bounds = tuple(check_positive_int(b, "boundaries", minimum=1) for b in boundaries)
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"boundaries must be strictly increasing, got {list(bounds)}")
    if isinstance(batch_size, Sequence) and not isinstance(batch_size, (str, bytes)):
        sizes = tuple(check_positive_int(b, "batch_size") for b in batch_size)
        if len(sizes) != len(bounds) + 1:
            raise ValueError(
                f"batch_size as a sequence needs one size per bucket (len(boundaries) + 1 = "
                f"{len(bounds) + 1}), got {len(sizes)}"
            )
    else:
        sizes = (check_positive_int(batch_size, "batch_size"),) * (len(bounds) + 1)
    check_callable(length, "length")
    if collate is not None:
        check_callable(collate, "collate")
    return BucketSpec("bucket", bounds, sizes, length, collate, check_bool(drop_last, "drop_last"))
