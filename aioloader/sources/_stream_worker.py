"""A streamed shard read and mapped in a pool worker: stream-shard read fusion's worker side.

``Loader.from_source(WebDataset(urls)).map(decode, executor="process")`` over shards without
an index would have the parent download and parse each tar and send every sample's bytes to a
worker. Fused (:mod:`aioloader._run.stages.shard_map`), a task is one shard (from a resume
point's sample on): the worker streams it itself through the source's own
:meth:`~aioloader.sources.WebDataset.stream` (ranged reads in flight, the local shard cache,
``on_error``), runs ``fn`` on each sample as it is parsed, and sends back the results in parts
of a block's samples as they are done (the pool's early parts), with their indices, ``fn``'s
failures and the corrupt members it skipped. The shards' bytes never enter the parent.

A worker on a shard other than the one the parent hands on now waits before its next sample
while the parent holds its bound of results (:mod:`aioloader._run.held_gate`, named by the
task); its reads in flight stay within its read budget meanwhile.

The reads run on an event loop of the worker's own thread, made at its first task with the
store client (its connection pool) and kept for the worker's life (both closed when it exits):
the loop turns between samples (every few ms), so the reads in flight (this shard's next parts, the
next task's first ones) progress between calls of ``fn``. A loop in a thread of its own was
slower: with a cheap ``fn`` (150 KB arrays) the two threads passed the GIL back and forth, at
half the samples/s of the unfused stream.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from time import perf_counter, thread_time
from typing import Any

from aioloader._run.block import Block
from aioloader._run.bridge import block_nbytes
from aioloader._run.executors import one_intra_op_thread
from aioloader._run.held_gate import GateView
from aioloader.io.store import ObjectStore
from aioloader.workers._child import _portable

__all__ = ["SampleChunk", "ShardOutput", "ShardStreamWork"]

_TAKE = 32  # samples taken from the stream at once (a part usually holds several)
# a worker reads one shard at a time: parts this small keep several connections busy on it
# (one 50 MB/s connection took ~90 ms for the rest of a 5 MB shard, the decode waiting)
WORKER_PART = 1 << 20
QUEUED = 3  # shard tasks queued behind a worker's running one (read ahead as they come)
_TURN_S = 0.002  # the loop turns between samples at most this often (each turn polls the sockets)
_WAIT_S = 0.002  # how often a worker held back by the parent's bound looks again

# shard, skip, size, every, and the run's gate: its name, slots and this task's slot (or None)
Task = tuple[int, int, "int | None", int, "tuple[str, int, int] | None"]


@dataclass(slots=True)
class ShardOutput:
    """What a worker sends back for one shard: ``fn``'s results of the samples at ``indices``
    (None where ``fn`` failed, ``failures`` says why, by position in ``indices``), the members
    skipped under ``on_error="skip"`` (``reports``: key, error), the error that ended the shard
    (raised by the parent after its samples), and the bytes the worker read for it."""

    indices: list[int] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    failures: list[tuple[int, BaseException]] = field(default_factory=list)
    reports: list[tuple[Any, BaseException]] = field(default_factory=list)
    error: BaseException | None = None
    bytes_read: int = 0
    next_index: int = 0  # the shard's samples before this index have been read
    nbytes: int = 0  # the results' bytes, as the parent counts them for its bound
    worker: int = 0  # the pid of the worker that read and mapped them
    fn_s: float = 0.0  # seconds ``fn`` took on them
    fn_times: list[float] | None = None  # each sample's CPU seconds in ``fn`` (a chunk the parent read)


@dataclass(slots=True)
class SampleChunk:
    """A task of samples the parent read (a shard it streams itself): ``fn`` on each."""

    indices: list[int]
    samples: list[Any]


class _WorkerLoop:
    """This worker's event loop for shard reads (run by the worker's thread while a task
    reads) and the store on it."""

    def __init__(self, make_store: Callable[[], ObjectStore]) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = make_store()
        atexit.register(self.close)

    def call(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if self.loop.is_closed() or self.loop.is_running():
            return
        try:
            self.call(self.store.aclose())
        finally:
            self.loop.close()


async def _close(opened: _Open) -> None:
    opened.first.cancel()  # its read of the first samples runs the stream: stopped first
    await asyncio.gather(opened.first, return_exceptions=True)
    await opened.stream.aclose()


async def _take(samples: AsyncIterator[Any], most: int) -> list[Any]:
    taken: list[Any] = []
    async for item in samples:
        taken.append(item)
        if len(taken) >= most:
            break
    return taken


class _Open:
    """A shard's stream started in this worker: its generator, the members it skipped, and
    the read of its first samples (a task on the worker's loop, started ahead of the shard's
    task by :meth:`ShardStreamWork.look_ahead`)."""

    def __init__(self, stream: AsyncIterator[Any], reports: list[tuple[Any, BaseException]], first: Any) -> None:
        self.stream, self.reports, self.first = stream, reports, first
        self.sent = 0  # reports handed on with the parts sent so far


class ShardStreamWork:
    """The pool's work for fused shard tasks: ``[(shard, skip, size, every, gate)]`` ->
    ``[ShardOutput]``, a part of ``every`` samples sent back as soon as it is done.

    ``dataset``: a :class:`~aioloader.sources.WebDataset` (streamed); ``fn``: the map's
    function. ``size`` is the shard's size when the parent looked it up (None: looked up here);
    ``gate``: the run's bound on results held by the parent (None: none).
    It looks at the task queued behind the running one as soon as it is in the pipe
    (:meth:`look_ahead`): that shard's reads begin then, so its first bytes are here when
    its turn comes.
    """

    def __init__(self, dataset: Any, fn: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.fn = fn
        self._io: _WorkerLoop | None = None
        self._open: dict[Task, _Open] = {}
        self._gate: GateView | None = None
        self._send: Callable[[Any], None] | None = None
        self._peek: Callable[[], Any] | None = None
        self._reported = 0  # the store's bytes read, up to the last output's end

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "fn": self.fn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["dataset"], state["fn"])  # type: ignore[misc]

    def __call__(self, values: list[Task | SampleChunk]) -> tuple[list[ShardOutput], list[Any], float]:
        started = perf_counter()
        one_intra_op_thread()
        outputs = [self._apply(v) if isinstance(v, SampleChunk) else self._shard(v) for v in values]
        return outputs, [], perf_counter() - started

    def _apply(self, chunk: SampleChunk) -> ShardOutput:
        """``fn`` on the samples of ``chunk``, each one's CPU time noted (the parent decides
        who reads from the first chunk's)."""
        out = ShardOutput(indices=list(chunk.indices), fn_times=[], worker=os.getpid())
        for at, sample in enumerate(chunk.samples):
            began, cpu = perf_counter(), thread_time()
            try:
                out.results.append(self.fn(sample))
            except Exception as exc:
                out.results.append(None)
                out.failures.append((at, _portable(exc)))
            out.fn_times.append(thread_time() - cpu)  # CPU: a busy machine's waits left out
            out.fn_s += perf_counter() - began
        out.next_index = chunk.indices[-1] + 1 if chunk.indices else 0
        out.nbytes = block_nbytes(Block(out.indices, out.indices, out.results))
        return out

    def send_parts(self, send: Callable[[Any], None]) -> None:
        """How the running task sends a part of its result early (set by the worker)."""
        self._send = send

    def look_ahead(self, peek: Callable[[], Any]) -> None:
        """How the running task sees the task queued behind it (set by the worker)."""
        self._peek = peek

    def _look(self) -> None:
        """Start reading the shards of the tasks queued behind the running one, once they are
        in the pipe: their first bytes are here when their turn comes."""
        peeked = self._peek() if self._peek is not None else ()
        queued = [value for values in peeked for value in values if not isinstance(value, SampleChunk)]
        for value in queued:
            if value not in self._open:
                self._open[value] = self._start(value)
        for value in [v for v in self._open if v not in queued]:  # a task given to another worker
            self._io_loop().call(_close(self._open.pop(value)))

    def _io_loop(self) -> _WorkerLoop:
        if self._io is None:
            self.dataset = copy.copy(self.dataset)
            self.dataset.part_size = min(self.dataset.part_size, WORKER_PART)
            # the running shard and the queued ones share the read budget
            self.dataset.read_budget = max(self.dataset.part_size, self.dataset.read_budget // (1 + QUEUED))
            self._io = _WorkerLoop(self.dataset._store)
        return self._io

    def _start(self, value: Task) -> _Open:
        io = self._io_loop()
        shard, skip, size, *_ = value
        reports: list[tuple[Any, BaseException]] = []

        def report(key: Any, exc: BaseException) -> None:
            reports.append((key, exc))

        stream = self.dataset.stream([shard], skip=skip, report=report, store=io.store, sizes=[size])
        first = io.loop.create_task(_take(stream, _TAKE))  # runs while the loop turns
        return _Open(stream, reports, first)

    def _finish(self, out: ShardOutput, opened: _Open, reported: int, gate: GateView | None, slot: int) -> int:
        """``out`` made ready to travel: the members skipped since the last part, the bytes
        read, its results' bytes (counted at the gate); returns the reports handed on so far."""
        io = self._io_loop()
        out.worker = os.getpid()
        out.nbytes = block_nbytes(Block(out.indices, out.indices, out.results))
        if gate is not None:
            gate.sent(slot, out.nbytes)
        out.reports = [(key, _portable(exc)) for key, exc in opened.reports[reported:]]
        out.bytes_read, self._reported = io.store.bytes_read - self._reported, io.store.bytes_read
        return reported + len(out.reports)

    def _gate_of(self, gate: tuple[str, int, int] | None) -> GateView | None:
        """The run's gate (one mapping kept at a time: a new run names a new one)."""
        name = None if gate is None else gate[0]
        if self._gate is not None and self._gate.name != name:
            self._gate.close()
            self._gate = None
        if self._gate is None and gate is not None:
            self._gate = GateView(gate[0], gate[1])
        return self._gate

    def _shard(self, value: Task) -> ShardOutput:
        opened = self._open.pop(value, None) or self._start(value)
        self._look()
        io = self._io_loop()
        out = ShardOutput(next_index=value[1])
        gate = self._gate_of(value[4])
        slot = -1 if value[4] is None else value[4][2]
        try:
            out = io.call(self._map(opened, out, max(1, value[3]), value[0], gate, slot))
        finally:
            io.call(opened.stream.aclose())
        self._finish(out, opened, opened.sent, gate, slot)
        return out

    async def _map(
        self, opened: _Open, out: ShardOutput, every: int, shard: int, gate: GateView | None, slot: int
    ) -> ShardOutput:
        """``fn`` on the shard's samples as they are parsed, the loop turning after each; a
        part of ``every`` samples sent as soon as it is done; the rest returned. Before each
        sample, it waits while ``gate`` holds this shard back."""
        pending: Any = opened.first
        turn_at = perf_counter() + _TURN_S
        while True:
            try:
                taken = await self._taken(pending if pending is not None else _take(opened.stream, _TAKE))
            except Exception as exc:  # a missing or corrupt shard: after its samples
                out.error = _portable(exc)
                return out
            pending = None
            if not taken:
                return out
            for _, index, sample in taken:
                while gate is not None and gate.waits(shard, slot):
                    await asyncio.sleep(_WAIT_S)  # the reads in flight go on meanwhile
                    turn_at = perf_counter() + _TURN_S
                out.indices.append(index)
                out.next_index = index + 1
                began = perf_counter()
                try:
                    out.results.append(self.fn(sample))
                except Exception as exc:
                    out.results.append(None)
                    out.failures.append((len(out.indices) - 1, _portable(exc)))
                out.fn_s += perf_counter() - began
                if len(out.indices) >= every and self._send is not None:
                    opened.sent = self._finish(out, opened, opened.sent, gate, slot)
                    self._send(out)
                    out = ShardOutput(next_index=out.next_index)
                if perf_counter() >= turn_at:  # the reads in flight take what has arrived
                    if len(self._open) < QUEUED:
                        self._look()
                    await asyncio.sleep(0)
                    turn_at = perf_counter() + _TURN_S

    async def _taken(self, taking: Any) -> list[Any]:
        """The samples ``taking`` takes, the pipe looked at while they are awaited (a task
        queued meanwhile starts its reads now, not after this shard)."""
        task = asyncio.ensure_future(taking)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_TURN_S)
                if done:
                    return task.result()
                if len(self._open) < QUEUED:
                    self._look()
        finally:
            if not task.done():  # (cancelled) its reads stop with it
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def __repr__(self) -> str:
        return f"ShardStreamWork({self.dataset.describe()}, {self.fn!r})"
