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

import functools
import logging
import numbers
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from aioloader._run.interrupt import start_thread

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


def describe_keys(keys: Any, limit: int = 16) -> str:
    """A chunk's keys as a report names them: the first ``limit`` of a longer list."""
    if isinstance(keys, list) and len(keys) > limit:
        return f"[{', '.join(repr(key) for key in keys[:limit])}, ... ({len(keys)} keys)]"
    return f"{keys}"


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
    at :meth:`close` (the stage's).

    A call registers itself in a dict without a lock (one item set and popped, atomic under
    the GIL): the calls of an inline map are a block each, and a lock and a wake-up per call
    cost a cheap function's map a few percent. The watchdog looks every :data:`POLL_S` (or a
    fifth of a shorter limit) instead, so a report comes at most that late."""

    POLL_S = 1.0

    def __init__(self, stage: str, *, stall_after: float | str | None, on_stall: str) -> None:
        self.stage = stage
        self.stall_after = stall_after
        self.raises = on_stall == "raise" and stall_after is not None
        self._calls: dict[int, _Call] = {}
        self._slowest = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        if self._thread is None:
            self._start()
        return functools.partial(self._run, work, keys, on_stall)

    def close(self) -> None:
        """Stop the watchdog thread (calls still running are no longer watched)."""
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _run(
        self,
        work: Callable[[list[Any]], Any],
        keys: Any,
        on_stall: Callable[[str], None] | None,
        values: list[Any],
    ) -> Any:
        call = _Call(keys, on_stall)
        self._calls[id(call)] = call
        try:
            return work(values)
        finally:
            del self._calls[id(call)]
            took = time.monotonic() - call.began
            if took > self._slowest:  # a race loses one reading at worst
                self._slowest = took

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._watch, name=f"aioloader-stall-{self.stage}", daemon=True
                )
                start_thread(self._thread)

    def _watch(self) -> None:
        while True:
            limit = stall_limit(self.stall_after, self._slowest)
            if limit is None:  # (no watchdog starts without a limit)
                return
            if self._stop.wait(min(self.POLL_S, limit / 5)):
                return
            now = time.monotonic()
            due = [c for c in list(self._calls.values()) if not c.reported and now >= c.began + limit]
            for call in due:
                call.reported = True
                self._report(call, now - call.began, describe_limit(self.stall_after, self._slowest))

    def _report(self, call: _Call, seconds: float, limit: str) -> None:
        name = call.thread.name
        report = (
            f"stage {self.stage!r} made no progress for {seconds:.1f}s: thread {name!r} has been "
            f"running keys {describe_keys(call.keys)} for {seconds:.1f}s (stall_after={limit})"
        )
        stack = thread_stack(call.thread)
        if stack:
            report += f"\nPython stack of thread {name!r}:\n{stack}"
        log.warning("%s", report)
        if self.raises and call.on_stall is not None:
            call.on_stall(report)
