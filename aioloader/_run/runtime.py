"""What a Loader owns while it lives: the epoch counter, the background loop thread, the
executor decisions made by ``executor="auto"``, long-lived resources (process pools) and the
runs in progress, so that ``close()`` can stop all of them."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Protocol

from aioloader._run.bridge import INTERRUPT_WAIT_S, STOP_TIMEOUT_S, LoopThread
from aioloader._run.decisions import Decisions
from aioloader._run.graph import Run
from aioloader._run.interrupt import interrupted as ctrl_c
from aioloader._run.threads import wait_while_computing


class Closable(Protocol):
    def close(self) -> None: ...


class Runtime:
    def __init__(self) -> None:
        self.next_epoch = 0
        self.decisions = Decisions()
        self.resources: dict[str, Closable] = {}
        self.last_run: Run | None = None
        self.pending_resume: Any = None  # a ResumePoint for the next run (load_state_dict)
        self._loop_thread: LoopThread | None = None
        self._step_sizer: Any = None
        self._active: dict[Run, asyncio.AbstractEventLoop] = {}
        self._finished_events: dict[Run, threading.Event] = {}
        self._ctrl_c = False  # a close saw Ctrl-C: later ones (the finalizer at exit) wait short
        # reentrant: close() may run from a GC finaliser in a thread that holds the lock
        self._lock = threading.RLock()

    def take_epoch(self) -> int:
        with self._lock:
            epoch = self.next_epoch
            self.next_epoch += 1
            return epoch

    def take_resume(self) -> Any:
        with self._lock:
            resume, self.pending_resume = self.pending_resume, None
            return resume

    def on_loop_of(self, run: Run, fn: Any) -> Any:
        """``fn()`` on the loop thread that runs ``run`` (its stages mutate what ``fn`` reads);
        directly when called from that loop or when the run has ended."""
        with self._lock:
            loop = self._active.get(run)
        if loop is None or loop.is_closed():
            return fn()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn()

        async def call() -> Any:
            return fn()

        # The loop may be held for seconds by a blocking step (an inline call, the GIL trial of
        # executor="auto" on a busy machine): wait as long as the run is alive on a running loop,
        # so a slow loop delays the answer instead of failing it with TimeoutError.
        future = asyncio.run_coroutine_threadsafe(call(), loop)
        while True:
            try:
                return future.result(STOP_TIMEOUT_S)
            except TimeoutError:
                with self._lock:
                    alive = self._active.get(run) is loop
                if alive and loop.is_running():
                    continue
                if future.cancel():  # never ran: the run has ended, its stages no longer change
                    return fn()

    def loop_thread(self, kind: str) -> LoopThread:
        with self._lock:
            if self._loop_thread is None or not self._loop_thread.alive:
                self._loop_thread = LoopThread(kind)
            return self._loop_thread

    def resource(self, name: str, factory: Any, *, usable: Any = None) -> Any:
        """A long-lived resource (a process pool) made once and closed with the Loader; made
        anew, the old one closed, when ``usable(resource)`` says it is not."""
        with self._lock:
            old = self.resources.get(name)
            if old is not None and usable is not None and not usable(old):
                old.close()
                old = None
            if old is None:
                self.resources[name] = factory()
            return self.resources[name]

    def release(self, name: str) -> None:
        """Close the resource ``name`` now, if there is one (a pool no later run will use)."""
        with self._lock:
            resource = self.resources.pop(name, None)
        if resource is not None:
            resource.close()

    def step_sizer(self, spec: Any) -> Any:
        """The :class:`~aioloader._run.stages.adaptive_batch.StepSizer` of an adaptive batch
        stage: made once, it lives across epochs as the epoch counter does."""
        with self._lock:
            if self._step_sizer is None:
                from aioloader._run.stages.adaptive_batch import StepSizer

                self._step_sizer = StepSizer(spec)
            return self._step_sizer

    def register(self, run: Run, finished: threading.Event | None = None) -> None:
        self.last_run = run
        with self._lock:
            self._active[run] = asyncio.get_running_loop()
            if finished is not None:
                self._finished_events[run] = finished

    def unregister(self, run: Run) -> None:
        with self._lock:
            self._active.pop(run, None)
            self._finished_events.pop(run, None)

    def close(self, *, interrupted: bool = False) -> None:
        """Stop every run, the loop thread and every resource. Idempotent. ``interrupted``
        (Ctrl-C), or the interpreter exiting: the runs do not wait for calls blocked in
        threads, which cannot be stopped (their threads are daemons)."""
        if interrupted or ctrl_c():  # Ctrl-C (in asyncio.run: the Runner took it)
            self._ctrl_c = interrupted = True
        if not threading.main_thread().is_alive():  # exiting
            interrupted = True
        with self._lock:
            active = list(self._active.items())
            finished = list(self._finished_events.values())
        for run, loop in active:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if loop is running:
                run.cancel()
                if interrupted:
                    run.stop_draining()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(run.cancel)
                if interrupted:
                    loop.call_soon_threadsafe(run.stop_draining)
        with self._lock:
            on_loop_thread = self._loop_thread is not None and self._loop_thread.is_current
        # after Ctrl-C the loop may be held by an inline call, which nothing can stop
        # (then only while the loop computes: its thread's CPU time)
        wait_s = INTERRUPT_WAIT_S if self._ctrl_c else STOP_TIMEOUT_S
        ends = time.monotonic() + wait_s  # after Ctrl-C: in all, the loop thread's end included
        with self._lock:
            computing = self._loop_thread.thread if self._ctrl_c and self._loop_thread is not None else None
        if not on_loop_thread:  # the runs end on the loop thread: it cannot wait for them
            for event in finished:
                if not self._ctrl_c:
                    event.wait(wait_s)
                elif not event.wait(max(0.0, ends - time.monotonic())) and computing is not None:
                    wait_while_computing(computing, time.monotonic() + STOP_TIMEOUT_S, event)
        with self._lock:
            loop_thread, self._loop_thread = self._loop_thread, None
            resources = list(self.resources.values())
            self.resources.clear()
        if loop_thread is not None:
            loop_thread.stop(max(0.0, ends - time.monotonic()) if self._ctrl_c else wait_s)
        for resource in resources:
            resource.close()
