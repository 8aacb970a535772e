"""The Loader: an immutable pipeline spec with a fluent API, and its iteration entry points.

Each fluent call (``map``, ``filter``, ``batch``, ...) validates its arguments and returns a new
Loader; nothing runs until iteration. Iterating starts a *run* (one epoch): ``async for`` runs
it on the caller's event loop, plain ``for`` on the Loader's background loop thread. The Loader
owns that thread, the epoch counter and any long-lived pool until ``close()``.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any

from aioloader._run.bridge import iterate_blocks
from aioloader._run.graph import Pipeline, Run
from aioloader._run.runtime import Runtime
from aioloader._spec import (
    SHARD_POLICIES,
    BatchSpec,
    FilterSpec,
    MapSpec,
    Options,
    PrefetchSpec,
    SourceSpec,
    StageSpec,
    UnbatchSpec,
    check_callable,
    check_choice,
    check_positive_int,
    fn_name,
    make_map_spec,
    unique_name,
)
from aioloader.monitor.stats import pipeline_stats
from aioloader.order.sharding import resolve_rank, shard_count
from aioloader.sources._adapt import IndexableSource, adapt

__all__ = ["Loader"]

_SHUFFLE_MODES = (False, True)


class Loader:
    """A declarative data pipeline. Build it with :meth:`from_source` and the fluent methods."""

    __slots__ = ("__weakref__", "_pipeline", "_runtime")

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._runtime = Runtime()
        weakref.finalize(self, self._runtime.close)

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_source(
        cls,
        source: Any,
        /,
        *,
        shuffle: bool | str = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shard_policy: str = "drop",
    ) -> Loader:
        """Start a pipeline from an indexable, iterable or async-iterable ``source``."""
        adapted = adapt(source)
        if shuffle not in _SHUFFLE_MODES:
            raise ValueError(f"shuffle must be one of {_SHUFFLE_MODES}, got {shuffle!r}")
        if shuffle and not isinstance(adapted, IndexableSource):
            raise ValueError(
                "shuffle=True needs an indexable source (a permutation of its keys); "
                "for a stream use .shuffle(buffer_size)"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if world_size is not None:
            check_positive_int(world_size, "world_size")
        if rank is not None:
            check_positive_int(rank, "rank", minimum=0)
            if world_size is not None and rank >= world_size:
                raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
        check_choice(shard_policy, "shard_policy", SHARD_POLICIES)
        spec = SourceSpec(source, shuffle, seed, rank, world_size, shard_policy)
        return cls(Pipeline(spec, adapted, (), Options()))

    def _then(self, spec: StageSpec) -> Loader:
        taken = {s.name for s in self._pipeline.stages} | {"source", "read"}
        spec = replace(spec, name=unique_name(spec.name, taken))
        return Loader(replace(self._pipeline, stages=(*self._pipeline.stages, spec)))

    def map(
        self,
        fn: Callable[[Any], Any],
        /,
        *,
        executor: str = "auto",
        concurrency: int | None = None,
        ordered: bool = True,
        on_error: str = "raise",
        max_failures: int | float = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (OSError,),
        timeout: float | None = None,
        name: str | None = None,
    ) -> Loader:
        """Apply ``fn`` (sync or async) to every item."""
        spec = make_map_spec(
            fn,
            executor=executor,
            concurrency=concurrency,
            ordered=ordered,
            on_error=on_error,
            max_failures=max_failures,
            retries=retries,
            retry_on=retry_on,
            timeout=timeout,
            name=name,
        )
        if spec.executor == "process":
            from aioloader._run.executors import external_executor

            if external_executor("process") is None:
                raise ValueError("executor='process' is not available in this build")
        return self._then(spec)

    def filter(self, predicate: Callable[[Any], bool], /, *, name: str | None = None) -> Loader:
        """Keep the items for which ``predicate(item)`` is true."""
        check_callable(predicate, "predicate")
        return self._then(FilterSpec(name or f"filter({fn_name(predicate)})", predicate))

    def batch(
        self,
        size: int,
        /,
        *,
        collate: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = False,
    ) -> Loader:
        """Group items into batches of ``size``, collated by ``collate`` (default: al.collate.stack)."""
        check_positive_int(size, "size")
        if collate is not None:
            check_callable(collate, "collate")
        return self._then(BatchSpec("batch", size, collate, bool(drop_last)))

    def unbatch(self) -> Loader:
        """Split batches back into items."""
        return self._then(UnbatchSpec("unbatch"))

    def prefetch(self, n: int, /) -> Loader:
        """Keep up to ``n`` outputs of the previous stage ready ahead of the consumer."""
        check_positive_int(n, "n")
        return self._then(PrefetchSpec("prefetch", n))

    def options(self, *, event_loop: str | None = None, block_size: int | None = None) -> Loader:
        """Runtime options that do not change the data: ``event_loop`` ("auto", "uvloop",
        "asyncio") for sync iteration, and ``block_size`` (items per hand-off between stages)."""
        options = self._pipeline.options
        if event_loop is not None:
            check_choice(event_loop, "event_loop", ("auto", "uvloop", "asyncio"))
            options = replace(options, event_loop=event_loop)
        if block_size is not None:
            check_positive_int(block_size, "block_size")
            options = replace(options, block_size=block_size)
        return Loader(replace(self._pipeline, options=options))

    # -- epochs ----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next iteration will run."""
        return self._runtime.next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next iteration (as ``DistributedSampler.set_epoch``)."""
        check_positive_int(epoch, "epoch", minimum=0)
        self._runtime.next_epoch = int(epoch)

    def __len__(self) -> int:
        """Items (or batches) one epoch yields on this rank; ``TypeError`` when not known."""
        source, spec = self._pipeline.source, self._pipeline.source_spec
        if not isinstance(source, IndexableSource):
            raise TypeError("len() is not known for a loader over a stream (the source has no length)")
        n = shard_count(source.length, resolve_rank(spec.rank, spec.world_size), spec.shard_policy)
        for stage in self._pipeline.stages:
            if isinstance(stage, BatchSpec):
                n = n // stage.size if stage.drop_last else -(-n // stage.size)
            elif isinstance(stage, MapSpec) and stage.on_error == "skip":
                raise TypeError(f"len() is not known: stage {stage.name!r} may skip items")
            elif isinstance(stage, (FilterSpec, UnbatchSpec)):
                raise TypeError(f"len() is not known: stage {stage.name!r} changes the item count")
            else:
                length = getattr(stage, "length", None)
                if length is not None:
                    n = length(n)
        return n

    # -- iteration -------------------------------------------------------------------------
    def _make_run(self, epoch: int) -> Run:
        run = Run(self._pipeline, epoch, self._runtime.decisions)
        self._runtime.register(run)
        run.on_close.append(self._runtime.unregister)
        return run

    def _make_sync_run(self, epoch: int, handoff: Any) -> Run:
        run = Run(self._pipeline, epoch, self._runtime.decisions, sink=handoff.sized)
        handoff.on_get = run.note_delivered
        self._runtime.register(run, handoff.finished)
        run.on_close.append(self._runtime.unregister)
        return run

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        epoch = self._runtime.take_epoch()
        loop_thread = self._runtime.loop_thread(self._pipeline.options.event_loop)
        for block in iterate_blocks(loop_thread, lambda handoff: self._make_sync_run(epoch, handoff)):
            yield from block.values

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiterate()

    async def _aiterate(self) -> AsyncIterator[Any]:
        run = self._make_run(self._runtime.take_epoch())
        try:
            run.start()
            while True:
                try:
                    block = await run.next_block()
                except StopAsyncIteration:
                    return
                for value in block.values:
                    yield value
        finally:
            await run.aclose()

    # -- observability ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Statistics of the current (or last) run: per-stage counters, rates, bottleneck, errors."""
        run = self._runtime.last_run
        if run is None:
            from aioloader.monitor.stats import ErrorLog

            return pipeline_stats([], ErrorLog(), started=0.0, first_output=None, samples=0, batches=0)
        return run.stats()

    def __repr__(self) -> str:
        names = " -> ".join(["source", *(s.name for s in self._pipeline.stages)])
        return f"<aioloader.Loader {names}>"

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every run, the loop thread and every pool of this loader. Idempotent."""
        self._runtime.close()

    async def aclose(self) -> None:
        self._runtime.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.close()

    async def __aenter__(self) -> Loader:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
