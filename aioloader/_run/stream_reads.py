"""Who reads a fused shard stream by default: the parent or the map's worker processes.

With ``WebDataset(urls)`` (``read_in_workers=None``) and ``.map(fn, executor="process")``,
the fused stage (:mod:`aioloader._run.stages.shard_map`) reads the run's first shard in the
parent and sends its samples to the workers in chunks, the first one small; the workers note
``fn``'s CPU time on each sample. From that chunk it decides for the other shards:
:func:`workers_read_faster`. Either way the items, keys, order and resume states are the
same; only where the bytes are read and parsed differs. The decision holds for the Loader's
later runs (its :class:`~aioloader._run.decisions.Decisions`): a run decided for the parent is
then built unfused, the source streaming in the parent and the map fused with its batch.

Why the two win where they do (CPU per sample by process, 2 cores, bench ``remote``): with
the parent reading, the parent spends ~0.1 ms a JPEG (30 KB) and ~0.45 ms a 150 KB array
(reading, tar parsing, pickling the bytes into the pipe), the workers ~1.2 ms and ~0.3 ms.
With the workers reading, the parent spends ~0.1 ms on either (results only) and each worker
~0.2 ms more a sample (its loop's turns, polls and tar parsing between calls of ``fn``). So a
cheap ``fn`` over large samples leaves the parent the bottleneck (arrays: ~0.45 ms a sample
against the workers' ~0.15 ms each), and moving the reads to the workers wins; a costly
``fn`` leaves the workers the bottleneck, and the reads cost them less in the parent.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator, Sequence
from typing import Any

__all__ = [
    "PARENT_BYTES_PER_S",
    "PROBE_SAMPLES",
    "ParentReads",
    "reads_measured",
    "sample_bytes",
    "workers_read_faster",
]

# the sample bytes a second the parent reads, parses and sends to the workers (measured: ~0.35
# ms more parent CPU for a 150 KB sample than for a 30 KB one)
PARENT_BYTES_PER_S = 400e6
PROBE_SAMPLES = 8  # the first chunk of the first shard: fn timed on these


def reads_measured(stream: Any, executor: str) -> bool:
    """Whether the fused stage measures who reads ``stream`` (a shard stream's
    ``worker_stream``) for a map of ``executor``: its ``reads_in_workers`` says None."""
    reads_in_workers = getattr(stream, "reads_in_workers", None)
    return reads_in_workers is not None and reads_in_workers(executor) is None


def sample_bytes(sample: Any) -> int:
    """The bytes a sample carries into a worker: its fields' bytes (a WebDataset sample's
    members), else 0."""
    if not isinstance(sample, dict):
        return 0
    return sum(len(v) for v in sample.values() if isinstance(v, bytes | bytearray | memoryview))


def workers_read_faster(sizes: Sequence[int], fn_times: Sequence[float], workers: int) -> bool:
    """Whether the workers should read: the parent's CPU to pass a sample's bytes on (its
    reads, parsing and pipe, at :data:`PARENT_BYTES_PER_S`) is more than a worker's share of
    ``fn``'s CPU per sample (the median of ``fn_times``: a first call's warm-up left out)."""
    if not sizes or not fn_times:
        return False
    per_sample = sum(sizes) / len(sizes)
    return per_sample / PARENT_BYTES_PER_S > statistics.median(fn_times) / max(1, workers)


class ParentReads:
    """The shards at ``places`` (numbers ``shards``) streamed by the parent, in order: each
    shard's job takes its samples in turn (:meth:`take`); the members skipped under the
    source's ``on_error="skip"`` are collected for the job taking at the time."""

    def __init__(self, dataset: Any, shards: list[int], places: list[int], *, skip: int, store: Any) -> None:
        self._places = places
        self.reports: list[tuple[Any, BaseException]] = []
        self._stream: AsyncIterator[Any] = dataset.stream(shards, skip=skip, report=self._report, store=store)
        self._next: Any = None  # read past the end of the shard taken before
        self._ended = False
        self._error: BaseException | None = None  # raised once the samples before it are taken

    def covers(self, place: int) -> bool:
        return place in self._places

    def _report(self, key: Any, exc: BaseException) -> None:
        self.reports.append((key, exc))

    def drain_reports(self) -> list[tuple[Any, BaseException]]:
        reports, self.reports = self.reports, []
        return reports

    async def take(self, place: int, most: int) -> list[tuple[int, Any]]:
        """Up to ``most`` ``(index, sample)`` of the shard at ``place``; [] at its end. A
        read error is raised (the stream ends with it)."""
        taken: list[tuple[int, Any]] = []
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        while len(taken) < most:
            item, self._next = self._next, None
            if item is None:
                if self._ended:
                    break
                try:
                    item = await anext(self._stream)
                except StopAsyncIteration:
                    self._ended = True
                    break
                except Exception as exc:
                    self._ended = True
                    if not taken:
                        raise
                    self._error = exc
                    break
            n, index, sample = item
            if self._places[n] != place:  # the next shard's: its job takes it
                self._next = item
                break
            taken.append((index, sample))
        return taken

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]
