"""Ctrl-C goes to the consumer: aioloader's threads do not take SIGINT, and whether it has
reached an ``asyncio.run()`` of this process.

Linux hands a process's SIGINT to any of its threads that does not block it, and a thread that
starts one, or has just started, takes a pending signal before the thread it was meant for runs
again. Python then runs its handler only when the main thread next runs Python code: a sync
consumer asleep in its loop body (``time.sleep``, a wait in C) slept on, as long as the call
lasted (9 of 400 Ctrl-Cs, on 2 loaded cores, were taken by the loader's threads). Every thread
of aioloader is started by :func:`start_thread`, with SIGINT blocked, as are the threads those
start (a process they start inherits the mask too: aioloader's workers ignore SIGINT anyway).

``asyncio.run`` (an ``asyncio.Runner``) takes SIGINT itself: it cancels its main task, and
raises ``KeyboardInterrupt`` only once that task has ended. An async consumer therefore sees a
cancellation, like any other, and its clean-up must not wait for calls blocked in threads
(which cannot be stopped) or the process outlives the 2 s of guarantee 6.

The cancellation needs the loop: a call that holds it (an inline map on the main thread) kept
the process alive after Ctrl-C until the call returned (30.9 s for a 30 s call), as the Runner
only raises ``KeyboardInterrupt`` at a second Ctrl-C. :class:`HoldingLoop` makes the first one
raise in such a call too.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

_SIGINT = {signal.SIGINT}


def start_thread(thread: threading.Thread) -> None:
    """``thread.start()``, the thread running with SIGINT blocked: the process's Ctrl-C is left
    to the consumer's thread. The mask is the starting thread's, taken at the start (Linux)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: the main thread takes SIGINT itself
        thread.start()
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    try:
        thread.start()
    finally:
        if signal.SIGINT not in before:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def interrupted() -> bool:
    """True once the ``asyncio.Runner`` whose SIGINT handler is installed has received Ctrl-C."""
    handler = signal.getsignal(signal.SIGINT)
    handler = getattr(handler, "runner_handler", handler)  # HoldingLoop's, during a call
    # the Runner installs functools.partial(runner._on_sigint, main_task=...) and counts the
    # interrupts in _interrupt_count (Python 3.11-3.13)
    runner = getattr(getattr(handler, "func", None), "__self__", None)
    return isinstance(runner, asyncio.Runner) and getattr(runner, "_interrupt_count", 0) > 0


_holding: set[int] = set()  # idents of the threads now in a call that holds their loop


def holds_loop(thread: threading.Thread) -> bool:
    """Whether ``thread`` (an event loop's) is now in a user call that holds its loop."""
    return thread.ident in _holding


class HoldingLoop:
    """``with HoldingLoop():`` around a call that holds the event loop: under ``asyncio.run``
    on the main thread, Ctrl-C raises ``KeyboardInterrupt`` in the call (after the Runner has
    counted it and cancelled its main task) instead of waiting for the call to return."""

    __slots__ = ("_installed",)

    def __init__(self) -> None:
        self._installed: Any = None

    def __enter__(self) -> HoldingLoop:
        _holding.add(threading.get_ident())
        if threading.current_thread() is not threading.main_thread():
            return self  # (a Loader's own loop thread: once a chunk, getsignal's enum lookups skipped)
        handler = signal.getsignal(signal.SIGINT)
        runner = getattr(getattr(handler, "func", None), "__self__", None)
        if isinstance(runner, asyncio.Runner):
            signal.signal(signal.SIGINT, _raising(handler))
            self._installed = handler
        return self

    def __exit__(self, *exc: Any) -> None:
        _holding.discard(threading.get_ident())
        if self._installed is not None:
            signal.signal(signal.SIGINT, self._installed)
            self._installed = None


def _raising(handler: Any) -> Any:
    def on_sigint(signum: int, frame: Any) -> None:
        handler(signum, frame)  # the Runner counts it and cancels its main task (a second raises)
        raise KeyboardInterrupt

    on_sigint.runner_handler = handler  # type: ignore[attr-defined]
    return on_sigint
