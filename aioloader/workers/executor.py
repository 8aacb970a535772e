"""The ``executor="process"`` kind of a map stage: chunks run in the Loader's process pool.

The pool is a Loader resource (``Runtime.resource``), started on the stage's first chunk and kept
across epochs until ``loader.close()``; the per-run :class:`ProcessExecutor` only submits to it.
Crash policy lives here: when a worker dies while running a chunk, every item of the chunk is run
again, each alone (so the items that are fine are not held hostage by one that kills its
worker); an item is tried at most :data:`MAX_ATTEMPTS` times in all, then it fails with
:class:`~aioloader.errors.WorkerCrashError` (raised or skipped by the stage's ``on_error``).
A fused batch (map + collate in one task) is first run again whole, with the seed it ran with,
so one death leaves no trace in the batch (what ``fn`` and the collate drew from the worker's
global RNGs included); only if that worker dies too are its members run alone, each with
``MAX_ATTEMPTS - 1`` attempts, and collated here.
A task past its deadline has had its worker killed by the pool; it surfaces as
:class:`~aioloader._run.executors.ChunkTimeout` so the stage's timeout/retry policy applies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioloader.workers.shm as shm
import aioloader.workers.wire as wire
from aioloader._run.executors import CHUNK_KEYS, FAILED, ChunkResult, ChunkStalled, ChunkTimeout
from aioloader._run.stages.map import MapSpec
from aioloader._run.stall import check_stall_options
from aioloader._spec import InteractiveMainError, check_callable, fn_name, pickle_error
from aioloader.errors import StageStalledError, WorkerCrashError, annotate
from aioloader.workers.pool import TASKS_PER_WORKER, Outcome, ProcessPool

MAX_ATTEMPTS = 3  # runs of one item that end with its worker dead before it is given up
# A task's round trip (pickle, pipe, I/O thread, event loop) costs far more than a thread's, and
# a worker must never wait on the loop: tasks of ~10 ms, and chunks queued ahead in the pool.
# Text workload, 2 workers on 2 cores, busy fraction of the workers: 2 ms tasks and 2 chunks in
# flight 0.25-0.33, see the report for after.
TARGET_TASK_S = 0.010
QUEUED_PER_WORKER = 2
# With a ``timeout``, a worker must also become ready (import fn, run worker_init) within this
# long, or the stage's timeout if longer: a worker_init that hangs fails the run, never hangs it.
# Starting takes ~0.1-1.5 s here (importing torch), more on a loaded or a network file system.
START_TIMEOUT_S = 60.0
_LOW_MEMORY = 4 * 2**30


@dataclass(frozen=True, slots=True)
class ProcessMapSpec(MapSpec):
    """A map spec for ``executor="process"``, with the per-worker ``worker_init(worker_id)``
    and the per-worker memory limit (bytes, "auto" or None); the stall watch's options
    (``stall_after``, ``on_stall``) are every map's."""

    worker_init: Callable[[int], None] | None = None
    max_worker_memory: int | str | None = "auto"


def default_worker_memory(workers: int, total_bytes: int | None = None) -> int:
    """The default ``max_worker_memory``: half the machine's memory shared by the workers, and
    at least 1 GiB: a worker that grows without bound is recycled long before the machine
    swaps or the OOM killer picks a process (maybe the trainer)."""
    if total_bytes is None:
        import psutil

        total_bytes = psutil.virtual_memory().total
    return max(2**30, total_bytes // (2 * max(1, workers)))


def default_workers() -> int:
    """The pool size for this machine: :func:`workers_for` its usable cores and available memory."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    import psutil

    return workers_for(cores, psutil.virtual_memory().available)


def workers_for(cores: int, available_bytes: int) -> int:
    """75% of ``cores`` (rounded, at least 1); at most 2 with less than 4 GiB available."""
    workers = max(1, int(0.75 * cores + 0.5))
    return min(workers, 2) if available_bytes < _LOW_MEMORY else workers


def _check_picklable(obj: Any, argument: str) -> None:
    exc = pickle_error(obj)
    if isinstance(exc, InteractiveMainError):
        raise TypeError(f"{argument} {fn_name(obj)!r} cannot be sent to worker processes: {exc}") from exc
    if exc is not None:
        raise TypeError(
            f"{argument} {fn_name(obj)!r} cannot be sent to worker processes: it cannot be pickled "
            f"({type(exc).__name__}: {exc}). Define it at module level (not a lambda or a local "
            "function), or use executor='thread'"
        ) from exc


def process_map_spec(
    spec: MapSpec,
    worker_init: Callable[[int], None] | None,
    *,
    max_worker_memory: int | str | None = "auto",
    stall_after: float | str | None = "auto",
    on_stall: str = "warn",
) -> ProcessMapSpec:
    """Check at build time what the workers will need: a picklable ``fn`` and ``worker_init``;
    and the memory limit and stall options."""
    _check_picklable(spec.fn, "fn")
    if worker_init is not None:
        check_callable(worker_init, "worker_init")
        _check_picklable(worker_init, "worker_init")
    check_memory_limit(max_worker_memory)
    check_stall_options(stall_after, on_stall)
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(MapSpec)}
    fields.update(stall_after=stall_after, on_stall=on_stall)
    return ProcessMapSpec(**fields, worker_init=worker_init, max_worker_memory=max_worker_memory)


def check_memory_limit(max_worker_memory: Any) -> None:
    """``max_worker_memory``: bytes (an int >= 1), "auto" or None."""
    if max_worker_memory not in ("auto", None) and (
        isinstance(max_worker_memory, bool) or not isinstance(max_worker_memory, int) or max_worker_memory < 1
    ):
        raise ValueError(
            f"max_worker_memory must be a number of bytes >= 1, 'auto' or None, got {max_worker_memory!r}"
        )


class ProcessExecutor:
    """Submits a run's chunks to the stage's pool; the pool outlives the run."""

    kind = "process"
    target_task_s = TARGET_TASK_S
    coalesce = True  # the map stage joins waiting blocks into chunks of ~target_task_s
    runner = "a worker process"  # what died, in a WorkerCrashError
    # the Runtime's key of the stage's pool (its work is fixed when it starts): a pool of
    # other work for the same stage (stream fusion's shard tasks) has a key of its own
    pool_key = "process-pool"
    tasks_per_worker = TASKS_PER_WORKER  # held by each worker: the running one and those queued
    spread = False  # tasks go to the workers holding the fewest (ProcessPool's spread)

    def __init__(self, spec: MapSpec, runtime: Any) -> None:
        self._spec = spec
        self._runtime = runtime
        self.workers = spec.concurrency or default_workers()
        self.in_flight = self.workers * (1 + QUEUED_PER_WORKER)
        self._pool: ProcessPool | None = None

    def pool_for(self, work: Callable[[list[Any]], Any]) -> ProcessPool:
        """The stage's pool, running ``work``: started at the first call (a Loader keeps it)."""
        return self._pool_for(work)

    def _pool_for(self, work: Callable[[list[Any]], Any]) -> ProcessPool:
        if self._pool is None:

            def start() -> ProcessPool:
                init = getattr(self._spec, "worker_init", None)
                timeout = self._spec.timeout
                start_timeout = None if timeout is None else max(START_TIMEOUT_S, timeout)
                memory = getattr(self._spec, "max_worker_memory", "auto")
                if memory == "auto":
                    memory = default_worker_memory(self.workers)
                batches = self._spec.rewrite.on_batches  # whole batches: used and dropped as a unit
                return ProcessPool(
                    work,
                    workers=self.workers,
                    worker_init=init,
                    name=self._spec.name,
                    start_timeout=start_timeout,
                    shm_min_bytes=shm.BATCH_SHM_MIN_BYTES if batches else shm.SHM_MIN_BYTES,
                    stall_after=getattr(self._spec, "stall_after", "auto"),
                    on_stall=getattr(self._spec, "on_stall", "warn"),
                    max_memory=memory,  # type: ignore[arg-type]
                    tasks_per_worker=self.tasks_per_worker,
                    spread=self.spread,
                )

            if self._runtime is None:  # no Loader to own it: this executor does
                self._pool = start()
            else:
                # a pool broken in an earlier epoch (its workers could not start) is replaced
                key = f"{self.pool_key}:{self._spec.name}"
                self._pool = self._runtime.resource(key, start, usable=lambda pool: pool.broken is None)
        return self._pool

    @property
    def pool(self) -> ProcessPool | None:
        return self._pool

    async def run(self, work: Callable[..., Any], values: list[Any], timeout: float | None) -> ChunkResult:
        pool = self._pool_for(work)
        try:
            payload = wire.pack(values)
        except Exception:  # a value that cannot be pickled fails alone, as its sample's error
            return await self._run_picklable(work, values, timeout)
        outcome = await _submit(pool, payload, timeout, len(values))
        if outcome.kind == "crash":
            return await self._redo(pool, values, timeout, outcome.value)
        if outcome.kind == "undecodable":
            return await self._each_alone(work, values, timeout, outcome.value)
        return _unpack(outcome, 0)

    async def _each_alone(
        self, work: Callable[..., Any], values: list[Any], timeout: float | None, error: BaseException
    ) -> ChunkResult:
        """A chunk the worker could not unpickle: each value alone, so only those it cannot
        unpickle fail, each as its sample's error."""
        if len(values) == 1:
            return _undecodable(error)
        parts = await asyncio.gather(
            *(self.run(work, [value], timeout) for value in values), return_exceptions=True
        )
        results: list[Any] = []
        failures: list[tuple[int, BaseException]] = []
        busy = 0.0
        for index, part in enumerate(parts):
            if isinstance(part, ChunkTimeout):
                raise ChunkTimeout(index)
            if isinstance(part, BaseException):
                raise part
            one, one_failures, one_busy = part
            results.append(one[0])
            failures.extend((index, exc) for _, exc in one_failures)
            busy += one_busy
        return results, failures, busy

    async def _run_picklable(
        self, work: Callable[..., Any], values: list[Any], timeout: float | None
    ) -> ChunkResult:
        """Run the values that can be pickled; each other one is a failure of its own index
        (for a fused batch, named by the key of the member that cannot be pickled)."""
        unpicklable = {i: error for i, value in enumerate(values) if (error := self._pickle_error(value))}
        sendable = [i for i in range(len(values)) if i not in unpicklable]
        results: list[Any] = [FAILED] * len(values)
        failures: list[tuple[int, BaseException]] = list(unpicklable.items())
        busy = 0.0
        if sendable:
            if len(sendable) == len(values):
                raise RuntimeError(
                    f"stage {self._spec.name!r}: the chunk could not be pickled, each value could"
                )
            try:
                some, some_failures, busy = await self.run(work, [values[i] for i in sendable], timeout)
            except ChunkTimeout as timed_out:
                raise ChunkTimeout(sendable[timed_out.index]) from None
            for j, result in enumerate(some):
                results[sendable[j]] = result
            failures.extend((sendable[j], exc) for j, exc in some_failures)
        failures.sort(key=lambda failure: failure[0])
        return results, failures, busy

    def _pickle_error(self, value: Any) -> BaseException | None:
        from aioloader._run.fusion import MapThenCollate  # here: it imports torch (collate)

        if isinstance(self._spec.fn, MapThenCollate):  # (keys, members, ...): name the member
            keys, members, *_ = value
            for key, member in zip(keys, members, strict=True):
                if (error := self._pickle_error_of(member)) is not None:
                    return annotate(error, self._spec.name, key)
            return None
        return self._pickle_error_of(value)

    @staticmethod
    def _pickle_error_of(value: Any) -> BaseException | None:
        try:
            wire.pack([value])
        except Exception as exc:
            error = TypeError(
                f"the sample cannot be sent to a worker process: it cannot be pickled ({type(exc).__name__}: {exc})"
            )
            error.__cause__ = exc
            return error
        return None

    async def _redo(
        self, pool: ProcessPool, values: list[Any], timeout: float | None, detail: str
    ) -> ChunkResult:
        from aioloader._run.fusion import MapThenCollate  # here: it imports torch (collate)

        fused = isinstance(self._spec.fn, MapThenCollate)
        redo = self._redo_members if fused else _redo_one
        outcomes = await asyncio.gather(*(redo(pool, value, timeout, detail) for value in values))
        results: list[Any] = []
        failures: list[tuple[int, BaseException]] = []
        busy = 0.0
        for index, outcome in enumerate(outcomes):
            if outcome.kind == "crash":
                results.append(FAILED)
                failures.append((index, self._crash_error(outcome.value)))
                continue
            one, one_failures, one_busy = _unpack(outcome, index)
            results.append(one[0])
            failures.extend((index, exc) for _, exc in one_failures)
            busy += one_busy
        return results, failures, busy

    async def _redo_members(
        self, pool: ProcessPool, batch: tuple[list[Any], list[Any]], timeout: float | None, detail: str
    ) -> Outcome:
        """A fused stage's batch from a task whose worker died: the whole batch again, as it
        ran; if its worker dies again, each member alone (so each sample has its own attempts,
        as unfused), then the collate here."""
        again = await _call(pool, [batch], timeout)
        if again.kind != "crash":
            return again
        keys, members, *_ = batch
        work = self._spec.fn
        outcomes = await asyncio.gather(
            *(
                _redo_one(pool, (keys[j : j + 1], [m], True), timeout, again.value)
                for j, m in enumerate(members)
            )
        )
        mapped: list[Any] = []
        busy = 0.0
        for key, outcome in zip(keys, outcomes, strict=True):
            if outcome.kind == "crash":
                # its batch ran twice, then it ran alone MAX_ATTEMPTS - 1 times
                error = annotate(
                    self._crash_error(outcome.value, key, MAX_ATTEMPTS + 1), self._spec.name, key
                )
                return Outcome("ok", ([FAILED], [(0, error)], busy))
            if outcome.kind != "ok":  # an error or a timeout: the caller raises it
                return outcome
            results, failures, one_busy = outcome.value
            busy += one_busy
            if failures:
                return Outcome("ok", ([FAILED], [(0, failures[0][1])], busy))
            mapped.extend(results[0])
        try:
            return Outcome("ok", ([work.collate_named(mapped, keys)], [], busy))
        except Exception as exc:
            return Outcome("ok", ([FAILED], [(0, exc)], busy))

    def _crash_error(self, detail: str, key: Any = None, times: int = MAX_ATTEMPTS) -> WorkerCrashError:
        return WorkerCrashError(
            f"stage {self._spec.name!r}: {self.runner} died each of the {times} times it "
            f"ran this sample (last: {detail}); giving up on it",
            stage=self._spec.name,
            key=key,
        )

    def close(self) -> None:
        """End of a run: the pool stays (the Runtime closes it) unless this executor owns it."""
        if self._runtime is None and self._pool is not None:
            self._pool.close()
            self._pool = None


async def _call(pool: ProcessPool, values: list[Any], timeout: float | None) -> Outcome:
    return await _submit(pool, wire.pack(values), timeout, len(values))


async def _submit(pool: ProcessPool, payload: wire.Payload, timeout: float | None, count: int) -> Outcome:
    future = pool.submit(payload, None if timeout is None else timeout * count, label=CHUNK_KEYS.get())
    return await asyncio.wrap_future(future)


async def _redo_one(pool: ProcessPool, value: Any, timeout: float | None, detail: str) -> Outcome:
    for _ in range(MAX_ATTEMPTS - 1):
        outcome = await _call(pool, [value], timeout)
        if outcome.kind != "crash":
            return outcome
        detail = outcome.value
    return Outcome("crash", detail)


def _unpack(outcome: Outcome, index: int) -> ChunkResult:
    if outcome.kind == "ok":
        results, failures, busy = outcome.value
        if isinstance(results, list):
            # the outcome may outlive the chunk (a finished future's result): its list must not
            # keep the results alive after the consumer dropped them
            results, taken = list(results), results
            taken.clear()
        return results, failures, busy
    if outcome.kind == "timeout":
        raise ChunkTimeout(index)
    if outcome.kind == "undecodable":  # one value (a redo runs them alone): its own failure
        return _undecodable(outcome.value)
    if isinstance(outcome.value, StageStalledError):  # given up: its keys fail under on_error
        raise ChunkStalled(str(outcome.value))
    raise outcome.value


def _undecodable(error: BaseException) -> ChunkResult:
    """The result of one value a worker could not unpickle: that sample's failure."""
    failure = TypeError(
        f"the sample cannot be unpickled in a worker process ({type(error).__name__}: {error}): "
        "what it holds must be importable there, defined at the top level of a module "
        "(not under `if __name__ == '__main__':`)"
    )
    failure.__cause__ = error
    return [FAILED], [(0, failure)], 0.0


def make_process_executor(spec: MapSpec, runtime: Any) -> ProcessExecutor:
    """The factory registered for ``executor="process"``: ``factory(spec, runtime)``."""
    return ProcessExecutor(spec, runtime)
