"""A resource opened lazily in the process that uses it (an HDF5 file, a file descriptor).

A source may be built in the parent, then forked into worker processes or pickled to them. An
open handle must never cross that boundary: :class:`PerProcess` remembers the pid that opened
it, opens a fresh one in any other process, and pickles as its opener only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``get()`` returns the resource ``opener()`` made in *this* process, opening it once.

    ``opener`` and ``closer`` must be picklable (module-level functions or partials of them).
    """

    def __init__(self, opener: Callable[[], T], closer: Callable[[T], None] | None = None) -> None:
        self._opener = opener
        self._closer = closer
        self._value: T | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open resource."""
        return self._value is not None and self._pid == os.getpid()

    @property
    def opened_in(self) -> int | None:
        """The pid of the process that opened the current resource (``None`` when none is open)."""
        return self._pid if self._value is not None else None

    def get(self) -> T:
        pid = os.getpid()
        value = self._value
        if value is not None and self._pid == pid:
            return value
        if self._pid != pid:
            # Forked (or first use): the parent's handle and lock are not ours; never touch them.
            self._value = None
            self._lock = threading.Lock()
        with self._lock:
            if self._value is None or self._pid != pid:
                self._value = self._opener()
                self._pid = pid
            return self._value

    def close(self) -> None:
        """Close the resource if this process opened it; a later ``get()`` reopens."""
        value, self._value = self._value, None
        if value is not None and self._pid == os.getpid() and self._closer is not None:
            self._closer(value)
        self._pid = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {"opener": self._opener, "closer": self._closer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["opener"], state["closer"])  # type: ignore[misc]


def open_fd(path: str) -> int:
    """A read-only file descriptor (for ``os.pread``, which is safe to share between threads)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
