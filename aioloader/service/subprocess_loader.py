"""``Loader.in_subprocess()``: the whole pipeline in a child process, batches through shared memory.

The trainer's process keeps only this proxy: the reading, decoding, shuffling and batching (and
their Python work, which would otherwise take the trainer's GIL) run in a child started with
spawn semantics (a fresh interpreter; see :mod:`aioloader.service.specs` for what the spec must
be). The child packs each batch with :func:`aioloader.workers.shm.pack`: its arrays and tensors
go into a reused shared-memory segment and arrive here as views of it (no copy); a segment goes
back to the child when the last view of it is gone.

The proxy iterates like the Loader (sync and async), with the same ``len``, ``set_epoch``,
``state_dict``/``load_state_dict`` (each batch travels with the child's state after it; see
:mod:`.cursor`) and ``stats`` (the child's). A pipeline that cannot be resumed exactly
(``.bucket``, ``.pack``, ``.map(ordered=False)``, batches shuffled) runs all the same: its
``state_dict()`` raises the Loader's ``ValueError`` and ``load_state_dict()`` refuses, and a
child that dies mid-epoch leaves nothing to resume from (a new ``in_subprocess()`` then runs
the epoch ``set_epoch`` chooses, from its start).

One I/O thread (``aioloader-subprocess``) reads the child's results; a consumer grants one
credit per batch taken, so at most ``credits`` batches wait here. Every exit closes what it
opened: leaving the loop stops the child's run, ``close()`` ends the child (gracefully, then by
its lifeline, then SIGKILL) and unlinks its segments, and the child ends itself when this
process dies (its lifeline pipe reaches end of file).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import secrets
import signal
import subprocess
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import aioloader.workers._child as worker_child
import aioloader.workers.shm as shm
from aioloader._closing import Closing
from aioloader._run.graph import Pipeline
from aioloader._run.interrupt import start_thread
from aioloader.errors import WorkerCrashError
from aioloader.service.cursor import Cursor
from aioloader.service.specs import check_host_only, pickled_spec, pinned_rank
from aioloader.workers._spawn import preparation_data, spawn_child

if TYPE_CHECKING:
    from aioloader.loader import Loader

START_TIMEOUT_S = 120.0  # a fresh interpreter importing torch and the user's modules
REQUEST_TIMEOUT_S = 60.0
_GRACE_S = 2.0
Item = tuple[str, Any, Any]  # ("batch", value, state) | ("end", None, state) | ("error", exc, None)


class _Run:
    __slots__ = ("deliver", "finished", "run_id")

    def __init__(self, run_id: int, deliver: Callable[[Item], None]) -> None:
        self.run_id = run_id
        self.deliver = deliver
        self.finished = False

    def put(self, item: Item) -> None:
        if self.finished:
            return
        if item[0] != "batch":
            self.finished = True
        self.deliver(item)


class SubprocessLoader(Closing):
    """A Loader running in a child process. Made by :meth:`aioloader.Loader.in_subprocess`."""

    def __init__(self, loader: Loader, *, credits: int = 4) -> None:
        if not isinstance(getattr(loader, "spec", None), Pipeline):  # a Loader (not imported: no circle)
            raise TypeError(f"loader must be an aioloader.Loader, got {type(loader).__name__}")
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 1:
            raise ValueError(f"credits must be an int >= 1, got {credits!r}")
        if worker_child.BOOTSTRAPPING:
            raise RuntimeError(
                "in_subprocess() was called while a child process imported the main module: "
                "guard the script's entry point with `if __name__ == '__main__':`"
            )
        check_host_only(loader, "in_subprocess()")
        spec = pickled_spec(pinned_rank(loader))
        self._credits = credits
        self._prefix = f"aioloader_{os.getpid()}_{secrets.token_hex(3)}_sub_"
        self._lock = threading.Lock()  # commands, run and request bookkeeping
        self._ids = itertools.count()
        self._run: _Run | None = None
        self._requests: dict[int, Future[Any]] = {}
        self._ready: Future[dict[str, Any]] = Future()
        self._releases: deque[str] = deque()
        self._mappings = shm.Mappings()  # the child's segments, mapped once each
        self._dead: BaseException | None = None
        self._closed = False
        self._cursor: Cursor | None = None
        self._proc, self._commands, self._results, self._lifeline = spawn_child("aioloader.service._child")
        # The thread holds this object only while it dispatches a message: an unclosed loader
        # can then be collected, and its finalizer ends the child.
        self._reader = threading.Thread(
            target=_read_results,
            args=(weakref.ref(self), self._results, self._proc),
            name="aioloader-subprocess",
            daemon=True,
        )
        start_thread(self._reader)
        self._finalizer = weakref.finalize(self, _kill, self._proc, self._prefix, self._lifeline)
        try:
            self._commands.send(preparation_data("aioloader-subprocess"))
            self._commands.send((spec, self._prefix))
        except OSError:
            pass  # the child died at once: the reader reports it

    # -- the Loader's face -------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def epoch(self) -> int:
        return self._started().next_epoch

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._started().set_epoch(epoch)

    def __len__(self) -> int:
        length = self._wait_ready()["len"]
        if length is None:
            raise TypeError("len() is not known for this loader")
        return length

    def state_dict(self) -> dict[str, Any]:
        """The child loader's state after the last batch handed out here; ``ValueError``, as
        the Loader's, where the pipeline cannot be resumed exactly."""
        return self._started().state_dict()

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        cursor = self._started()
        cursor.load(self._request("validate", state))

    def stats(self) -> dict[str, Any]:
        """The child loader's statistics (of its current or last run)."""
        return self._request("stats", None)

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiterate()

    def close(self) -> None:
        """End the child and its pipeline; unlink its segments. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            run, self._run = self._run, None
        with contextlib.suppress(OSError):
            self._commands.send(("close",))
        try:
            self._proc.wait(_GRACE_S)
        except subprocess.TimeoutExpired:
            _close_fd(self._lifeline)
            self._lifeline = -1
            try:
                self._proc.wait(0.5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if threading.current_thread() is not self._reader:
            self._reader.join(_GRACE_S)
        _close_fd(self._lifeline)
        self._lifeline = -1
        self._commands.close()
        if not self._reader.is_alive():
            self._results.close()
        shm.sweep(self._prefix)
        self._mappings.clear()
        self._finalizer.detach()
        if run is not None:
            run.put(("error", RuntimeError("the loader was closed"), None))

    def __repr__(self) -> str:
        return f"<aioloader.SubprocessLoader pid {self._proc.pid}>"

    # -- iteration ---------------------------------------------------------------------------
    def _iterate(self) -> Iterator[Any]:
        handoff: queue.SimpleQueue[Item] = queue.SimpleQueue()
        run = self._begin(handoff.put)
        finished = False
        try:
            while True:
                kind, value, after = handoff.get()
                if kind == "batch" and self._closed:  # batches that arrived before close() stay
                    finished = True
                    raise RuntimeError("the loader was closed")
                if kind == "batch":
                    self._cursor.delivered(after)  # type: ignore[union-attr]
                    self._grant(run)
                    yield value
                elif kind == "end":
                    finished = True
                    self._cursor.finished(after)  # type: ignore[union-attr]
                    return
                else:
                    finished = True
                    raise value
        finally:
            self._end(run, finished)

    async def _aiterate(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        handoff: asyncio.Queue[Item] = asyncio.Queue()

        def deliver(item: Item) -> None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop is gone
                loop.call_soon_threadsafe(handoff.put_nowait, item)

        await asyncio.to_thread(self._wait_ready)
        run = self._begin(deliver)
        finished = False
        try:
            while True:
                kind, value, after = await handoff.get()
                if kind == "batch" and self._closed:  # batches that arrived before close() stay
                    finished = True
                    raise RuntimeError("the loader was closed")
                if kind == "batch":
                    self._cursor.delivered(after)  # type: ignore[union-attr]
                    self._grant(run)
                    yield value
                elif kind == "end":
                    finished = True
                    self._cursor.finished(after)  # type: ignore[union-attr]
                    return
                else:
                    finished = True
                    raise value
        finally:
            self._end(run, finished)

    def _begin(self, deliver: Callable[[Item], None]) -> _Run:
        cursor = self._started()
        with self._lock:
            self._check_alive()
            previous = self._run
            run = self._run = _Run(next(self._ids), deliver)
            state = cursor.begin()
            self._send(("start", run.run_id, state, self._credits))
        if previous is not None:
            previous.put(("error", RuntimeError("another iteration of this loader started"), None))
        return run

    def _grant(self, run: _Run) -> None:
        with self._lock:
            if self._run is run and not self._closed:
                self._send(("credit", run.run_id, 1, self._take_releases()))

    def _end(self, run: _Run, finished: bool) -> None:
        with self._lock:
            if self._run is run:
                self._run = None
                if not finished and not self._closed:
                    self._send(("stop", run.run_id, self._take_releases()))
        run.finished = True

    def _take_releases(self) -> list[str]:
        names = []
        while self._releases:
            names.append(self._releases.popleft())
        return names

    def _send(self, message: Any) -> None:
        """Send a command (with ``_lock`` held); a dead child is reported by the reader."""
        with contextlib.suppress(OSError):
            self._commands.send(message)

    # -- requests ------------------------------------------------------------------------------
    def _started(self) -> Cursor:
        if self._cursor is None:
            self._cursor = Cursor(self._wait_ready()["state"])
        return self._cursor

    def _wait_ready(self) -> dict[str, Any]:
        self._check_alive()
        try:
            return self._ready.result(START_TIMEOUT_S)
        except TimeoutError:
            raise WorkerCrashError(
                f"the loader subprocess (pid {self._proc.pid}) did not start within {START_TIMEOUT_S:.0f}s"
            ) from None

    def _request(self, name: str, arg: Any) -> Any:
        self._wait_ready()
        future: Future[Any] = Future()
        with self._lock:
            self._check_alive()
            request_id = next(self._ids)
            self._requests[request_id] = future
            self._send(("request", request_id, name, arg))
        try:
            return future.result(REQUEST_TIMEOUT_S)
        finally:
            with self._lock:
                self._requests.pop(request_id, None)

    def _check_alive(self) -> None:
        if self._closed:
            raise RuntimeError("the loader is closed")
        if self._dead is not None:
            raise self._dead

    # -- the I/O thread ------------------------------------------------------------------------
    def _release(self, name: str) -> None:
        self._releases.append(name)  # from a finalizer, any thread: a deque append is atomic

    def _child_ended(self, code: int) -> None:
        """The results pipe reached its end: the child exited (or was closed)."""
        detail = "was closed" if self._closed else _describe_exit(code)
        self._fail(WorkerCrashError(f"the loader subprocess (pid {self._proc.pid}) {detail}"))

    def _dispatch(self, message: Any) -> None:
        kind = message[0]
        if kind == "ready":
            self._ready.set_result(message[1])
        elif kind == "init_error":
            error = WorkerCrashError(
                f"the loader subprocess failed to start: {type(message[1]).__name__}: {message[1]}"
            )
            error.__cause__ = message[1]
            self._fail(error)
        elif kind == "reply":
            _, request_id, ok, value = message
            with self._lock:
                future = self._requests.get(request_id)
            if future is not None and not future.done():
                future.set_result(value) if ok else future.set_exception(value)
        elif kind == "batch":
            _, run_id, frame, after = message
            run = self._run
            if run is None or run.run_id != run_id or run.finished:
                self._mappings.forget(frame[4])
                if frame[0] is not None:
                    self._release(frame[0])  # a stopped run's batch: its segment goes back
                return
            try:
                # the deque's append, not a method: a batch kept by the user must not keep
                # this loader (and its child) alive
                value = self._mappings.unpack(frame, self._releases.append)
            except Exception as exc:
                run.put(("error", exc, None))
                return
            run.put(("batch", value, after))
        else:  # "end", "error", "stopped"
            run = self._run
            if run is not None and run.run_id == message[1]:
                if kind == "end":
                    run.put(("end", None, message[2]))
                elif kind == "error":
                    run.put(("error", message[2], None))

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = error
            run = self._run
            requests = list(self._requests.values())
        if not self._ready.done():
            self._ready.set_exception(error)
        for future in requests:
            if not future.done():
                future.set_exception(error)
        if run is not None:
            run.put(("error", error, None))


def _read_results(
    owner_ref: weakref.ref[SubprocessLoader], results: Any, proc: subprocess.Popen[bytes]
) -> None:
    """The I/O thread: hand each message from the child to its loader (while the loader lives;
    a collected one's finalizer ended the child, so the pipe ends too)."""
    try:
        while True:
            try:
                message = results.recv()
            except (EOFError, OSError):
                break
            owner = owner_ref()
            if owner is None:
                return
            owner._dispatch(message)
            del owner, message  # never hold the loader while waiting for the next message
    except BaseException as exc:  # a bug here must fail the consumers, never hang them
        owner = owner_ref()
        if owner is not None:
            owner._fail(exc)
        return
    code = proc.wait()
    owner = owner_ref()
    if owner is not None:
        owner._child_ended(code)


def _close_fd(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _kill(proc: subprocess.Popen[bytes], prefix: str, lifeline: int) -> None:
    """Backstop when a SubprocessLoader is collected unclosed."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(1.0)
    _close_fd(lifeline)
    shm.sweep(prefix)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


__all__ = ["SubprocessLoader"]
