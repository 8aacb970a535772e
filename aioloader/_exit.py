"""Iterators a consumer leaves suspended are closed at interpreter exit, while modules still work.

A partly consumed iterator that is still alive when the interpreter exits (held in a reference
cycle, by a trainer object) is otherwise finalized by the last garbage collection, after the
modules' globals have been cleared: its ``finally`` then fails (``Exception ignored in:
<generator object Loader._iterate>``, ``'NoneType' object is not callable``). An ``atexit``
hook closes them first, as breaking out of the loop would; then it stops the calls still
running in aioloader's daemon threads (:func:`aioloader._run.threads.stop_at_exit`).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Generator
from typing import Any, TypeVar

G = TypeVar("G", bound=Generator[Any, Any, Any])

_live: weakref.WeakSet[Generator[Any, Any, Any]] = weakref.WeakSet()
_lock = threading.Lock()
_registered = False


def close_at_exit(generator: G) -> G:
    """``generator``, closed at interpreter exit if it is still alive then."""
    watch_exit()
    with _lock:
        _live.add(generator)
    return generator


def watch_exit() -> None:
    """Register the interpreter-exit hook (once)."""
    global _registered
    with _lock:
        if not _registered:
            atexit.register(_at_exit)
            _registered = True


def _at_exit() -> None:
    _close_all()  # first: closing a run may still use its threads
    from aioloader._run.threads import stop_at_exit  # (threads imports this module)

    stop_at_exit()


def _close_all() -> None:
    with _lock:
        generators = list(_live)
        _live.clear()
    for generator in generators:
        try:
            generator.close()
        except Exception:  # running in another thread ("already executing"), or its own error
            pass
