"""The Loader: an immutable pipeline spec with a fluent API, and its iteration entry points.

Each fluent call (``map``, ``filter``, ``batch``, ...) validates its arguments and returns a new
Loader; nothing runs until iteration. Iterating starts a *run* (one epoch): ``async for`` runs
it on the caller's event loop, plain ``for`` on the Loader's background loop thread. The Loader
owns that thread, the epoch counter and any long-lived pool until ``close()``.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from time import perf_counter
from typing import Any

from aioloader._closing import Closing
from aioloader._exit import close_at_exit
from aioloader._run.block import Block
from aioloader._run.bridge import iterate_blocks
from aioloader._run.delivery import Delivery
from aioloader._run.graph import Pipeline, Run
from aioloader._run.runtime import Runtime
from aioloader._run.stages.adaptive_batch import AdaptiveBatchSpec, StepSizer, adaptive_batch_spec
from aioloader._run.stages.base import StageSpec
from aioloader._run.stages.batch import BatchSpec
from aioloader._run.stages.device import device_spec
from aioloader._run.stages.filter import FilterSpec
from aioloader._run.stages.map import make_map_spec
from aioloader._run.stages.prefetch import PrefetchSpec
from aioloader._run.stages.shuffle import ShuffleSpec
from aioloader._run.stages.unbatch import UnbatchSpec
from aioloader._run.stall import check_stall_options
from aioloader._spec import (
    SHARD_POLICIES,
    Options,
    SourceSpec,
    check_bool,
    check_callable,
    check_choice,
    check_positive_int,
    fn_name,
    unique_name,
)
from aioloader.monitor.progress import check_progress, make_observer
from aioloader.monitor.stats import pipeline_stats
from aioloader.order.orders import KeyOrder, order_count, resolve_order
from aioloader.order.resume import FORMAT, ResumePoint, parse, parse_elastic, seal
from aioloader.order.sample_rng import is_random
from aioloader.order.sharding import RankInfo, resolve_rank, shard_count
from aioloader.sources._adapt import IndexableSource, ShardStreamSource, adapt
from aioloader.sources._presplit import check_no_second_split

__all__ = ["EpochSampler", "Loader"]


class Loader(Closing):
    """A declarative data pipeline. Build it with :meth:`from_source` and the fluent methods."""

    __slots__ = ("__weakref__", "_pipeline", "_runtime")

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._runtime = Runtime()
        weakref.finalize(self, self._runtime.close)

    @property
    def spec(self) -> Pipeline:
        """What this Loader runs, read-only: the source spec, the stage specs and the options
        (frozen dataclasses; the service and the profiler rebuild pipelines from them)."""
        return self._pipeline

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_source(
        cls,
        source: Any,
        *,
        shuffle: bool | str | KeyOrder = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shard_policy: str = "drop",
        chunk_window: int | None = None,
    ) -> Loader:
        """Start a pipeline from an indexable, iterable or async-iterable ``source``.

        ``shuffle``: ``False`` (source order), ``True`` (a seeded permutation per epoch),
        ``"chunks"`` (chunk order permuted, keys mixed within ``chunk_window`` chunks read
        together; the source's chunk layout when it exposes one) or an ``al.order`` sampler
        (``Weighted``, ``ClassBalanced``). Keys are sharded over ranks before any read, except in
        a Hugging Face dataset already split with ``split_dataset_by_node``: each rank reads its
        split whole (giving ``rank``/``world_size`` too is refused)."""
        if check_no_second_split(source, rank, world_size) is not None:
            rank, world_size = 0, 1
        adapted = adapt(source)
        order = None
        if isinstance(adapted, IndexableSource):
            order = resolve_order(shuffle, adapted.obj, chunk_window)
        elif isinstance(adapted, ShardStreamSource) and shuffle in (True, "chunks"):
            pass  # a seeded shard order per epoch (aioloader._run.stages.shard_source)
        elif shuffle is not False:
            raise ValueError(
                f"shuffle={shuffle!r} needs an indexable source (an order of its keys); "
                "for a stream use .shuffle(buffer_size)"
            )
        if chunk_window is not None and shuffle != "chunks":
            raise ValueError("chunk_window only applies to shuffle='chunks'")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size is not None:
            check_positive_int(world_size, "world_size")
        if rank is not None:
            check_positive_int(rank, "rank", minimum=0)
            if world_size is not None and rank >= world_size:
                raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
        check_choice(shard_policy, "shard_policy", SHARD_POLICIES)
        spec = SourceSpec(source, shuffle, seed, rank, world_size, shard_policy, order)
        return cls(Pipeline(spec, adapted, (), Options()))

    def _then(self, spec: StageSpec) -> Loader:
        if any(isinstance(s, AdaptiveBatchSpec) for s in self._pipeline.stages) and not spec.one_to_one():
            # a stage that drops or holds batches would leave the adaptive stage waiting for
            # the step time of a batch the consumer never gets
            raise ValueError(
                f"{spec.name} cannot follow adaptive_batch: only map (on_error='raise'), "
                "prefetch and to_device can, as the consumer must receive every batch in order"
            )
        taken = {s.name for s in self._pipeline.stages} | {"source", "read"}
        spec = replace(spec, name=unique_name(spec.name, taken))
        return Loader(replace(self._pipeline, stages=(*self._pipeline.stages, spec)))

    def map(
        self,
        fn: Callable[[Any], Any],
        *,
        executor: str = "auto",
        concurrency: int | str | None = None,
        ordered: bool = True,
        on_error: str = "raise",
        max_failures: int | float = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (OSError,),
        timeout: float | None = None,
        name: str | None = None,
        worker_init: Callable[[int], None] | None = None,
        ray_options: dict[str, Any] | None = None,
        max_worker_memory: int | str | None = "auto",
        stall_after: float | str | None = "auto",
        on_stall: str = "warn",
    ) -> Loader:
        """Apply ``fn`` (sync or async) to every item. A random transform (``fn.random`` is
        True, as ``al.transforms`` augmentations) is called ``fn(item, rng)`` with a generator
        drawn from (seed, epoch, key): the same whatever the executor, new each epoch.

        ``executor="process"`` runs ``fn`` in a pool of worker processes kept for the Loader's
        life (``concurrency`` processes; default 75% of the cores, at most 2 under 4 GiB free).
        ``fn`` and ``worker_init`` must be picklable (checked here); ``worker_init(worker_id)``
        runs once in each worker as it starts (and in a replacement after a crash). See
        :mod:`aioloader.workers`. ``max_worker_memory`` (bytes; "auto": half the machine's
        memory shared by the workers, at least 1 GiB; None: no limit): a worker whose resident
        memory grows past it is replaced and its sample fails as ``WorkerCrashError`` (after the
        usual redo). ``stall_after`` (seconds; "auto": 20x the slowest task, at least 60 s;
        None: never): a task running that long is reported, a warning naming the stage, the
        keys, the worker's pid and its Python stack; ``on_stall="raise"`` makes it a
        ``StageStalledError``. Thread and inline maps are watched the same way (the report
        names the thread and gives its Python stack; an inline call, which holds the event
        loop, can only be reported), and Ray actors (the report names the actor, its node and
        pid; Ray gives no stack of a running call).

        ``executor="ray"`` runs ``fn`` on a pool of ``concurrency`` Ray actors (default: one
        per CPU of the cluster) with the same semantics, on the cluster Ray is connected to
        (else ``ray.init()``); ``ray_options`` are the actors' Ray options (``num_cpus``,
        ``resources``, ``scheduling_strategy``...), ``worker_init(worker_id)`` runs in each
        actor, and ``max_worker_memory`` is each actor's limit ("auto": the ``memory`` Ray
        reserves for it, if ``ray_options`` sets one, else none). Needs
        ``pip install aioloader[ray]``; see :mod:`aioloader.ray`.

        ``executor="auto"`` measures ``fn`` on the first block: cheap functions stay inline,
        GIL-releasing ones go to threads, GIL-holding CPU-heavy picklable ones to processes
        (see :mod:`aioloader.monitor.autotune`). ``concurrency="auto"`` tunes the chunks in
        flight and the output queue depth while running (hill-climbing on throughput within the
        cores and the memory budget); ``stats()["autotune"]`` shows what it chose.

        ``on_error="skip"`` skips a sample ``fn`` fails on and records it with its key in
        ``stats()["errors"]``, up to ``max_failures``. The pipeline's first map also sets how
        the source is read: a sample that cannot be read (a file gone or unreadable, a line that
        does not decode) is skipped under the same ``on_error`` and a budget of the same size,
        named by stage ``"read"`` (``"source"`` for a stream)."""
        tune = concurrency == "auto"
        spec = make_map_spec(
            fn,
            executor=executor,
            concurrency=None if tune else concurrency,
            ordered=ordered,
            on_error=on_error,
            max_failures=max_failures,
            retries=retries,
            retry_on=retry_on,
            timeout=timeout,
            name=name,
        )
        if is_random(fn):  # a random transform: fn(sample, rng), rng from (seed, epoch, key)
            if spec.is_async:
                raise TypeError(f"fn: a random transform must be sync, {spec.name} is async")
            spec = replace(spec, seed=self._pipeline.source_spec.seed)
        if spec.executor == "process":
            from aioloader.workers import process_map_spec

            spec = process_map_spec(
                spec,
                worker_init,
                max_worker_memory=max_worker_memory,
                stall_after=stall_after,
                on_stall=on_stall,
            )
        elif spec.executor == "ray":
            from aioloader.ray import ray_map_spec

            spec = ray_map_spec(spec, worker_init, ray_options, max_worker_memory=max_worker_memory)
        elif worker_init is not None:
            raise ValueError("worker_init is only used with executor='process' or 'ray'")
        if spec.executor not in ("process", "ray") and max_worker_memory != "auto":
            raise ValueError("max_worker_memory is only used with executor='process' or 'ray'")
        if spec.executor in ("inline", "thread", "auto", "ray") and not spec.is_async:
            check_stall_options(stall_after, on_stall)
            spec = replace(spec, stall_after=stall_after, on_stall=on_stall)
        elif spec.executor != "process" and (stall_after, on_stall) != ("auto", "warn"):
            raise ValueError(
                "stall_after and on_stall are used with executor='process', 'thread', 'inline', "
                f"'ray' or 'auto' with a sync function, not {spec.executor!r}"
                + (" with an async function" if spec.is_async else "")
            )
        if ray_options is not None and spec.executor != "ray":
            raise ValueError("ray_options is only used with executor='ray'")
        loader = self._then(spec)
        if tune:
            return loader._with_extras(
                autotune=(
                    *self._pipeline.options.extras.get("autotune", ()),
                    loader._pipeline.stages[-1].name,
                )
            )
        return loader

    def _with_extras(self, **extras: Any) -> Loader:
        options = self._pipeline.options
        options = replace(options, extras={**options.extras, **extras})
        return Loader(replace(self._pipeline, options=options))

    def filter(self, predicate: Callable[[Any], bool], *, name: str | None = None) -> Loader:
        """Keep the items for which ``predicate(item)`` is true."""
        check_callable(predicate, "predicate")
        return self._then(FilterSpec(name or f"filter({fn_name(predicate)})", predicate))

    def batch(
        self,
        size: int,
        *,
        collate: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = False,
    ) -> Loader:
        """Group items into batches of ``size``, collated by ``collate`` (default: al.collate.stack)."""
        check_positive_int(size, "size")
        if collate is not None:
            check_callable(collate, "collate")
        return self._then(BatchSpec("batch", size, collate, check_bool(drop_last, "drop_last")))

    def unbatch(self) -> Loader:
        """Split batches back into items."""
        return self._then(UnbatchSpec("unbatch"))

    def batch_by_tokens(
        self,
        max_tokens: int,
        *,
        length: Callable[[Any], int] = len,
        collate: Callable[[list[Any]], Any] | None = None,
        padded: bool = True,
        max_batch_size: int | None = None,
    ) -> Loader:
        """Batches of consecutive items under a token budget: ``batch size x longest length``
        (``padded=True``) or the sum of lengths (``padded=False``) stays <= ``max_tokens``; an
        item longer than the budget goes alone. ``collate`` defaults to :func:`al.collate.pad`
        (the items differ in length). See :mod:`aioloader._run.stages.batch_by_tokens`."""
        from aioloader._run.stages.batch_by_tokens import token_batch_spec

        return self._then(token_batch_spec(max_tokens, length, collate, padded, max_batch_size))

    def adaptive_batch(
        self,
        initial_size: int,
        *,
        target_step_s: float,
        min_size: int = 1,
        max_size: int | None = None,
        factor: int = 2,
        tolerance: float = 0.25,
        lag: int = 2,
        collate: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = False,
    ) -> Loader:
        """Batches whose size follows the training step time: starting at ``initial_size``,
        multiplied by ``factor`` after a step faster than ``target_step_s`` (less the
        ``tolerance`` fraction), divided by it after a slower one, within ``[min_size,
        max_size]``. The step time of a batch is what :meth:`record_step_time` reports, else
        the time until the consumer asks for the next batch. Batch ``j`` uses the step time of
        batch ``j - 1 - lag``, so the sizes depend on the step times only (deterministic, and
        exact on resume); ``lag`` batches are prepared ahead. The consumer must receive these
        batches as they are (no ``unbatch`` or ``filter`` after). See
        :mod:`aioloader._run.stages.adaptive_batch`."""
        spec = adaptive_batch_spec(
            initial_size, target_step_s, min_size, max_size, factor, tolerance, lag, collate, drop_last
        )
        return self._then(spec)

    def record_step_time(self, seconds: float) -> None:
        """Report how long the training step on the last batch took (for
        :meth:`adaptive_batch`; without it the loader measures the time until the next request).
        Once per batch, before asking for the next one."""
        sizer = self._step_sizer()
        if sizer is None:
            raise TypeError("record_step_time needs an adaptive_batch stage in the pipeline")
        sizer.record(seconds)

    def _step_sizer(self) -> StepSizer | None:
        """The adaptive batch stage's step times and sizes (None without that stage)."""
        for spec in self._pipeline.stages:
            if isinstance(spec, AdaptiveBatchSpec):
                return self._runtime.step_sizer(spec)
        return None

    def bucket(
        self,
        boundaries: Sequence[int],
        *,
        batch_size: int | Sequence[int],
        length: Callable[[Any], int] = len,
        collate: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = False,
    ) -> Loader:
        """Batches of items of similar length: bucket ``i`` holds lengths in
        ``[boundaries[i-1], boundaries[i])`` and is emitted when it holds ``batch_size`` items
        (an int, or one per bucket). ``collate`` defaults to :func:`al.collate.pad`. See
        :mod:`aioloader._run.stages.bucket`."""
        from aioloader._run.stages.bucket import bucket_spec

        return self._then(bucket_spec(boundaries, batch_size, length, collate, drop_last))

    def pack(
        self,
        seq_len: int,
        *,
        batch_size: int = 1,
        field: str = "input_ids",
        split_documents: bool = True,
        pad_value: int = 0,
        drop_last: bool = False,
    ) -> Loader:
        """Pack token sequences into ``[batch_size, seq_len]`` rows with document boundaries
        (``position_ids``, ``cu_seqlens``). See :mod:`aioloader._run.stages.pack`."""
        from aioloader._run.stages.pack import pack_spec

        return self._then(pack_spec(seq_len, batch_size, field, split_documents, pad_value, drop_last))

    def validate(
        self,
        check: Callable[[Any], Any] | Sequence[Callable[[Any], Any]],
        *,
        on_error: str = "raise",
        max_failures: int | float = 0,
    ) -> Loader:
        """Check every item (e.g. ``al.transforms.Check(shape=..., dtype=..., range=...)``);
        a failing item raises ``DataFormatError``/``DataCorruptionError`` naming its key, or is
        skipped and recorded (``on_error="skip"``). See :mod:`aioloader._run.stages.validate`."""
        from aioloader._run.stages.validate import validate_spec

        return self._then(validate_spec(check, on_error, max_failures))

    def shuffle(self, buffer_size: int, *, seed: int | None = None) -> Loader:
        """A seeded shuffle buffer (reservoir) of ``buffer_size`` items: works on endless
        streams in constant memory; its state (for ``state_dict``) is keys, not payloads.
        ``seed`` defaults to the source's seed; the order changes with the epoch."""
        check_positive_int(buffer_size, "buffer_size")
        if seed is not None:
            check_positive_int(seed, "seed", minimum=0)
        return self._then(ShuffleSpec("shuffle", buffer_size, seed))

    def prefetch(self, n: int) -> Loader:
        """Keep up to ``n`` outputs of the previous stage ready ahead of the consumer."""
        check_positive_int(n, "n")
        return self._then(PrefetchSpec("prefetch", n))

    def to_device(
        self,
        device: Any,
        *,
        non_blocking: bool = True,
        normalize: bool = False,
        dtype: Any = None,
        mean: Any = None,
        std: Any = None,
        channel_dim: int = -3,
    ) -> Loader:
        """Move each batch's tensors to ``device`` ("cpu", "cuda", "cuda:N"), overlapping the
        host-to-device copy with the training step (a copy stream, pinned staging buffers, one
        event per batch the consumer's stream waits on). ``normalize=True`` (ImageNet mean/std),
        or ``dtype``/``mean``/``std``, turns uint8 tensors into normalized floats on the device.
        See :mod:`aioloader.device`."""
        spec = device_spec(
            device,
            non_blocking=non_blocking,
            normalize=normalize,
            dtype=dtype,
            mean=mean,
            std=std,
            channel_dim=channel_dim,
        )
        return self._then(spec)

    def options(
        self,
        *,
        event_loop: str | None = None,
        block_size: int | None = None,
        progress: bool | float | None = None,
        monitor: Any = None,
    ) -> Loader:
        """Runtime options that do not change the data: ``event_loop`` ("auto", "uvloop",
        "asyncio") for sync iteration, ``block_size`` (items per hand-off between stages),
        ``progress`` (a tqdm bar on iterations longer than 1 s with True, or after that many
        seconds; total from ``len(loader)`` when known) and ``monitor`` (an
        ``al.DataLoaderPerformanceMonitor`` fed every value the consumer receives)."""
        extras: dict[str, Any] = {}
        if progress is not None:
            extras["progress"] = check_progress(progress)
        if monitor is not None:
            if not callable(getattr(monitor, "record_batch", None)):
                raise TypeError(f"monitor must have a record_batch(batch_size) method, got {monitor!r}")
            extras["monitor"] = monitor
        options = self._pipeline.options
        if extras:
            options = replace(options, extras={**options.extras, **extras})
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

    @property
    def resuming(self) -> bool:
        """True from ``load_state_dict()`` until the iteration that resumes the state starts."""
        return self._runtime.pending_resume is not None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next iteration (as ``DistributedSampler.set_epoch``). After
        ``load_state_dict()``, only the state's epoch is accepted: the next iteration resumes it."""
        check_positive_int(epoch, "epoch", minimum=0)
        pending = self._runtime.pending_resume
        if pending is not None and int(epoch) != pending.epoch:
            raise ValueError(
                f"set_epoch({epoch}) after load_state_dict() of a state in epoch {pending.epoch}: "
                f"the next iteration resumes epoch {pending.epoch}; call set_epoch({pending.epoch}) "
                "(or load the state of the epoch you mean)"
            )
        self._runtime.next_epoch = int(epoch)

    @property
    def sampler(self) -> EpochSampler:
        """What frameworks that set a dataloader's epoch through ``loader.sampler.set_epoch(e)``
        before each epoch (PyTorch Lightning, Accelerate) call. See :class:`EpochSampler`."""
        return EpochSampler(self)

    def _framework_epoch(self, epoch: int) -> None:
        """A framework starts ``epoch``: after ``load_state_dict()`` of a state in an earlier
        epoch, the framework had closed that epoch early (Lightning's ``limit_train_batches``
        stops an epoch after a few batches and checkpoints it as finished), so the next
        iteration starts ``epoch`` rather than resuming the rest of the state's."""
        check_positive_int(epoch, "epoch", minimum=0)
        pending = self._runtime.pending_resume
        if pending is not None and int(epoch) > pending.epoch:
            self._runtime.take_resume()
        self.set_epoch(epoch)

    def __len__(self) -> int:
        """Items (or batches) one epoch yields on this rank; ``TypeError`` when not known."""
        source, spec = self._pipeline.source, self._pipeline.source_spec
        if not isinstance(source, IndexableSource):
            raise TypeError("len() is not known for a loader over a stream (the source has no length)")
        n = shard_count(
            order_count(spec.order, source.length),
            resolve_rank(spec.rank, spec.world_size),
            spec.shard_policy,
        )
        for stage in self._pipeline.stages:
            n = stage.length(n)
        return n

    # -- iteration -------------------------------------------------------------------------
    def _start_epoch(self) -> tuple[int, ResumePoint | None]:
        """The epoch of a new iteration, and where in it to start (after load_state_dict)."""
        resume = self._runtime.take_resume()
        if resume is not None:
            self._runtime.next_epoch = resume.epoch + 1
            return resume.epoch, resume
        return self._runtime.take_epoch(), None

    def _make_run(self, epoch: int, resume: ResumePoint | None) -> Run:
        run = Run(
            self._pipeline,
            epoch,
            self._runtime.decisions,
            runtime=self._runtime,
            resume=resume,
            on_close=self._runtime.unregister,
        )
        self._runtime.register(run)
        return run

    def _make_sync_run(self, epoch: int, resume: ResumePoint | None, handoff: Any, holder: list[Run]) -> Run:
        run = Run(
            self._pipeline,
            epoch,
            self._runtime.decisions,
            sink=handoff.sized,
            runtime=self._runtime,
            resume=resume,
            on_close=self._runtime.unregister,
        )
        holder.append(run)
        handoff.on_get = run.note_delivered
        self._runtime.register(run, handoff.finished)
        return run

    def __iter__(self) -> Iterator[Any]:
        return close_at_exit(self._iterate())

    def _iterate(self) -> Iterator[Any]:
        epoch, resume = self._start_epoch()
        loop_thread = self._runtime.loop_thread(self._pipeline.options.event_loop)
        holder: list[Run] = []
        blocks = iterate_blocks(
            loop_thread, lambda handoff: self._make_sync_run(epoch, resume, handoff, holder)
        )
        observer = make_observer(self._pipeline.options.extras, self._length(), f"epoch {epoch}")
        sizer = self._step_sizer()
        try:
            asked = perf_counter()
            for block in blocks:
                delivery = holder[0].delivery
                delivery.consumer_wait_s += perf_counter() - asked
                values = _hand_out(delivery, block)
                if sizer is not None:
                    values = _timed_steps(values, sizer)
                if observer is None:
                    yield from values
                else:
                    yield from observer.hand_out(values, block.keys)
                asked = perf_counter()
            if holder and not holder[0].cancelled:  # a close() mid-epoch leaves it incomplete
                holder[0].delivery.completed = True
        finally:
            if holder:
                holder[0].release_error()
                if holder[0].delivery.ended is None:
                    holder[0].delivery.ended = perf_counter()
            if observer is not None:
                observer.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiterate()

    async def _aiterate(self) -> AsyncIterator[Any]:
        epoch, resume = self._start_epoch()
        run = self._make_run(epoch, resume)
        delivery = run.delivery
        observer = make_observer(self._pipeline.options.extras, self._length(), f"epoch {epoch}")
        sizer = self._step_sizer()
        try:
            run.start()
            while True:
                asked = perf_counter()
                try:
                    block = await run.next_block()
                except StopAsyncIteration:
                    delivery.completed = not run.cancelled
                    return
                finally:
                    delivery.consumer_wait_s += perf_counter() - asked
                values = _hand_out(delivery, block)
                if sizer is not None:
                    values = _timed_steps(values, sizer)
                for value in values if observer is None else observer.hand_out(values, block.keys):
                    yield value
        finally:
            run.release_error()
            if delivery.ended is None:
                delivery.ended = perf_counter()
            if observer is not None:
                observer.close()
            await run.aclose()

    def _length(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    # -- state -----------------------------------------------------------------------------
    def _fingerprint(self, info: RankInfo) -> dict[str, Any]:
        spec, source = self._pipeline.source_spec, self._pipeline.source
        return {
            "source": f"indexable:{source.length}"
            if isinstance(source, IndexableSource)
            else source.obj.describe()
            if isinstance(source, ShardStreamSource)
            else type(source).__name__,
            **({"shuffle": spec.shuffle is not False} if isinstance(source, ShardStreamSource) else {}),
            "order": spec.order.describe() if spec.order is not None else None,
            "seed": spec.seed,
            "shard_policy": spec.shard_policy,
            "world_size": info.world_size,
            "stages": [s.fingerprint() for s in self._pipeline.stages],
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the consumer is: JSON-serialisable, keys and counters only. Loading it into
        this loader's twin (same source, order, seed, stages) in a fresh process resumes
        exactly after the last item or batch this consumer received."""
        spec = self._pipeline.source_spec
        info = resolve_rank(spec.rank, spec.world_size)
        state: dict[str, Any] = {
            "format": FORMAT,
            "rank": info.rank,
            "world_size": info.world_size,
            "fingerprint": self._fingerprint(info),
        }
        _check_resumable(self._pipeline.stages)
        pending = self._runtime.pending_resume
        run = self._runtime.last_run
        if pending is not None:
            where = {
                "epoch": pending.epoch,
                "position": pending.position,
                "prefix": pending.prefix,
                "reservoir": pending.reservoir,
                "elastic": pending.elastic,
                "failures": pending.failures,
            }
        elif run is None or run.delivery.completed:
            where = {
                "epoch": self._runtime.next_epoch,
                "position": 0,
                "prefix": [],
                "reservoir": None,
                "elastic": [],
                "failures": {},
            }
        else:
            where = {"epoch": run.epoch, **self._runtime.on_loop_of(run, run.position_state)}
            where["elastic"] = run.resume.elastic if run.resume is not None else []
            if where.pop("epoch_done"):  # the last batch of the epoch was delivered
                where = {
                    "epoch": run.epoch + 1,
                    "position": 0,
                    "prefix": [],
                    "reservoir": None,
                    "elastic": [],
                    "failures": {},
                }
        state.update(where)
        sizer = self._step_sizer()
        if sizer is not None:
            state["adaptive"] = sizer.state()
        return seal(state)

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Resume from ``state_dict()``: the next iteration continues where that consumer
        stopped. A list of every rank's states (from a run with another world size) resumes
        the epoch elastically: exactly the keys no rank received, spread over this world.
        Another rank's state of the same world size (Lightning under DDP loads rank 0's on
        every rank) resumes this rank at the same step of its own share, where a step covers
        the same number of keys on every rank (maps, batches, prefetch, to_device); a pipeline
        that filters, skips, buffers or packs by the data refuses it."""
        _check_resumable(self._pipeline.stages, "load_state_dict")
        spec = self._pipeline.source_spec
        info = resolve_rank(spec.rank, spec.world_size)
        fingerprint = self._fingerprint(info)
        if isinstance(state, list):
            if not isinstance(self._pipeline.source, IndexableSource):
                raise ValueError("elastic resume needs an indexable source")
            resume = parse_elastic(state, fingerprint)
        else:
            resume = parse(state, fingerprint)
            if int(state["rank"]) != info.rank:
                # Lightning under DDP saves rank 0's state and hands it to every rank: at the
                # same step, every rank is at the same position of its own share of the keys
                blocker = _step_depends_on_data(self._pipeline.stages)
                if blocker is not None:
                    raise ValueError(
                        f"the state is rank {state['rank']}'s; this loader is rank {info.rank}, and "
                        f"{blocker}, so another rank's position does not say where this rank is: "
                        "load this rank's own state (or the list of every rank's states)"
                    )
        sizer = self._step_sizer()
        if sizer is not None:
            if not isinstance(state, dict) or "adaptive" not in state:
                raise ValueError("the state has no 'adaptive' field (batch sizes) for adaptive_batch")
            sizer.restore(state["adaptive"])
        self._runtime.pending_resume = resume
        self._runtime.next_epoch = resume.epoch

    # -- observability ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Statistics of the current (or last) run, JSON-serialisable: per stage (``stages``)
        items in/out, rate, busy and utilization fractions, time waiting for input and for room
        downstream, queue occupancy (mean, max, capacity), errors, and for ``executor="auto"`` the
        ``placement`` (the decision, the measured cost per item, the GIL reading and the epoch
        that decided it; later epochs keep that decision); overall samples/s, batches/s,
        time to first batch, ``memory`` (RSS summed over this process and its worker processes,
        percent of the machine), ``cpu_percent``, the ``consumer``'s wait, ``bottleneck`` (the
        stage the rest waits for, or ``"consumer"``), skipped ``errors`` and a ``timeline``
        (per-stage rate and queue occupancy over time). See :mod:`aioloader.monitor.stats`."""
        run = self._runtime.last_run
        if run is None:
            from aioloader.monitor.stats import ErrorLog

            return pipeline_stats([], ErrorLog(), started=0.0, first_output=None, samples=0, batches=0)
        return run.stats()

    def report(self) -> str:
        """``stats()`` as a readable table (a string)."""
        from aioloader.monitor.report import render

        return render(self.stats())

    def __repr__(self) -> str:
        names = " -> ".join(["source", *(s.name for s in self._pipeline.stages)])
        return f"<aioloader.Loader {names}>"

    # -- isolation -------------------------------------------------------------------------
    def in_subprocess(self, *, credits: int = 4) -> Any:
        """This pipeline running in a child process (a fresh interpreter), its batches handed
        over through shared memory, so the loader's Python work leaves the trainer's CPU and GIL.
        The result iterates like this Loader (sync and async) with the same ``len``,
        ``set_epoch``, ``state_dict``/``load_state_dict`` and ``stats``; ``credits`` batches
        may wait ahead of the consumer. The spec is pickled (functions and sources defined at
        module level; ``TypeError`` here when it cannot be). Close it (or use ``with``): that
        ends the child. See :mod:`aioloader.service.subprocess_loader`."""
        from aioloader.service.subprocess_loader import SubprocessLoader

        return SubprocessLoader(self, credits=credits)

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every run, the loop thread and every pool of this loader. Idempotent."""
        self._runtime.close()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        # Ctrl-C: close at once, without waiting for calls blocked in threads
        self._runtime.close(interrupted=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))


def _hand_out(delivery: Delivery, block: Block) -> Iterator[Any]:
    """A block's items to the consumer, keeping the run's delivery count exact per item."""
    block.before_consumer()  # a device block: this thread's CUDA stream waits for its copy
    values = block.values
    if len(values) == 1:
        delivery.current_count = 1
        yield values[0]
        return
    if isinstance(values, list):
        # the block lets go of its items, so an item handed out lives only as long as the
        # consumer keeps it (not until the block's last item is handed out)
        block.values = []
        pending = deque(values)
        del values
        count = 0
        while pending:
            count += 1
            delivery.current_count = count
            yield pending.popleft()
        return
    for count, value in enumerate(values, 1):
        delivery.current_count = count
        yield value


def _timed_steps(values: Iterator[Any], sizer: StepSizer) -> Iterator[Any]:
    """Batches handed out one by one, each one's step ending when the consumer asks again or
    stops (the sizes after a break wait for that step)."""
    for value in values:
        sizer.handed_out()
        try:
            yield value
        finally:
            sizer.step_done()


def _step_depends_on_data(stages: tuple[StageSpec, ...]) -> str | None:
    """Why the number of keys a rank has consumed after k outputs depends on its data (and so
    differs between ranks at the same step), or None when it is the same on every rank."""
    problems = (stage.step_problem() for stage in stages)
    return next((problem for problem in problems if problem is not None), None)


class EpochSampler:
    """A Loader as a sampler, for frameworks that call ``dataloader.sampler.set_epoch(e)``
    before each epoch. ``set_epoch(e)`` chooses the Loader's next epoch as
    :meth:`Loader.set_epoch` does, except after ``load_state_dict()`` of a state in an earlier
    epoch: the framework has moved on (it closed that epoch early, as Lightning's
    ``limit_train_batches`` does), so the state is set aside and epoch ``e`` starts afresh."""

    __slots__ = ("_loader",)

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at the next iteration (see the class docstring)."""
        self._loader._framework_epoch(epoch)

    def __repr__(self) -> str:
        return f"<aioloader.EpochSampler of {self._loader!r}>"


def _check_resumable(stages: tuple[StageSpec, ...], method: str = "state_dict") -> None:
    """Refuse a state that could not resume exactly (rather than resume approximately)."""
    for stage in stages:
        problem = stage.resume_problem(method)
        if problem is not None:
            raise ValueError(problem)
