"""The stall watch of a map stage whose calls run in this process: in its thread pool, or
inline on the event loop (the process pool watches its workers itself, ``workers/pool.py``).

A call running past the stage's stall limit (``stall_after`` seconds; "auto": :data:`STALL_FACTOR`
times the slowest call the stage has finished, at least :data:`STALL_MIN_S`; None: never) is
reported once by a watchdog thread (an inline call blocks the loop, which then cannot report
anything): a warning on logger ``aioloader`` naming the stage, the call's keys, the thread's
name and its Python stack (``sys._current_frames()``). With ``on_stall="raise"`` the call's
``on_stall`` callback gets the report: a thread map then gives the call up and fails its keys
with :class:`~aioloader.errors.StageStalledError`. An inline call cannot be given up (it holds
the loop): it is reported, and Ctrl-C still ends the process (guarantee 6).
"""

from __future__ import annotations

import logging
import numbers
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

STALL_MIN_S = 60.0  # the default stall limit is STALL_FACTOR x the slowest task, and at least this
STALL_FACTOR = 20
STACK_MAX_CHARS = 8000  # a report keeps the innermost frames of a longer stack

log = logging.getLogger("aioloader")


def check_stall_options(stall_after: Any, on_stall: Any) -> None:
    """``stall_after``: seconds > 0, "auto" or None; ``on_stall``: "warn" or "raise"."""
    if stall_after not in ("auto", None) and (
        isinstance(stall_after, bool) or not isinstance(stall_after, numbers.Real) or not stall_after > 0
    ):
        raise ValueError(f"stall_after must be a number of seconds > 0, 'auto' or None, got {stall_after!r}")
    if on_stall not in ("warn", "raise"):
        raise ValueError(f"on_stall must be 'warn' or 'raise', got {on_stall!r}")


def stall_limit(stall_after: float | str | None, slowest: float) -> float | None:
    """Seconds a task may run before it is reported as stalled (None: never)."""
    if stall_after == "auto":
        return max(STALL_MIN_S, STALL_FACTOR * slowest)
    return stall_after  # type: ignore[return-value]


def describe_limit(stall_after: float | str | None, slowest: float) -> str:
    """``stall_after`` as a report names it."""
    if stall_after == "auto":
        return f"auto: {stall_limit(stall_after, slowest):.1f}s"
    return f"{stall_after}"


def thread_stack(thread: threading.Thread) -> str:
    """The Python stack ``thread`` is running now, innermost frame last ("" once it ended)."""
    frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
    if frame is None:
        return ""
    stack = "".join(traceback.format_stack(frame))
    del frame
    return stack if len(stack) <= STACK_MAX_CHARS else "...\n" + stack[-STACK_MAX_CHARS:]


class _Call:
    __slots__ = ("began", "keys", "on_stall", "reported", "thread")

    def __init__(self, keys: Any, on_stall: Callable[[str], None] | None) -> None:
        self.keys = keys
        self.on_stall = on_stall
        self.thread = threading.current_thread()
        self.began = time.monotonic()
        self.reported = False


class StallWatch:
    """One stage's watch. :meth:`watched` wraps a chunk's work so the watch sees it run; the
    watchdog thread (``aioloader-stall-<stage>``) starts with the first watched call and ends
    at :meth:`close` (the stage's)."""

    def __init__(self, stage: str, *, stall_after: float | str | None, on_stall: str) -> None:
        self.stage = stage
        self.stall_after = stall_after
        self.raises = on_stall == "raise" and stall_after is not None
        self._cond = threading.Condition()
        self._calls: set[_Call] = set()
        self._slowest = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False

    def watched(
        self,
        work: Callable[[list[Any]], Any],
        keys: Any,
        *,
        on_stall: Callable[[str], None] | None = None,
    ) -> Callable[[list[Any]], Any]:
        """``work`` as a call the watch sees; ``on_stall(report)`` runs (in the watchdog thread)
        when it stalls under ``on_stall="raise"``."""
        if self.stall_after is None:
            return work

        def run(values: list[Any]) -> Any:
            call = _Call(keys, on_stall)
            with self._cond:
                self._calls.add(call)
                self._start()
                self._cond.notify()
            try:
                return work(values)
            finally:
                with self._cond:
                    self._calls.discard(call)
                    self._slowest = max(self._slowest, time.monotonic() - call.began)

        return run

    def close(self) -> None:
        """Stop the watchdog thread (calls still running are no longer watched)."""
        with self._cond:
            self._closed = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _start(self) -> None:
        """Start the watchdog thread if it is not running (the caller holds the lock)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._watch, name=f"aioloader-stall-{self.stage}", daemon=True
            )
            self._thread.start()

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                limit = stall_limit(self.stall_after, self._slowest)
                now = time.monotonic()
                waiting = [call for call in self._calls if not call.reported]
                due = [call for call in waiting if now >= call.began + limit]  # type: ignore[operator]
                if not due:
                    wait = min((call.began + limit - now for call in waiting), default=None)  # type: ignore[operator]
                    self._cond.wait(wait)
                    continue
                for call in due:
                    call.reported = True
                described = describe_limit(self.stall_after, self._slowest)
            for call in due:
                self._report(call, now - call.began, described)

    def _report(self, call: _Call, seconds: float, limit: str) -> None:
        name = call.thread.name
        report = (
            f"stage {self.stage!r} made no progress for {seconds:.1f}s: thread {name!r} has been "
            f"running keys {call.keys} for {seconds:.1f}s (stall_after={limit})"
        )
        stack = thread_stack(call.thread)
        if stack:
            report += f"\nPython stack of thread {name!r}:\n{stack}"
        log.warning("%s", report)
        if self.raises and call.on_stall is not None:
            call.on_stall(report)
