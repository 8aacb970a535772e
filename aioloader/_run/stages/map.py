"""The map stage: a function on every item, inline, in threads, on the loop or in processes.

Concurrent execution keeps at most ``concurrency`` chunks running. With ``ordered=True`` chunks
are emitted in input order through a bounded reorder window: at most ``2 x concurrency`` chunks
started and not yet emitted, plus the one being handed downstream; with
``ordered=False`` in completion order. Chunk size adapts so one task lasts about
``_TARGET_TASK_S``: cheap functions do not pay a round trip per item, slow ones still spread
over the workers. Failures go through the stage's policy: retry (awaited backoff), skip and
record, or raise annotated with the stage name and sample key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import numbers
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

from aioloader._run.block import Block
from aioloader._run.channel import Channel, EndOfChannel
from aioloader._run.decisions import Decisions
from aioloader._run.executors import (
    CHUNK_KEYS,
    FAILED,
    AsyncExecutor,
    ChunkResult,
    ChunkStalled,
    ChunkTimeout,
    Executor,
    ThreadExecutor,
    apply_block,
    apply_items,
    external_executor,
    on_one_intra_op_thread,
    one_intra_op_thread,
)
from aioloader._run.failures import FailurePolicy
from aioloader._run.interrupt import HoldingLoop
from aioloader._run.placement import Limiter, PlacementProbe
from aioloader._run.read_fusion import NamedRead, read_then_apply
from aioloader._run.stages.base import BuildContext, Stage, StageSpec
from aioloader._run.stall import StallWatch
from aioloader._spec import (
    EXECUTORS,
    ON_ERROR,
    check_bool,
    check_callable,
    check_choice,
    check_max_failures,
    check_positive_int,
    fn_name,
    is_async_callable,
)
from aioloader.errors import StageStalledError, StageTimeoutError
from aioloader.monitor.stats import ErrorLog, StageStats
from aioloader.order.sample_rng import WithRng

_TARGET_TASK_S = 0.002
_MAX_CHUNK = 1024
_MAX_COALESCE_DEPTH = 64  # blocks a coalescing stage may ask its input channel to hold
_AUTO_THREAD_ABOVE_S = 200e-6  # per item: slower than this blocks the loop, so use threads
_BACKOFF_S = 0.05


class _InlineExecutor:
    kind = "inline"
    workers = 1

    async def run(self, work: Any, values: list[Any], timeout: float | None) -> ChunkResult:
        with HoldingLoop():  # Ctrl-C under asyncio.run must end the call: it holds the loop
            return work(values)

    def close(self) -> None:
        pass


def default_concurrency(kind: str) -> int:
    import os

    cores = os.cpu_count() or 1
    return {"thread": max(2, cores), "async": 16}.get(kind, 1)


class MapStage(Stage):
    def __init__(
        self,
        spec: MapSpec,
        *,
        errors: ErrorLog,
        decisions: Decisions,
        expected_items: int | None = None,
        executor: Executor | None = None,
        epoch: int = 0,
        seed: int = 0,
        rank: int = 0,
        runtime: Any = None,
    ) -> None:
        """``runtime``: the Loader's Runtime, given to plug-in executors (the process pool
        is one of its resources, so it outlives the run)."""
        self.spec = spec
        self._runtime = runtime
        self._epoch = epoch
        self._seed = seed
        self._rank = rank
        self.name = spec.name
        self.input: Channel
        self.output: Channel
        self._decisions = decisions
        self.failure_policy = FailurePolicy(
            spec.name, spec.on_error, spec.max_failures, errors, expected_items
        )
        self._cost_per_item: float | None = None
        self._chunks_formed = 0
        self._expected_items = expected_items
        self._owned: list[Executor] = []
        self._probes: list[PlacementProbe] = []
        self._leftover: list[Any] = []  # calls running in threads when the stage closed
        self._tune_max: int | None = None  # concurrency="auto": the pool size, set by the tuner
        self._limiter: Limiter | None = None  # the in-flight limit while running concurrently
        self._window: Channel | None = None
        # calls in this process (threads, inline) past stall_after are reported (a thread's given up)
        self._stall = StallWatch(spec.name, stall_after=spec.stall_after, on_stall=spec.on_stall)
        if spec.per_block:
            self._work = functools.partial(apply_block, spec.fn, item_fn=spec.item_fn)
        elif spec.is_async:
            self._work = spec.fn
        elif spec.seed is not None:  # a random transform: fn(sample, rng) on (key, sample, epoch)
            self._work = functools.partial(apply_items, WithRng(spec.fn, spec.seed))
        elif spec.rewrite.reads is not None and spec.rewrite.fused_batch is None:  # keys: read, then fn
            self._work = functools.partial(read_then_apply, spec.rewrite.reads, spec.fn)
        else:  # (a fused stage that reads has its read in spec.fn, per batch)
            self._work = functools.partial(apply_items, spec.fn)
        if not spec.is_async:  # the same intra-op threads for torch ops, wherever it runs
            self._work = functools.partial(on_one_intra_op_thread, self._work)
        kind = executor.kind if executor is not None else self._initial_kind()
        self._executor: Executor = executor or self._make_executor(kind)
        self.stats = StageStats(spec.name, workers=self._executor.workers, executor=kind)
        self.stats.fused = spec.rewrite.fused_batch
        self.stats.reads = None if spec.rewrite.reads is None else spec.rewrite.reads.stage
        self.stats.describe_workers = getattr(self._executor, "describe", None)  # a Ray stage's actors
        if spec.executor == "auto":  # a decision from an earlier epoch: show what decided it
            self.stats.placement = decisions.placement(spec.name)

    # -- executor choice -------------------------------------------------------------------
    def _initial_kind(self) -> str:
        spec = self.spec
        if spec.is_async:
            return "async"
        if spec.executor == "auto":
            # A decision made in an earlier epoch sticks; otherwise start inline and measure.
            return self._decisions.executor(spec.name) or ("auto" if spec.timeout is None else "thread")
        return spec.executor

    def _make_executor(self, kind: str) -> Executor:
        if kind in ("inline", "auto"):
            return _InlineExecutor()
        workers = self.spec.concurrency or default_concurrency(kind)
        if kind == "thread" and self._tune_max is not None:
            workers = max(workers, self._tune_max)  # threads are made lazily: size for the budget
        if kind == "thread":
            executor: Executor = ThreadExecutor(workers, self.spec.name, watch=self._stall)
        elif kind == "async":
            executor = AsyncExecutor(workers)
        else:
            factory = external_executor(kind)
            if factory is None:
                raise ValueError(f"executor {kind!r} is not available")
            executor = factory(self.spec, self._runtime)
        self._owned.append(executor)
        return executor

    def close(self) -> None:
        """Close this run's executors; calls still running in their threads are kept for
        :meth:`drain`."""
        calls = [call for probe in self._probes for call in probe.calls]
        for executor in self._owned:
            executor.close()  # queued calls are cancelled; running ones go on
            calls.extend(getattr(executor, "calls", ()))
        self._owned.clear()
        self._probes.clear()
        self._stall.close()
        self._leftover.extend(call for call in calls if not call.done())

    async def drain(self, timeout: float) -> None:
        """After :meth:`close`: wait, up to ``timeout`` seconds, for the calls still running in
        threads (a thread cannot be stopped). Without this, ``Loader.close()`` could return while
        a read was still running, and the read then reopened an HDF5 file closed after it."""
        leftover, self._leftover = self._leftover, []
        pending = [asyncio.wrap_future(call) for call in leftover if not call.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        kind = self.stats.executor
        if kind == "auto":
            if not await self._probe_inline():
                self.output.close()
                return
            kind = self.stats.executor
        if kind == "inline":
            async for block in self.input:
                await self._forward(await self._process(block))
        else:
            await self._run_concurrent()
        self.output.close()

    async def _probe_inline(self) -> bool:
        """executor="auto" for a sync function: measure it on the first block and choose
        inline, thread or process (:class:`~aioloader._run.placement.PlacementProbe`; a
        block function keeps the inline-cost rule)."""
        try:
            block = await self.input.get()
        except EndOfChannel:
            return False
        probe = None
        if not self.spec.per_block:
            probe = self._placement_probe()
            self._executor = probe
        await self._forward(await self._process(block))
        if probe is not None:
            kind = probe.decision
            self.stats.placement = {**probe.describe(), "epoch": self._epoch}
        else:
            per_item = self._cost_per_item or 0.0
            kind = "thread" if per_item > _AUTO_THREAD_ABOVE_S else "inline"
        self._decisions.decide(self.spec.name, kind, self.stats.placement)
        self._executor = self._make_executor(kind)
        self.stats.workers = self._executor.workers
        self.stats.executor = kind
        return True

    def _placement_probe(self) -> PlacementProbe:
        probe = PlacementProbe(
            self._work,
            can_process=self._runtime is not None,
            reads=self.spec.rewrite.reads,
            items=self._expected_items,
            batches=self.spec.rewrite.fused_batch is not None,
            trial=self.spec.trial_runs,
        )
        self._probes.append(probe)
        return probe

    # -- concurrency="auto" (driven by aioloader.monitor.autotune.Tuner) -------------------
    def enable_tuning(self, max_workers: int) -> None:
        """Before the run starts: pools sized for ``max_workers``; the limit starts at the
        stage's default and the tuner moves it."""
        self._tune_max = max_workers
        if isinstance(self._executor, ThreadExecutor):
            start = self._executor.workers
            self._executor.close()
            self._owned.remove(self._executor)
            self._executor = self._make_executor("thread")
            self._limiter = Limiter(start)

    @property
    def tunable(self) -> bool:
        """Running concurrently, so the in-flight limit means something."""
        return self._window is not None

    @property
    def concurrency_limit(self) -> int:
        if self._limiter is not None:
            return self._limiter.limit
        return getattr(self._executor, "in_flight", self._executor.workers)

    def set_concurrency_limit(self, limit: int) -> None:
        if self._limiter is None:
            self._limiter = Limiter(limit)
        self._limiter.set_limit(limit)
        if self._window is not None:
            self._window.capacity = 2 * self._limiter.limit
        self.stats.concurrency = self._limiter.limit

    def _samples(self, block: Block) -> int:
        """Samples in ``block``: its items, or a fused stage's batches' members."""
        if self.spec.rewrite.fused_batch is None:
            return len(block)
        return sum(len(keys) for keys in block.keys)

    def _collates_here(self) -> bool:
        """A fused stage in threads collates on the loop, batch by batch in order, as the
        unfused batch stage does: a collate may not be reentrant (a tokenizer's "Already
        borrowed") or may draw from the global RNG, whose draws must come in batch order."""
        if self.spec.rewrite.fused_batch is None or self._executor.kind != "thread":
            return False
        from aioloader._run.fusion import is_pure_collate  # here: it imports torch (collate)

        return not is_pure_collate(self.spec.fn.collate)  # ours stay in the threads

    async def _forward(self, block: Block | None) -> None:
        if block is not None and len(block):
            if self._collates_here():
                work = self.spec.fn
                started = perf_counter()
                one_intra_op_thread()
                batches = [
                    work.collate_named(members, keys)
                    for keys, members in zip(block.keys, block.values, strict=True)
                ]
                self.stats.busy_s += perf_counter() - started
                block = Block(block.keys, block.seqs, batches)
            self.stats.items_out += self._samples(block)
            await self.output.put(block)

    def _chunks(self, block: Block) -> list[Block]:
        size = 1 if self.spec.timeout is not None else self._chunk_size()
        self._chunks_formed += 1
        n = len(block)
        if size >= n:
            return [block]
        return [block.slice(start, start + size) for start in range(0, n, size)]

    async def _coalesce(self, block: Block) -> Block:
        """Join the blocks already waiting upstream while a chunk would be larger than the
        block (for executors whose round trip is costly: processes). Never waits for input."""
        want = self._chunk_size()
        if want > len(block) and len(block):
            # room upstream for one task of the target size (processes: ~10 ms of items), so
            # tasks are not capped by the default depth (text workload: 97k -> 126k lines/s)
            self.input.grow(min(_MAX_COALESCE_DEPTH, -(-want // len(block)) + 1))
        blocks = [block]
        size = len(block)
        while size < want and len(self.input) > 0:
            try:
                more = await self.input.get()
            except EndOfChannel:
                break
            blocks.append(more)
            size += len(more)
        return _join(blocks)

    def _chunk_size(self) -> int:
        cost = self._cost_per_item
        if cost is None and self._chunks_formed:
            # a pool that outlives the run (Ray's actors) knows an item's cost from earlier
            # epochs: only the run's first chunk is a single block (its first batch is not held)
            cost = getattr(self._executor, "cost_per_item", None)
        if cost is None:
            return 1
        # An executor with a costlier round trip (processes) may ask for longer tasks.
        target = getattr(self._executor, "target_task_s", _TARGET_TASK_S)
        return max(1, min(_MAX_CHUNK, int(target / max(cost, 1e-9))))

    async def _run_concurrent(self) -> None:
        loop = asyncio.get_running_loop()
        # Chunks in flight: an executor with its own queue (processes) takes more than its
        # workers, so a worker starts its next chunk without waiting for the event loop.
        workers = getattr(self._executor, "in_flight", self._executor.workers)
        coalesce = getattr(self._executor, "coalesce", False) and self.spec.timeout is None
        if self._limiter is None or self._tune_max is None:
            if self._tune_max is not None and isinstance(self._executor, ThreadExecutor):
                workers = min(workers, self.spec.concurrency or default_concurrency("thread"))
            self._limiter = Limiter(workers)
        slots = self._limiter
        workers = slots.limit
        ordered = self.spec.ordered
        window = Channel(2 * workers, f"{self.name}.window")
        self._window = window
        running: set[asyncio.Task[Block | None]] = set()

        def _on_done(task: asyncio.Task[Block | None]) -> None:
            running.discard(task)
            if ordered:
                slots.release()
            elif not task.cancelled():
                done.append(task)
                if done_signal is not None and not done_signal.done():
                    done_signal.set_result(None)

        done: deque[asyncio.Task[Block | None]] = deque()
        outstanding: set[asyncio.Task[Block | None]] = set()  # started, not yet forwarded
        done_signal: asyncio.Future[None] | None = None

        async def dispatch() -> None:
            try:
                async for block in self.input:
                    if coalesce:
                        block = await self._coalesce(block)
                    for chunk in self._chunks(block):
                        await window.wait_for_room()  # the reorder window bounds started work
                        await slots.acquire()
                        task = loop.create_task(self._process(chunk))
                        running.add(task)
                        outstanding.add(task)
                        task.add_done_callback(_on_done)
                        if ordered:
                            await window.put(task)
                        else:
                            await window.put(None)  # counts dispatched chunks for the emitter
            finally:
                window.close()

        dispatcher = loop.create_task(dispatch(), name=f"{self.name}.dispatch")
        try:
            if ordered:
                async for task in window:
                    outstanding.discard(task)
                    await self._forward(await task)
            else:
                async for _ in window:
                    while not done:
                        done_signal = loop.create_future()
                        await done_signal
                    task = done.popleft()
                    outstanding.discard(task)
                    result = task.result()
                    slots.release()
                    await self._forward(result)
            await dispatcher
        finally:
            dispatcher.cancel()
            for task in list(running):
                task.cancel()
            # every chunk not forwarded, finished or not: their errors are retrieved here (the
            # run has the first one), not logged as "Task exception was never retrieved"
            pending = [dispatcher, *running, *outstanding]
            await asyncio.gather(*pending, return_exceptions=True)

    async def _process(self, chunk: Block) -> Block | None:
        """Run one chunk through the executor and the failure policy."""
        self.stats.items_in += self._samples(chunk)
        values = self._inputs(chunk)
        CHUNK_KEYS.set(chunk.keys)  # this chunk's task only: each _process is a task of its own
        work = self._work
        if self._executor.kind in ("inline", "auto"):  # on the loop (threads: the executor's watch)
            work = self._stall.watched(work, chunk.keys)
        try:
            results, failures, busy = await self._executor.run(work, values, self.spec.timeout)
        except ChunkTimeout as timeout:
            results = [FAILED] * len(values)
            failures = [(timeout.index, self._timeout_error(chunk.keys[timeout.index]))]
            busy = self.spec.timeout or 0.0
        except ChunkStalled as stalled:  # given up: each of its keys fails
            results = [FAILED] * len(values)
            failures = [
                (index, StageStalledError(stalled.report, stage=self.name, key=key))
                for index, key in enumerate(chunk.keys)
            ]
            busy = 0.0
        if len(results) != len(values):  # a lost or invented sample must never pass silently
            raise RuntimeError(f"stage {self.name!r}: {len(results)} results for {len(values)} inputs")
        self.stats.busy_s += busy
        if len(values):
            cost = busy / len(values)
            previous = self._cost_per_item
            self._cost_per_item = cost if previous is None else 0.7 * previous + 0.3 * cost
        self.failure_policy.seen += len(values)
        if failures:
            failures = await self._retry(chunk, results, failures)
        if not failures:
            return Block(chunk.keys, chunk.seqs, results)
        return self._settle(chunk, results, failures)

    def _inputs(self, chunk: Block) -> list[Any]:
        """What the work function takes: the values, (key, value, epoch) for a random transform,
        or (keys, members, ...) for a fused batch (whose members' keys name a failure)."""
        if self.spec.seed is not None:
            return [(key, value, self._epoch) for key, value in zip(chunk.keys, chunk.values, strict=True)]
        if self.spec.rewrite.fused_batch is None:
            return chunk.values
        if self._collates_here():  # (keys, members, True): fn's results, uncollated
            return [(keys, members, True) for keys, members in zip(chunk.keys, chunk.values, strict=True)]
        if self.spec.rewrite.fused_batch is not None and self._executor.kind in ("process", "ray"):
            return [
                (keys, members, False, (self._seed, self._epoch, self._rank, seqs[0]))
                for keys, members, seqs in zip(chunk.keys, chunk.values, chunk.seqs, strict=True)
            ]
        return list(zip(chunk.keys, chunk.values, strict=True))

    def _timeout_error(self, key: Any) -> StageTimeoutError:
        return StageTimeoutError(
            f"stage {self.name!r} took longer than timeout={self.spec.timeout}s on sample key {key!r}",
            stage=self.name,
            key=key,
        )

    async def _retry(
        self, chunk: Block, results: list[Any], failures: list[tuple[int, BaseException]]
    ) -> list[tuple[int, BaseException]]:
        spec = self.spec
        if not spec.retries:
            return failures
        retryable = (*spec.retry_on, StageTimeoutError)
        remaining = []
        for index, exc in failures:
            attempt = 0
            while exc is not None and attempt < spec.retries and isinstance(exc, retryable):
                await asyncio.sleep(_BACKOFF_S * 2**attempt)
                attempt += 1
                try:
                    again, again_failures, busy = await self._executor.run(
                        self._work, [self._inputs(chunk)[index]], spec.timeout
                    )
                except ChunkTimeout:
                    exc = self._timeout_error(chunk.keys[index])
                    continue
                except ChunkStalled as stalled:
                    exc = StageStalledError(stalled.report, stage=self.name, key=chunk.keys[index])
                    continue
                self.stats.busy_s += busy
                if again_failures:
                    exc = again_failures[0][1]
                else:
                    results[index] = again[0]
                    exc = None
            if exc is not None:
                remaining.append((index, exc))
        return remaining

    def _settle(self, chunk: Block, results: list[Any], failures: list[tuple[int, BaseException]]) -> Block:
        """Apply on_error to failures that retries did not fix; return the surviving items."""
        for index, exc in failures:
            self.failure_policy.fail(chunk.keys[index], exc, chunk.seqs[index])
        failed = {index for index, _ in failures}
        keep = [i for i in range(len(results)) if i not in failed]
        return Block([chunk.keys[i] for i in keep], [chunk.seqs[i] for i in keep], [results[i] for i in keep])


def _join(blocks: list[Block]) -> Block:
    """One block holding the entries of ``blocks``, in order."""
    if len(blocks) == 1:
        return blocks[0]
    return Block(
        [k for b in blocks for k in b.keys],
        [s for b in blocks for s in b.seqs],
        [v for b in blocks for v in b.values],
    )


# -- the spec ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MapRewrite:
    """What the graph attaches to a map spec when it builds a run (:mod:`aioloader._run.rewrite`,
    :meth:`MapSpec.after_batches`), kept apart from what the user said."""

    # the batch stage fused into this one (aioloader._run.fusion): fn takes (keys, members)
    fused_batch: str | None = None
    # the source's read, run by this stage's workers: its values are keys, and ``reads(keys)``
    # gives the items fn takes
    reads: NamedRead | None = None
    # fn's results are whole batches (it follows a batching stage, or a batch is fused into it),
    # used and dropped as a unit (aioloader.workers.shm)
    on_batches: bool = False


@dataclass(frozen=True, slots=True)
class MapSpec(StageSpec):
    fn: Callable[..., Any]
    executor: str = "auto"
    concurrency: int | None = None
    ordered: bool = True
    on_error: str = "raise"
    max_failures: int | float = 0
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (OSError,)
    timeout: float | None = None
    is_async: bool = False
    # executor="auto" may run fn again on its first block's inputs to read the GIL (results
    # dropped); not a source's read stage: a source may count or track its reads
    trial_runs: bool = True
    per_block: bool = False  # fn takes the list of values of a block and returns a list
    item_fn: Callable[[Any], Any] | None = None  # per-item twin of a per_block fn, to find failures
    seed: int | None = None  # set for a random transform: fn(sample, rng), rng from (seed, epoch, key)
    # the stall watch (aioloader._run.stall; the process pool's own for executor="process"):
    # seconds, "auto" or None, and "warn" or "raise"
    stall_after: float | str | None = "auto"
    on_stall: str = "warn"
    # a map's executor (inline, threads, processes) never changes the data: a state saved with
    # one resumes with another, and a subclass (RayMapSpec) fingerprints as a map
    fingerprint_kind: ClassVar[str | None] = "MapSpec"
    # not a user's setting: what the graph attached when the run was built (fusions, placement)
    rewrite: MapRewrite = MapRewrite()

    def build(self, ctx: BuildContext) -> MapStage:
        return MapStage(
            self,
            errors=ctx.errors,
            decisions=ctx.decisions,
            expected_items=ctx.expected_items,
            epoch=ctx.epoch,
            seed=ctx.seed,
            rank=ctx.rank.rank,
            runtime=ctx.runtime,
        )

    def length(self, n: int) -> int:
        if self.on_error == "skip":
            raise TypeError(f"len() is not known: stage {self.name!r} may skip items")
        return n

    def resume_problem(self, method: str) -> str | None:
        if not self.ordered:
            return (
                f"{method}: stage {self.name!r} has ordered=False, so what the consumer received "
                "is not a prefix of the epoch; use ordered=True to resume exactly"
            )
        return None

    def step_problem(self) -> str | None:
        return f"stage {self.name!r} skips failed samples" if self.on_error == "skip" else None

    def one_to_one(self) -> bool:
        return self.on_error == "raise" and self.ordered

    def after_batches(self) -> MapSpec:
        return dataclasses.replace(self, rewrite=dataclasses.replace(self.rewrite, on_batches=True))

    def source_failures(self) -> tuple[str, int | float]:
        return self.on_error, self.max_failures


def make_map_spec(
    fn: Callable[..., Any],
    *,
    executor: str,
    concurrency: int | None,
    ordered: bool,
    on_error: str,
    max_failures: int | float,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    timeout: float | None,
    name: str | None,
) -> MapSpec:
    check_callable(fn, "fn")
    check_choice(executor, "executor", EXECUTORS)
    if concurrency is not None:
        check_positive_int(concurrency, "concurrency")
    check_bool(ordered, "ordered")
    check_choice(on_error, "on_error", ON_ERROR)
    check_max_failures(max_failures)
    check_positive_int(retries, "retries", minimum=0)
    if not isinstance(retry_on, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
    ):
        raise TypeError(f"retry_on must be a tuple of exception types, got {retry_on!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        timeout = float(timeout)
    is_async = is_async_callable(fn)
    if is_async and executor in ("thread", "process", "ray"):
        raise ValueError(f"executor={executor!r} needs a sync function; {fn_name(fn)} is async")
    if timeout is not None and executor == "inline" and not is_async:
        raise ValueError(
            "timeout cannot be enforced with executor='inline' (the function blocks the event "
            "loop); use executor='thread' or 'process'"
        )
    return MapSpec(
        name=name or f"map({fn_name(fn)})",
        fn=fn,
        executor=executor,
        concurrency=concurrency,
        ordered=ordered,
        on_error=on_error,
        max_failures=max_failures,
        retries=retries,
        retry_on=retry_on,
        timeout=timeout,
        is_async=is_async,
    )
