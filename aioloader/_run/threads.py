"""A pool of daemon threads for user code: thread maps and a slow iterator's pulls.

A thread blocked in a user function cannot be stopped. ``concurrent.futures``' pool joins its
threads when the interpreter exits, so one call blocked for 30 s kept a Ctrl-C'd process alive
for those 30 s (DESIGN.md guarantee 6 says 2 s). These threads are daemons: the process exits
whatever a user function is doing.

A call its stage has given up on (past its ``timeout``) is *abandoned*: the pool stops waiting
for it at close and starts a thread in its place, so the calls queued behind it still get
their full number of threads; the abandoned thread ends when its call returns.

At interpreter exit (:func:`stop_at_exit`, from :mod:`aioloader._exit`), calls still running
are stopped at their next Python instruction and waited for while they compute (at most
:data:`EXIT_WAIT_S`). A daemon thread that comes back from a C++ call once the interpreter is
finalizing (a torch op, which released the GIL, retaking it) is ended by ``pthread_exit``,
whose unwinding through C++ calls ``std::terminate``: the process died with SIGABRT
("terminate called without an active exception", pytorch/pytorch#38228) after a Ctrl-C left a
thread map collating. A call blocked in a wait (no CPU) is not waited for: it keeps the 2 s.
"""

from __future__ import annotations

import ctypes
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aioloader import _exit
from aioloader._run.interrupt import start_thread

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]

EXIT_WAIT_S = 1.0  # at exit, how long calls that still compute are waited for, in all
_LOOK_S = 0.02  # a thread that used no CPU over this long, and sleeps, is blocked

_pools: weakref.WeakSet[DaemonThreadPool] = weakref.WeakSet()
_loops: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # event loops' threads


class InterpreterExit(BaseException):
    """Raised in a call still running in a pool thread at interpreter exit. A BaseException:
    a user function's ``except Exception`` lets it through."""


class DaemonThreadPool:
    """``submit(fn, *args)`` runs ``fn`` in one of at most ``max_workers`` daemon threads
    (started on demand, named ``<thread_name_prefix>_<n>``), returning a ``Future``."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # released by each thread that waits for work
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._running: dict[Future[Any], threading.Thread] = {}
        self._abandoned: set[threading.Thread] = set()
        self._calling: set[threading.Thread] = set()  # inside fn (abandoned ones included)
        self._names = itertools.count()
        self._shutdown = False
        _pools.add(self)
        _exit.watch_exit()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a thread pool after shutdown")
            self._queue.put((future, fn, args))
            if not self._idle.acquire(blocking=False):
                self._grow()
        return future

    def abandon(self, future: Future[Any]) -> None:
        """Stop counting on ``future``'s call (its stage gave up on it): a new thread takes its
        thread's place, and :meth:`running` no longer lists it."""
        with self._lock:
            thread = self._running.pop(future, None)
            if thread is None or thread in self._abandoned:
                return
            self._abandoned.add(thread)
            if not self._shutdown:
                self._grow()

    def running(self) -> list[Future[Any]]:
        """Calls running now that were not abandoned (what a close waits for)."""
        with self._lock:
            return list(self._running)

    def shutdown(self, *, cancel_futures: bool = True) -> None:
        """No more calls; queued ones are cancelled (``cancel_futures``) or still run. Returns
        at once: running calls go on in their (daemon) threads until they return."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            threads = len(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in range(threads):
            self._queue.put(None)  # wakes each waiting thread, which then ends

    def _grow(self) -> None:
        """Start a thread if fewer than the allowance are alive (the caller holds the lock)."""
        if len(self._threads) - len(self._abandoned) >= self._max_workers:
            return
        thread = threading.Thread(target=self._work, name=f"{self._prefix}_{next(self._names)}", daemon=True)
        self._threads.add(thread)
        start_thread(thread)

    def _work(self) -> None:
        me = threading.current_thread()
        try:
            self._serve(me)
        except InterpreterExit:  # raised just outside its call: the thread ends all the same
            pass
        finally:
            with self._lock:
                self._threads.discard(me)
                self._abandoned.discard(me)

    def _serve(self, me: threading.Thread) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            del item
            if future.set_running_or_notify_cancel():
                with self._lock:
                    self._running[future] = me
                    self._calling.add(me)
                # no local keeps the result: an error's traceback reaches the consumer's
                # frames (the Loader's), and an idle thread must not keep them alive; the
                # future leaves _running before it completes, as the consumer may be
                # done with it before this thread runs again
                try:
                    outcome: Any = (fn(*args), None)
                except BaseException as exc:
                    outcome = (None, exc)
                with self._lock:
                    self._running.pop(future, None)
                    self._calling.discard(me)
                if outcome[1] is None:
                    future.set_result(outcome[0])
                else:
                    future.set_exception(outcome[1])
                del outcome
            del future, fn, args
            with self._lock:
                if self._shutdown or me in self._abandoned:
                    return  # a thread took an abandoned one's place: this one ends
            self._idle.release()

    def _stop_calls(self) -> list[threading.Thread]:
        """No more calls; raise :class:`InterpreterExit` in each running one (at its next Python
        instruction). Returns the threads that were in a call."""
        self.shutdown()
        with self._lock:  # held: a thread leaves _calling before the Python calls that follow
            calling = list(self._calling)
            for thread in calling:
                _raise_in(thread, InterpreterExit)
        return calling


def wait_at_exit(thread: threading.Thread) -> None:
    """Have :func:`stop_at_exit` wait for ``thread`` (an event loop's, told to stop) while it
    computes: a collate on the loop may be in a torch op."""
    _loops.add(thread)
    _exit.watch_exit()


def stop_at_exit() -> None:
    """At interpreter exit, before it finalizes: stop every pool's running calls, and wait for
    each thread while it computes (it may be in a C++ call), and for the event loops' threads,
    at most :data:`EXIT_WAIT_S` in all; a thread seen blocked (asleep, no CPU used) is not
    waited for."""
    threads = [thread for pool in list(_pools) for thread in pool._stop_calls()]
    threads += [thread for thread in list(_loops) if thread.is_alive()]
    deadline = time.monotonic() + EXIT_WAIT_S
    for thread in threads:
        wait_while_computing(thread, deadline)


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))


def wait_while_computing(thread: threading.Thread, deadline: float, done: threading.Event | None = None) -> None:
    """Wait until ``done`` is set (without one: until ``thread`` ends) while ``thread`` computes,
    until ``deadline`` (``time.monotonic()``); return once it is seen blocked (asleep over a
    look of :data:`_LOOK_S`, no CPU used)."""
    clock = cpu_clock(thread)
    used = cpu_seconds(clock)
    while thread.is_alive() and not (done is not None and done.is_set()):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if done is None:
            thread.join(min(_LOOK_S, left))
        elif done.wait(min(_LOOK_S, left)):
            return
        now = cpu_seconds(clock)
        if now is None or (now == used and _sleeping(thread)):
            return  # ended, or blocked in a wait
        used = now


def cpu_clock(thread: threading.Thread) -> int | None:
    """The CPU-time clock of ``thread`` (Linux), or None."""
    try:
        return time.pthread_getcpuclockid(thread.ident)  # type: ignore[arg-type]
    except (AttributeError, OSError, TypeError):  # not Linux, or the thread has ended
        return None


def cpu_seconds(clock: int | None) -> float | None:
    """Seconds of CPU read from :func:`cpu_clock`'s clock; None once its thread has ended."""
    if clock is None:
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:  # the thread has ended
        return None


def _sleeping(thread: threading.Thread) -> bool:
    """True when ``thread`` sleeps in the kernel (state S), False when it runs or waits for a
    core, or when that cannot be read."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "S"
    except (OSError, IndexError):
        return False
