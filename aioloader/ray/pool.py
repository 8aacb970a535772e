"""A map stage's pool of Ray actors, with the process pool's interface and outcomes.

:meth:`ActorPool.submit` takes a chunk as :mod:`aioloader.workers.wire` packs it and returns a
``concurrent.futures.Future`` of an :class:`~aioloader.workers.pool.Outcome`, as
:meth:`aioloader.workers.pool.ProcessPool.submit` does, so the process executor's policy (redo
a dead worker's chunk item by item, find the values a worker cannot unpickle) applies unchanged.

Each slot holds one actor. A slot takes work once its actor answered ``ready()`` (``fn`` and
``worker_init`` are in place), and at most ``per_actor`` chunks at a time: two, so an actor
starts its next chunk without waiting for the driver; one under a ``timeout``, so a chunk's
deadline counts from when its actor starts it. Results come back through Ray's object store
and resolve the futures from Ray's own threads: the driver's event loop never blocks on Ray.
A chunk submitted with ``on_part`` (a fused shard stream's) is a Ray streaming call whose parts
a thread of the pool's reads as they come (one per such call, ended with it, joined by
``close``).

A chunk an actor has been running past the stall limit (``stall_after``, as the process pool's:
"auto" is 20 times the slowest chunk, at least 60 s) is reported once: a warning naming the
stage, the chunk's keys and the actor (its name, node and pid; not its Python stack, which Ray
does not give the driver for a running call). With ``on_stall="raise"`` the actor is then
killed and replaced and the chunk fails with :class:`~aioloader.errors.StageStalledError`.

An actor that dies (``ray.kill``, its node removed, its process killed, or ended by itself over
``max_memory``, see :mod:`aioloader.ray._actor`) fails the chunk it was running as a "crash";
the one queued behind it never started and goes back to the front of the queue, as in the
process pool. A chunk past its deadline is a "timeout" and its actor is killed (Ray cannot
stop a running call otherwise). Either way the slot gets a new actor. A pool whose actors fail to
start :data:`MAX_START_FAILURES` times in a row, or whose ``worker_init`` raised, is broken: every
chunk fails with that error. :meth:`ActorPool.close` kills every actor (never the cluster).
Actors are owned by the driver, not detached: when the trainer dies, Ray ends them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

import aioloader.workers.wire as wire
from aioloader._run.stall import describe_keys, describe_limit, stall_limit
from aioloader.errors import StageStalledError, WorkerCrashError
from aioloader.ray._actor import memory_note_key
from aioloader.workers.pool import Outcome

MAX_START_FAILURES = 3  # actors dying before they are ready, in a row: the pool is broken

log = logging.getLogger("aioloader")


class _Task:
    __slots__ = ("at", "buffers", "deadline", "future", "head", "label", "on_part", "sent", "stalled", "timeout")

    def __init__(
        self,
        payload: wire.Payload,
        timeout: float | None,
        label: Any = None,
        on_part: Callable[[Any], None] | None = None,
    ) -> None:
        import numpy as np

        self.head = payload.head
        # numpy views travel out of band through the object store, without a copy here
        self.buffers = [np.frombuffer(buffer, dtype=np.uint8) for buffer in payload.buffers]
        self.timeout = timeout
        self.deadline: float | None = None
        self.future: Future[Outcome] = Future()
        self.label = label  # what a stall report names (the chunk's keys)
        self.sent = 0.0  # when it was handed to its actor
        self.at: tuple[_Slot, int] | None = None  # (slot, generation) running it, until it ends
        self.stalled = False  # reported once
        self.on_part = on_part  # parts of the result sent early (a fused shard stream's)

    def finish(self, outcome: Outcome) -> bool:
        try:
            self.future.set_result(outcome)
        except InvalidStateError:  # cancelled (by its awaiter) or already finished
            return False
        return True


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.actor: Any = None
        self.name = ""
        self.generation = 0
        self.state = "starting"  # -> "ready"; "dead" (between a death and its replacement)
        self.node: str | None = None
        self.pid: int | None = None
        self.tasks: set[_Task] = set()
        self.busy_s = 0.0
        self.chunks = 0
        self.replaced = 0
        self.free_since = 0.0  # when its actor last finished a chunk (or became ready)


class ActorPool:
    """``actors`` Ray actors running ``work`` on chunks; closed by the Loader (or its executor)."""

    def __init__(
        self,
        work: Callable[[list[Any]], Any],
        *,
        actors: int,
        worker_init: Callable[[int], None] | None,
        name: str,
        options: dict[str, Any],
        per_actor: int,
        start_timeout: float | None,
        stall_after: float | str | None = None,
        on_stall: str = "warn",
        max_memory: int | None = None,
    ) -> None:
        import ray

        from aioloader.ray._actor import MapActor

        self._ray = ray
        self.name = name
        self._per_actor = per_actor
        self._start_timeout = start_timeout
        self._stall_after = stall_after
        self._on_stall = on_stall
        self._max_memory = max_memory
        self._slowest = 0.0  # the longest a chunk has run: the "auto" stall limit is 20x this
        self._bytes_per_s: float | None = None
        self._cost_per_item: float | None = None
        self._tag = f"aioloader:{name}:{uuid.uuid4().hex[:8]}"
        self._options = options
        self._actor_class = ray.remote(MapActor)
        self._shipped = ray.put((work, worker_init))  # fn and worker_init, once per pool
        self._lock = threading.RLock()
        self._pending: deque[_Task] = deque()
        self._closed = False
        self._broken: BaseException | None = None
        self._start_failures = 0
        self._wake = threading.Condition(self._lock)
        self._events: deque[Callable[[], None]] = deque()  # from Ray's threads, run by ours
        self._doomed: list[Any] = []  # actors to kill, by the pool's thread outside the lock
        self._to_start: list[tuple[_Slot, int]] = []  # slots whose actor that thread makes
        # what to check when: a task's end, or (slot, generation) for an actor's start
        self._deadlines: dict[Any, tuple[float, _Slot, int, _Task | None]] = {}
        self._readers: set[threading.Thread] = set()  # one per streaming call, until it ends
        self._slots = [_Slot(i) for i in range(actors)]
        # Ray's callbacks must not block or call into Ray: they hand their event to this thread
        self._thread = threading.Thread(target=self._serve, name=f"aioloader-ray-{name}", daemon=True)
        self._thread.start()
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)

    # -- public ---------------------------------------------------------------------------
    @property
    def broken(self) -> BaseException | None:
        return self._broken

    @property
    def bytes_per_s(self) -> float | None:
        """Result bytes an actor makes per second of work (None until a chunk answered)."""
        return self._bytes_per_s

    @property
    def cost_per_item(self) -> float | None:
        """An actor's busy seconds per item of a chunk, averaged over the chunks answered so
        far in any epoch (None until one answered)."""
        return self._cost_per_item

    def submit(
        self,
        payload: wire.Payload,
        timeout: float | None = None,
        label: Any = None,
        on_part: Callable[[Any], None] | None = None,
    ) -> Future[Outcome]:
        """Queue a chunk; ``timeout`` in seconds from the moment an actor is given it. ``label``:
        what a stall report names (the chunk's keys). ``on_part``: called with each part of
        the result the work sends early (``run_parts``, a Ray streaming call), from a thread
        of the pool's, never after the chunk has ended (a part still on its way when its
        actor died is dropped, so the chunk is redone from the last part delivered)."""
        task = _Task(payload, timeout, label, on_part)
        with self._lock:
            if self._closed:
                task.finish(Outcome("error", RuntimeError(f"the Ray actor pool of {self.name!r} is closed")))
            elif self._broken is not None:
                task.finish(Outcome("error", self._broken))
            else:
                self._pending.append(task)
                self._dispatch()
        return task.future

    def describe(self) -> list[dict[str, Any]]:
        """Each actor: its name, node, pid, state, busy seconds, chunks run, replacements."""
        with self._lock:
            return [
                {
                    "actor": slot.name,
                    "node": slot.node,
                    "pid": slot.pid,
                    "state": slot.state,
                    "busy_s": slot.busy_s,
                    "chunks": slot.chunks,
                    "replaced": slot.replaced,
                }
                for slot in self._slots
            ]

    def close(self) -> None:
        """Kill every actor and fail what is queued or running; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tasks = [*self._pending, *(t for slot in self._slots for t in slot.tasks)]
            self._pending.clear()
            actors = [slot.actor for slot in self._slots if slot.actor is not None and slot.state != "dead"]
            for slot in self._slots:
                slot.tasks.clear()
                slot.state = "dead"
            self._wake.notify_all()
        closed = RuntimeError(f"the Ray actor pool of {self.name!r} is closed")
        for task in tasks:
            task.finish(Outcome("error", closed))
        if self._ray.is_initialized():  # a user who shut Ray down first has ended them already
            for actor in actors:
                self._kill(actor)
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with self._lock:
            readers = list(self._readers)
        for reader in readers:  # their calls end with the killed actors
            reader.join(2.0)

    # -- actors (under the lock) ----------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        """Give the slot a new actor: made by the pool's thread, outside the lock (creating a
        named actor waits for the cluster's control store, which can take seconds while it
        declares a node dead)."""
        slot.generation += 1
        slot.state = "starting"
        slot.actor = slot.node = slot.pid = None
        slot.name = f"{self._tag}:{slot.index}:{slot.generation}"
        self._to_start.append((slot, slot.generation))
        if self._start_timeout is not None:
            self._watch(slot, slot.generation, time.monotonic() + self._start_timeout)
        self._wake.notify_all()

    def _create(self, slot: _Slot, generation: int) -> None:
        """The pool's thread, outside the lock: create the slot's actor and ask it ``ready()``."""
        actor = self._actor_class.options(name=slot.name, **self._options).remote(
            self._shipped, slot.index, self._max_memory
        )
        ready = actor.ready.remote()
        with self._lock:
            if self._closed or slot.generation != generation:
                self._doomed.append(actor)
                return
            slot.actor = actor
            self._when_done(ready, lambda done: self._on_ready(slot, generation, done))

    def _on_ready(self, slot: _Slot, generation: int, done: Future[Any]) -> None:
        with self._lock:
            self._deadlines.pop((slot, generation), None)
            if self._closed or slot.generation != generation or slot.state != "starting":
                return
            try:
                kind, value = done.result()
            except Exception as exc:  # it died before it was ready
                self._start_failed(
                    slot, f"actor {slot.name} died while starting ({type(exc).__name__}: {exc})"
                )
                return
            if kind == "init_error":
                self._doomed.append(slot.actor)
                self._break(value)
                return
            self._start_failures = 0
            slot.state = "ready"
            slot.free_since = time.monotonic()
            slot.node, slot.pid = value
            self._dispatch()

    def _start_failed(self, slot: _Slot, detail: str, *, kill: bool = True) -> None:
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            self._break(
                WorkerCrashError(
                    f"stage {self.name!r}: {self._start_failures} Ray actors in a row failed to start "
                    f"(last: {detail})",
                    stage=self.name,
                )
            )
            return
        self._replace(slot, kill=kill)

    def _replace(self, slot: _Slot, *, kill: bool = True, crashed: str | None = None) -> None:
        """The slot's actor is dead (``kill`` False) or must die, and a new actor starts in its
        place. ``crashed``: the actor died running a chunk, the first it was given (it runs
        them in order), which fails as a crash with that detail; the chunks queued behind it
        never started and go back to the front of the queue, as a dead worker's do. The kill
        is left to the pool's thread, outside the lock: ``ray.kill`` of an actor on a lost
        node can block for seconds."""
        old = slot.actor
        slot.state = "dead"
        slot.replaced += 1
        orphans = sorted(slot.tasks, key=lambda task: task.sent)
        slot.tasks = set()
        for task in orphans:  # now, not when (or if) Ray reports each of them
            self._deadlines.pop(task, None)
            task.at = None
        if crashed is not None and orphans:
            orphans.pop(0).finish(Outcome("crash", crashed))
        self._pending.extendleft(reversed(orphans))
        if kill and old is not None:
            self._doomed.append(old)
            self._wake.notify_all()
        if not self._closed and self._broken is None:
            self._spawn(slot)

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # already gone, or Ray itself is down: nothing is left to stop
            pass

    def _break(self, error: BaseException) -> None:
        self._broken = error
        tasks = list(self._pending)
        self._pending.clear()
        for task in tasks:
            task.finish(Outcome("error", error))

    # -- chunks (under the lock) ----------------------------------------------------------
    def _dispatch(self) -> None:
        for slot in self._slots:
            while self._pending and slot.state == "ready" and len(slot.tasks) < self._per_actor:
                task = self._pending.popleft()
                if task.future.done():  # cancelled while queued
                    continue
                self._start(slot, task)

    def _start(self, slot: _Slot, task: _Task) -> None:
        slot.tasks.add(task)
        task.sent = time.monotonic()
        task.at = (slot, slot.generation)
        generation = slot.generation
        if task.on_part is not None:
            stream = slot.actor.run_parts.options(num_returns="streaming").remote(task.head, task.buffers)
            self._read_parts(stream, slot, generation, task)
        else:
            ref = slot.actor.run.remote(task.head, task.buffers)
            self._when_done(ref, lambda done: self._on_done(slot, generation, task, done))
        if task.timeout is not None:
            task.deadline = time.monotonic() + task.timeout
            self._watch(slot, generation, task.deadline, task)

    def _on_done(self, slot: _Slot, generation: int, task: _Task, done: Future[Any]) -> None:
        with self._lock:
            if task.at != (slot, generation):  # ended by the pool already, or queued again
                return
            task.at = None
            slot.tasks.discard(task)
            self._deadlines.pop(task, None)
            if self._closed:
                return
            if slot.generation == generation:
                now = time.monotonic()
                self._slowest = max(self._slowest, now - max(task.sent, slot.free_since))
                slot.free_since = now
            try:
                kind, value = done.result()
            except self._ray.exceptions.RayError as exc:
                if isinstance(exc, self._lost) and slot.generation == generation and slot.state != "dead":
                    slot.tasks.add(task)  # the actor's first chunk is the one it died running
                    why = f"Ray actor {slot.name} died ({self._why(slot, exc)})"
                    self._replace(slot, kill=False, crashed=why)
                    self._dispatch()
                    return
                outcome = self._failure(exc)
            except Exception as exc:  # not Ray's (a cancelled future): the chunk's error
                outcome = Outcome("error", exc)
            else:
                if kind == "ok":
                    results, failures, busy, nbytes = value
                    value = (results, failures, busy)
                    slot.busy_s += busy
                    slot.chunks += 1
                    self._count_bytes(nbytes, busy)
                    self._count_cost(len(results), busy)
                outcome = Outcome(kind, value)
            task.finish(outcome)
            self._dispatch()

    @property
    def _lost(self) -> tuple[type[BaseException], ...]:
        """Ray's errors that mean a lost actor or object: the chunk crashed."""
        exceptions = self._ray.exceptions
        return (exceptions.RayActorError, exceptions.ObjectLostError, exceptions.NodeDiedError,
                exceptions.WorkerCrashedError, exceptions.LocalRayletDiedError)  # fmt: skip

    def _count_bytes(self, nbytes: int, busy: float) -> None:
        if busy <= 0:
            return
        rate = nbytes / busy
        previous = self._bytes_per_s
        self._bytes_per_s = rate if previous is None else 0.7 * previous + 0.3 * rate

    def _count_cost(self, items: int, busy: float) -> None:
        if items <= 0 or busy <= 0:
            return
        cost = busy / items
        previous = self._cost_per_item
        self._cost_per_item = cost if previous is None else 0.7 * previous + 0.3 * cost

    def _failure(self, exc: BaseException) -> Outcome:
        if isinstance(exc, self._lost):  # an actor replaced already (a late report of its death)
            return Outcome("crash", f"Ray actor died ({type(exc).__name__})")
        return Outcome("error", exc)

    def _why(self, slot: _Slot, exc: BaseException) -> str:
        """What a crash names: the memory limit when the actor ended itself over it (the note
        it left in the cluster's key-value store), else Ray's error."""
        if self._max_memory is not None:
            try:
                from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get

                note = _internal_kv_get(memory_note_key(slot.name))
                if note:
                    _internal_kv_del(memory_note_key(slot.name))
                    return note.decode()
            except Exception:  # the control store is unreachable: Ray's error says enough
                pass
        return type(exc).__name__

    # -- the pool's thread: Ray's completions and the deadlines ----------------------------
    def _when_done(self, ref: Any, handler: Callable[[Future[Any]], None]) -> None:
        def post(done: Future[Any]) -> None:
            with self._lock:
                self._events.append(lambda: handler(done))
                self._wake.notify_all()

        ref.future().add_done_callback(post)

    def _read_parts(self, stream: Any, slot: _Slot, generation: int, task: _Task) -> None:
        """A thread that reads a streaming call's parts as the actor yields them (Ray's
        callbacks must not block, this thread may), hands each to ``task.on_part`` while the
        task is still this actor's, and then the call's answer (or its error) to the pool's
        thread, as ``_when_done`` does."""

        def read() -> None:
            done: Future[Any] = Future()
            try:
                answer = None
                for ref in stream:
                    kind, value = self._ray.get(ref)
                    if kind != "part":
                        answer = (kind, value)
                        continue
                    with self._lock:  # not once the pool has ended the task (a crash redoes it)
                        if task.at == (slot, generation) and task.on_part is not None:
                            task.on_part(value)
                done.set_result(answer)
            except BaseException as exc:  # the actor died, or Ray is down: the pool decides
                done.set_exception(exc)
            with self._lock:
                self._readers.discard(threading.current_thread())
                self._events.append(lambda: self._on_done(slot, generation, task, done))
                self._wake.notify_all()

        reader = threading.Thread(target=read, name=f"aioloader-ray-parts-{self.name}", daemon=True)
        self._readers.add(reader)
        reader.start()

    def _watch(self, slot: _Slot, generation: int, deadline: float, task: _Task | None = None) -> None:
        """Check at ``deadline`` that the slot's actor started (``task`` None) or finished ``task``."""
        self._deadlines[task if task is not None else (slot, generation)] = (deadline, slot, generation, task)
        self._wake.notify_all()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not (
                    self._closed or self._events or self._doomed or self._to_start or self._due()
                    or self._stalls_due()
                ):  # fmt: skip
                    times = [d[0] for d in self._deadlines.values()] + [t for t, _, _ in self._stall_checks()]
                    soonest = min(times, default=None)
                    self._wake.wait(None if soonest is None else max(0.0, soonest - time.monotonic()))
                closed = self._closed
                if not closed:
                    while self._events:
                        self._events.popleft()()
                    for key in self._due():
                        _, slot, generation, task = self._deadlines.pop(key)
                        self._expire(slot, generation, task)
                    for slot, task in self._stalls_due():
                        self._stalled(slot, task)
                self._events.clear()
                doomed, self._doomed = self._doomed, []
                to_start, self._to_start = ([], []) if closed else (self._to_start, [])
            for actor in doomed:
                self._kill(actor)
            if closed:
                break
            for slot, generation in to_start:
                try:
                    self._create(slot, generation)
                except Exception as exc:  # Ray refused it (the cluster is gone, bad options)
                    with self._lock:
                        if slot.generation == generation:
                            self._start_failed(
                                slot, f"actor {slot.name} could not be created ({exc})", kill=False
                            )

    def _stall_checks(self) -> list[tuple[float, _Slot, _Task]]:
        """(when it stalls, slot, chunk) for the chunk each ready actor is running, if not yet
        reported: an actor runs its chunks one at a time, in the order it was given them."""
        limit = stall_limit(self._stall_after, self._slowest)
        if limit is None:
            return []
        checks = []
        for slot in self._slots:
            if slot.state != "ready" or not slot.tasks:
                continue
            head = min(slot.tasks, key=lambda task: task.sent)
            if not head.stalled:
                checks.append((max(head.sent, slot.free_since) + limit, slot, head))
        return checks

    def _stalls_due(self) -> list[tuple[_Slot, _Task]]:
        now = time.monotonic()
        return [(slot, task) for when, slot, task in self._stall_checks() if when <= now]

    def _stalled(self, slot: _Slot, task: _Task) -> None:
        """Report a chunk past the stall limit; under ``on_stall="raise"`` fail it and replace
        its actor (Ray cannot stop a running call otherwise)."""
        task.stalled = True
        seconds = time.monotonic() - max(task.sent, slot.free_since)
        keys = describe_keys(task.label) if task.label is not None else "?"
        report = (
            f"stage {self.name!r} made no progress for {seconds:.1f}s: Ray actor {slot.name} "
            f"(node {slot.node}, pid {slot.pid}) has been running keys {keys} for {seconds:.1f}s "
            f"(stall_after={describe_limit(self._stall_after, self._slowest)}); no Python stack: Ray "
            "does not give the driver the stack of an actor's running call"
        )
        log.warning("%s", report)
        if self._on_stall != "raise":
            return
        slot.tasks.discard(task)
        self._deadlines.pop(task, None)
        task.at = None
        key = task.label[0] if isinstance(task.label, list) and task.label else None
        task.finish(Outcome("error", StageStalledError(report, stage=self.name, key=key)))
        self._replace(slot)
        self._dispatch()

    def _due(self) -> list[Any]:
        now = time.monotonic()
        return [key for key, d in self._deadlines.items() if d[0] <= now]

    def _expire(self, slot: _Slot, generation: int, task: _Task | None) -> None:
        if slot.generation != generation or slot.state == "dead":
            return
        if task is None:  # the start deadline
            if slot.state == "starting":
                self._start_failed(slot, f"actor {slot.name} was not ready after {self._start_timeout}s")
            return
        if task not in slot.tasks:
            return
        slot.tasks.discard(task)
        task.at = None
        task.finish(Outcome("timeout"))
        self._replace(slot)
        self._dispatch()
