"""A persistent pool of worker processes, with crash and hang detection.

Workers are forked from this process where :func:`~aioloader.workers._spawn.fork_allowed` (no
CUDA context here), as torch DataLoader's are: ready in milliseconds, with the modules already
imported. A forked worker keeps none of this process's threads, file descriptors or event loop
and sees ``__main__`` as a spawned one would. Elsewhere they are fresh interpreters started
with ``subprocess`` (spawn semantics), which take seconds to import torch. No hidden helper
process (multiprocessing's resource tracker or forkserver) is involved. Each worker has a task
pipe, a result pipe and a lifeline pipe.

One I/O thread (``aioloader-pool-<stage>``) owns all pipe traffic: it hands queued tasks to the
workers, receives replies and maps their shared-memory segments, and resolves each task's
``concurrent.futures.Future`` with an :class:`Outcome`. A worker holds at most
:data:`TASKS_PER_WORKER` tasks: the one it runs and one waiting in its pipe, so it starts the next
without waiting for this thread (on 2 busy cores the thread's turn can come milliseconds late).
A task is queued ahead only when both fit in the pipe's buffer at once, so a send never blocks on
a busy worker (which could be blocked itself, sending a reply this thread has yet to read).
It also watches for stalls and memory. A task that runs past the pool's stall limit
(``stall_after``; by default 20 times the slowest task seen, at least
:data:`~aioloader._run.stall.STALL_MIN_S`) is reported once: a warning (logger ``aioloader``)
naming the stage, the task's keys, the worker's pid, state and memory, and its Python stack
(faulthandler in the worker, see :func:`~aioloader.workers._child.stack_path`); with
``on_stall="raise"`` the worker is then killed and the task fails with
:class:`~aioloader.errors.StageStalledError` (each of its keys, under the stage's ``on_error``).
A worker whose resident memory is over ``max_memory`` (checked every :data:`MEMORY_CHECK_S`
while it runs a task) is killed: its task ends as a crash that names the limit.
It also watches for deaths (end of file on a result pipe) and deadlines: a worker that dies or
runs past its task's deadline (it is killed) is reaped, its segments are unlinked and a
replacement is started in the same slot; the task it ran ends as a crash or a timeout, the one
waiting behind it goes back to the front of the queue (it never started). Policy (redo, retry,
skip) is not here: the caller decides from the outcome ("ok", "crash", "timeout", "error").

:meth:`ProcessPool.close` closes the lifelines (workers exit at once, even mid-task), kills any
worker still alive after a grace period, reaps them all and unlinks every segment of the pool.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import aioloader.workers._child as _child
import aioloader.workers.shm as shm
import aioloader.workers.wire as wire
from aioloader._run.stall import describe_keys, describe_limit, stall_limit
from aioloader.errors import StageStalledError, WorkerCrashError
from aioloader.workers._spawn import fork_allowed, fork_child, pipe_capacity, preparation_data, spawn_child

MAX_START_FAILURES = 3  # workers dying before they are ready, in a row: the pool is broken
TASKS_PER_WORKER = 2  # the running task and one waiting in the worker's pipe
_GRACE_S = 0.5  # at close, how long workers get to exit before SIGKILL
# One thread per worker for OpenMP/MKL (torch's intra-op pool), as torch DataLoader's workers:
# the workers are the parallelism, and several spinning OpenMP pools per core burn the CPU the
# work needs (JPEG decoded per batch in 2 workers: 4x the CPU time without this).
# worker_init may raise it again with torch.set_num_threads(n).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
MEMORY_CHECK_S = 0.2  # how often a busy worker's resident memory is read
_STACK_WAIT_S = 1.0  # how long a stalled worker gets to write its stack
_STACK_MAX_CHARS = 8000

log = logging.getLogger("aioloader")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a task ended: ``kind`` is "ok" (``value`` = the work's return), "crash" (``value``
    describes the death), "timeout", "error" (``value`` is the exception), or "undecodable"
    (the worker could not unpickle the values; ``value`` says why)."""

    kind: str
    value: Any = None


class _Task:
    __slots__ = ("begun", "deadline", "future", "label", "on_part", "payload", "stalled", "started", "timeout")

    # ``started``: handed to a worker at least once (its future is running); ``deadline`` and
    # ``begun``: set when the task is at the head of its worker's queue (the worker runs it).

    def __init__(
        self,
        payload: wire.Payload,
        timeout: float | None,
        label: Any = None,
        on_part: Callable[[Any], None] | None = None,
    ) -> None:
        self.payload = payload
        self.timeout = timeout
        self.label = label  # what a stall report names (the chunk's keys)
        self.on_part = on_part  # called (on the I/O thread) with each part the work sends early
        self.future: Future[Outcome] = Future()
        self.started = False
        self.deadline: float | None = None
        self.begun: float | None = None
        self.stalled = False  # reported once

    def finish(self, outcome: Outcome) -> None:
        try:
            self.future.set_result(outcome)
        except InvalidStateError:  # cancelled (by its awaiter) or already finished
            pass


class _Worker:
    """One child process and the parent's ends of its pipes; touched by the I/O thread only
    (``releases`` also by finalizers, from any thread: a deque is safe for that)."""

    def __init__(self, slot: int, spawn: int, proc: Any, tasks: Connection,
                 results: Connection, lifeline: int) -> None:  # fmt: skip
        self.slot = slot
        self.spawn = spawn
        self.proc = proc
        self.tasks = tasks
        self.results = results
        self.lifeline = lifeline
        self.state = "starting"  # -> "ready"; "dead"
        self.most = TASKS_PER_WORKER  # tasks it may hold: the running one and those in its pipe
        self.spawned_at = time.monotonic()
        self.queue: deque[_Task] = deque()  # sent, not answered; the head is running
        self.pipe_bytes = pipe_capacity(tasks.fileno())
        self.releases: deque[str] = deque()
        self.segments: set[str] = set()
        self.prefix = ""  # its segments' (and stack file's) name prefix
        self._process: Any = None  # psutil.Process, made on first use

    def rss(self) -> int | None:
        """Resident memory in bytes (None when it cannot be read: the worker has gone)."""
        import psutil

        try:
            if self._process is None:
                self._process = psutil.Process(self.proc.pid)
            return int(self._process.memory_info().rss)
        except (psutil.Error, OSError):
            return None

    def describe_state(self) -> str:
        """The worker's process state and memory, as a stall report says them."""
        import psutil

        try:
            process = psutil.Process(self.proc.pid)
            status = process.status()
            rss = process.memory_info().rss
        except (psutil.Error, OSError):
            return "gone"
        return f"{status}, RSS {rss / 2**20:.0f} MiB"

    @property
    def task(self) -> _Task | None:
        """The task the worker is running (None when idle)."""
        return self.queue[0] if self.queue else None

    def can_take(self, task: _Task) -> bool:
        """Whether ``task`` can be sent now without the send blocking: an idle worker takes
        anything (it is reading its pipe); a busy one one more task, when both fit the pipe."""
        if self.state != "ready" or len(self.queue) >= self.most:
            return False
        if not self.queue:
            return True
        queued = sum(t.payload.pipe_bytes for t in self.queue)
        return queued + task.payload.pipe_bytes <= self.pipe_bytes

    def release(self, name: str) -> None:
        if self.state != "dead":
            self.releases.append(name)

    def close_pipes(self) -> None:
        for conn in (self.tasks, self.results):
            conn.close()
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1


def _describe_exit(pid: int, returncode: int | None) -> str:
    if returncode is None:
        return f"worker pid {pid} stopped answering"
    if returncode < 0:
        try:
            return f"worker pid {pid} was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"worker pid {pid} was killed by signal {-returncode}"
    return f"worker pid {pid} exited with code {returncode}"


class ProcessPool:
    """``workers`` processes running ``work(values)`` (a picklable chunk function)."""

    def __init__(
        self,
        work: Callable[[list[Any]], Any],
        *,
        workers: int,
        worker_init: Callable[[int], None] | None = None,
        name: str = "map",
        start_timeout: float | None = None,
        shm_min_bytes: int = shm.SHM_MIN_BYTES,
        stall_after: float | str | None = "auto",
        on_stall: str = "warn",
        max_memory: int | None = None,
        tasks_per_worker: int = TASKS_PER_WORKER,
        spread: bool = False,
    ) -> None:
        """``start_timeout``: seconds a worker may take to become ready (import the function,
        run ``worker_init``); past it the worker is killed and the pool fails with
        :class:`WorkerCrashError` (None: no limit). ``shm_min_bytes``: the smallest array of a
        result that comes back through shared memory (see :mod:`aioloader.workers.shm`).
        ``tasks_per_worker``: the tasks a worker holds, its running one included (more for a
        work that looks at the tasks queued behind it, to read ahead). ``spread``: a task goes
        only to a worker holding the fewest tasks of all live workers, a starting one included
        (whole shards as tasks: the first worker ready would otherwise take
        ``tasks_per_worker`` of them while the others start, and the run would end on its
        last ones)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if _child.BOOTSTRAPPING:
            raise RuntimeError(
                "a process pool was started while a worker process imported the main module: "
                "guard the script's entry point with `if __name__ == '__main__':` (as for "
                "multiprocessing's spawn start method)"
            )
        if tasks_per_worker < 1:
            raise ValueError(f"tasks_per_worker must be >= 1, got {tasks_per_worker}")
        self.size = workers
        self._tasks_per_worker = tasks_per_worker
        self._spread = spread
        self.name = name
        self._stall_after = stall_after
        self._on_stall = on_stall
        self._max_memory = max_memory
        self._slowest = 0.0  # the longest task so far, seconds
        self._next_memory_check = 0.0
        self._stalls: deque[tuple[_Worker, _Task, str]] = deque()  # reported, to fail ("raise")
        self._reporters: list[threading.Thread] = []
        self._start_timeout = start_timeout
        self._shm_min_bytes = shm_min_bytes
        # pickled once, before any worker starts: a failure leaves no child behind, and a
        # replacement worker costs no new pickle of the work (which may hold a dataset's paths)
        self._work_pickle = pickle.dumps((work, worker_init))
        self._prefix = f"aioloader_{os.getpid()}_{secrets.token_hex(3)}_"
        self._mappings = shm.Mappings()  # the results' segments, mapped once each
        self._prep = preparation_data(f"aioloader-{name}")
        self._lock = threading.Lock()
        self._pending: deque[_Task] = deque()
        self._workers: dict[int, _Worker] = {}
        self._spawns = 0
        self._start_failures = 0
        self._broken: BaseException | None = None
        self._closed = False
        self._feeders: list[threading.Thread] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        for slot in range(workers):
            self._spawn(slot)
        self._thread = threading.Thread(target=self._serve, name=f"aioloader-pool-{name}", daemon=True)
        self._thread.start()

    # -- any thread --------------------------------------------------------------------------
    @property
    def broken(self) -> BaseException | None:
        """Why the pool cannot run tasks any more (its workers could not start), or None."""
        return self._broken

    @property
    def pids(self) -> list[int]:
        """Pids of the live workers (for tests and diagnostics)."""
        return sorted(w.proc.pid for w in list(self._workers.values()) if w.state != "dead")

    def submit(
        self,
        payload: wire.Payload,
        timeout: float | None = None,
        label: Any = None,
        *,
        on_part: Callable[[Any], None] | None = None,
    ) -> Future[Outcome]:
        """Queue a task (``payload``: the list of values, :func:`wire.pack`); ``timeout`` in seconds from
        the moment a worker starts it; ``label``: what a stall report names (its keys);
        ``on_part``: called on the pool's I/O thread with each part of the result the work
        sends before it ends (a work with ``send_parts``, :mod:`aioloader.workers._child`)."""
        task = _Task(payload, timeout, label, on_part)
        with self._lock:
            if self._closed:
                task.finish(Outcome("error", RuntimeError(f"the process pool of {self.name!r} is closed")))
                return task.future
            if self._broken is not None:
                task.finish(Outcome("error", self._broken))
                return task.future
            self._pending.append(task)
        self._wake()
        return task.future

    def close(self) -> None:
        """Stop every worker and unlink every segment; idempotent, bounded by ~1 s."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
        workers = list(self._workers.values())
        self._workers.clear()
        for worker in workers:
            if worker.lifeline >= 0:
                os.close(worker.lifeline)  # the child exits on end of file, even mid-task
                worker.lifeline = -1
        deadline = time.monotonic() + _GRACE_S
        for worker in workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
        closed = Outcome("error", RuntimeError(f"the process pool of {self.name!r} is closed"))
        for worker in workers:
            worker.state = "dead"
            worker.close_pipes()
            for task in worker.queue:
                task.finish(closed)
            worker.queue.clear()
            for segment in worker.segments:
                shm.unlink(segment)
            _remove_stack_file(worker)
        for task in pending:
            task.future.cancel() or task.finish(closed)
        self._mappings.clear()
        for feeder in self._feeders:
            feeder.join(1.0)
        for reporter in self._reporters:
            reporter.join(_STACK_WAIT_S)
        with self._lock:  # no wake-up may write to these numbers once they are reused
            wake_fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in wake_fds:
            os.close(fd)
        shm.sweep(self._prefix)

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w < 0:  # closed
                return
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):  # full: a wake-up is pending anyway
                pass

    # -- I/O thread ----------------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        spawn = self._spawns
        self._spawns += 1
        prep: dict[str, Any] | None = None
        if fork_allowed():  # ~10-50 ms, where a fresh interpreter takes seconds to import torch
            proc, tasks, results, life_w = fork_child(_child.forked_main, WORKER_ENV)
        else:
            proc, tasks, results, life_w = spawn_child("aioloader.workers._child", WORKER_ENV)
            prep = self._prep
        worker = _Worker(slot, spawn, proc, tasks, results, life_w)
        worker.most = self._tasks_per_worker
        worker.prefix = f"{self._prefix}{spawn}_"
        self._workers[slot] = worker
        init = pickle.dumps((self._work_pickle, slot, f"{self._prefix}{spawn}_", self._shm_min_bytes))
        # The child reads this after importing; a thread keeps a large payload from blocking us.
        feeder = threading.Thread(
            target=_feed, args=(proc, tasks, prep, init), name="aioloader-pool-feed", daemon=True
        )
        self._feeders = [f for f in self._feeders if f.is_alive()]
        self._feeders.append(feeder)
        feeder.start()

    def _serve(self) -> None:
        try:
            while not self._closed:
                live = {w.results: w for w in self._workers.values() if w.state != "dead"}
                ready = wait([self._wake_r, *live], self._until_deadline())
                for obj in ready:
                    if obj == self._wake_r:
                        os.read(self._wake_r, 4096)
                    elif not self._closed and live[obj].state != "dead":  # type: ignore[index]
                        self._receive(live[obj])  # type: ignore[index]
                if self._closed:
                    break
                self._expire()
                self._watch()
                self._dispatch()
        except BaseException as exc:  # a bug here must fail the tasks, never hang them
            self._break(exc)

    def _stall_limit(self) -> float | None:
        """Seconds a task may run before it is reported as stalled (None: never)."""
        return stall_limit(self._stall_after, self._slowest)

    def _until_deadline(self) -> float | None:
        deadlines = [t.deadline for w in self._workers.values() if (t := w.task) and t.deadline]
        limit = self._stall_limit()
        busy = [t for w in self._workers.values() if (t := w.task) and t.begun is not None]
        if limit is not None:
            deadlines += [t.begun + limit for t in busy if not t.stalled]  # type: ignore[operator]
        if self._max_memory is not None and busy:
            deadlines.append(self._next_memory_check)
        if self._stalls:
            deadlines.append(0.0)
        if self._start_timeout is not None:
            deadlines += [
                w.spawned_at + self._start_timeout for w in self._workers.values() if w.state == "starting"
            ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.results.recv()
        except (EOFError, OSError):
            self._on_death(worker)
            return
        except Exception as exc:  # the reply could not be unpickled here
            message = ("error", None, exc)
        kind = message[0]
        if kind == "ready":
            worker.state = "ready"
            self._start_failures = 0
        elif kind == "init_error":
            error = WorkerCrashError(
                f"stage {self.name!r}: a worker process failed to start "
                f"(worker_init or loading the function): {type(message[1]).__name__}: {message[1]}",
                stage=self.name,
            )
            error.__cause__ = message[1]
            self._break(error)
        elif kind == "part":  # an early part of the running task's result
            frame = message[2]
            if frame[0] is not None:
                worker.segments.add(frame[0])
            worker.segments.difference_update(frame[4])
            task = worker.task
            try:
                value = self._mappings.unpack(frame, worker.release)
            except Exception:  # the end of the task reports what is wrong
                return
            if task is not None and task.on_part is not None and not task.future.cancelled():
                task.on_part(value)
        else:
            if not worker.queue:
                return
            task = worker.queue.popleft()
            if task.begun is not None:
                self._slowest = max(self._slowest, time.monotonic() - task.begun)
            self._start_head(worker)
            if kind == "ok":
                frame = message[2]
                if frame[0] is not None:
                    worker.segments.add(frame[0])
                worker.segments.difference_update(frame[4])  # unlinked by the worker
                try:
                    outcome = Outcome("ok", self._mappings.unpack(frame, worker.release))
                except Exception as exc:
                    outcome = Outcome("error", exc)
            else:  # "error", "undecodable"
                outcome = Outcome(kind, message[2])
            task.finish(outcome)

    def _start_head(self, worker: _Worker) -> None:
        """The worker has gone on to the task at the head of its queue: its clock starts."""
        head = worker.task
        if head is not None and head.begun is None:
            head.begun = time.monotonic()
        if head is not None and head.timeout is not None and head.deadline is None:
            head.deadline = time.monotonic() + head.timeout

    def _watch(self) -> None:
        """Stalls and memory: report a task past the stall limit (a thread gathers the report),
        fail the stalls reported under ``on_stall="raise"``, kill a worker over its memory."""
        now = time.monotonic()
        while self._stalls:
            worker, task, report = self._stalls.popleft()
            if worker.task is task and worker.state != "dead":
                worker.proc.kill()
                worker.queue.popleft()
                key = task.label[0] if isinstance(task.label, list) and task.label else None
                self._requeue(list(worker.queue))
                worker.queue.clear()
                self._on_death(worker)  # reaped (and replaced) before the error is seen
                task.finish(Outcome("error", StageStalledError(report, stage=self.name, key=key)))
        limit = self._stall_limit()
        for worker in list(self._workers.values()):
            task = worker.task
            if limit is None or task is None or task.begun is None or task.stalled:
                continue
            if now >= task.begun + limit:
                task.stalled = True
                reporter = threading.Thread(
                    target=self._report_stall,
                    args=(worker, task, now - task.begun),
                    name="aioloader-pool-stall",
                    daemon=True,
                )
                self._reporters = [r for r in self._reporters if r.is_alive()]
                self._reporters.append(reporter)
                reporter.start()
        if self._max_memory is not None and now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_S
            for worker in list(self._workers.values()):
                if worker.state != "ready" or worker.task is None:
                    continue
                rss = worker.rss()
                if rss is not None and rss > self._max_memory:
                    worker.proc.kill()
                    self._on_death(
                        worker,
                        f"worker pid {worker.proc.pid} used {rss / 2**20:.0f} MiB of memory, over "
                        f"max_worker_memory={self._max_memory / 2**20:.0f} MiB; it was replaced",
                    )

    def _report_stall(self, worker: _Worker, task: _Task, seconds: float) -> None:
        """(A reporter thread.) Log what a stalled worker is doing; queue it to be failed."""
        pid = worker.proc.pid
        state = worker.describe_state()
        stack = _worker_stack(worker) if "stopped" not in state else ""
        keys = describe_keys(task.label) if task.label is not None else "?"
        report = (
            f"stage {self.name!r} made no progress for {seconds:.1f}s: worker pid {pid} ({state}) "
            f"has been running keys {keys} for {seconds:.1f}s "
            f"(stall_after={describe_limit(self._stall_after, self._slowest)})"
        )
        if stack:
            report += f"\nPython stack of worker pid {pid}:\n{stack}"
        elif "stopped" in state:
            report += " (stopped: it cannot run, e.g. SIGSTOP or a debugger)"
        log.warning("%s", report)
        if self._on_stall == "raise":
            self._stalls.append((worker, task, report))
            self._wake()

    def _expire(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if self._start_timeout is not None and worker.state == "starting":
                if now >= worker.spawned_at + self._start_timeout:
                    # a failed start, as a death before "ready": replaced, and after
                    # MAX_START_FAILURES in a row the pool fails (a hang is rarely transient)
                    worker.proc.kill()
                    detail = (
                        f"a worker did not become ready within {self._start_timeout:g} s "
                        "(importing the function or worker_init hangs?)"
                    )
                    self._on_death(worker, detail)
                continue
            task = worker.task
            if task is not None and task.deadline is not None and now >= task.deadline:
                worker.proc.kill()
                worker.queue.popleft()
                task.finish(Outcome("timeout"))
                self._requeue(list(worker.queue))  # behind it, never started: not a crash
                worker.queue.clear()
                self._on_death(worker)

    def _requeue(self, tasks: list[_Task]) -> None:
        """Tasks a dead worker never started go back to the front of the queue, in order."""
        with self._lock:
            if self._closed or self._broken is not None:
                error = self._broken or RuntimeError(f"the process pool of {self.name!r} is closed")
                for task in tasks:
                    task.finish(Outcome("error", error))
                return
            for task in reversed(tasks):
                task.deadline = None
                self._pending.appendleft(task)

    def _on_death(self, worker: _Worker, detail: str | None = None) -> None:
        was = worker.state
        worker.state = "dead"
        if worker.lifeline >= 0:
            os.close(worker.lifeline)
            worker.lifeline = -1
        try:
            worker.proc.wait(1.0)
        except subprocess.TimeoutExpired:  # closed its pipe but lingers: it is of no use now
            worker.proc.kill()
            worker.proc.wait()
        worker.close_pipes()
        for segment in worker.segments:
            shm.unlink(segment)
        _remove_stack_file(worker)
        shm.sweep(f"{self._prefix}{worker.spawn}_")
        self._mappings.forget_prefix(f"{self._prefix}{worker.spawn}_")
        detail = detail or _describe_exit(worker.proc.pid, worker.proc.returncode)
        if worker.queue:
            worker.queue.popleft().finish(Outcome("crash", detail))
            self._requeue(list(worker.queue))
            worker.queue.clear()
        if self._workers.get(worker.slot) is worker:
            del self._workers[worker.slot]
        if was == "starting":
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._break(
                    WorkerCrashError(
                        f"stage {self.name!r}: worker processes die before they are ready "
                        f"({self._start_failures} in a row; last: {detail})",
                        stage=self.name,
                    )
                )
                return
        if not self._closed and self._broken is None:
            self._spawn(worker.slot)

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                task = self._pending[0]
                # the least loaded worker that can take it without blocking the send
                takers = [w for w in self._workers.values() if w.can_take(task)]
                if self._spread and takers:
                    fewest = min(len(w.queue) for w in self._workers.values() if w.state != "dead")
                    takers = [w for w in takers if len(w.queue) == fewest]
                if not takers:
                    return
                self._pending.popleft()
            if not task.started:
                if not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                task.started = True
            worker = min(takers, key=lambda w: len(w.queue))
            releases = []
            while worker.releases:
                releases.append(worker.releases.popleft())
            worker.queue.append(task)
            self._start_head(worker)
            try:
                wire.send(worker.tasks, id(task), releases, task.payload)
            except OSError:
                pass  # it is dying: the end of file on its result pipe reports the crash

    def _break(self, error: BaseException) -> None:
        """The pool cannot work any more: fail what is queued and running."""
        with self._lock:
            self._broken = error = self._broken or error  # the first cause is the one to report
            pending = list(self._pending)
            self._pending.clear()
        outcome = Outcome("error", error)
        for task in pending:
            task.finish(outcome)
        for worker in self._workers.values():
            for task in worker.queue:
                task.finish(outcome)
            worker.queue.clear()


def _worker_stack(worker: _Worker) -> str:
    """The Python stack of ``worker``'s threads, dumped by faulthandler on a signal (empty
    when it does not answer within :data:`_STACK_WAIT_S`)."""
    path = _child.stack_path(worker.prefix)
    try:
        before = os.path.getsize(path)
        os.kill(worker.proc.pid, _child.STACK_SIGNAL)
    except OSError:
        return ""
    # the dump is written by a C signal handler: nothing to await but the file growing
    deadline = time.monotonic() + _STACK_WAIT_S
    size = before
    while time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            now = os.path.getsize(path)
        except OSError:
            return ""
        if now > before and now == size:  # written and no longer growing
            break
        size = now
    try:
        with open(path, errors="replace") as file:
            file.seek(before)
            return file.read()[:_STACK_MAX_CHARS].strip()
    except OSError:
        return ""


def _remove_stack_file(worker: _Worker) -> None:
    if worker.prefix:
        try:
            os.unlink(_child.stack_path(worker.prefix))
        except OSError:
            pass


def _feed(proc: Any, tasks: Connection, prep: dict[str, Any] | None, init: bytes) -> None:
    """Send a new worker its start: the preparation data (a spawned one), then the work."""
    try:
        if prep is not None:
            tasks.send(prep)
        tasks.send_bytes(init)
    except OSError:  # the child died first; the I/O thread sees it
        pass
    except Exception:  # the child would wait forever: end it, the I/O thread counts a failed start
        proc.kill()


__all__ = ["MAX_START_FAILURES", "Outcome", "ProcessPool"]
