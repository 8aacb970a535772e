"""Read fusion: a file source's read runs in the pool's workers, with the map stage after it.

``Loader.from_source(ImageFolder(root)).map(decode, executor="process")`` would read each file
on the parent's event loop and then send its bytes to a worker through a pipe: on 2 cores the
parent spent ~73 us of CPU per JPEG on that (the read, the item, the pickle, the pipe), and the
workers, sharing the cores with it, ran at 0.79-0.91 of the machine's ceiling. When the source
can be read in any process (its ``worker_reader()``: an ``ImageFolder`` in "lazy" mode), the
implicit read stage is dropped and the map stage's tasks carry keys: each worker reads its
task's files itself (:func:`aioloader.sources._cached_read.read_files`), then runs ``fn`` (and
the collate of a fused batch, :mod:`aioloader._run.fusion`), as torch DataLoader's workers do.
The bytes never enter the parent, which then spends ~33 us per JPEG, and the same workload runs
at 0.92-1.00 of the ceiling (``python -m bench --workload jpeg``). Threads read in their workers
too (0.82 -> 0.87 of the ceiling). ``executor="auto"`` times ``fn`` without the reads (a cold
first epoch must not decide the placement) and sends a costly one to processes, a cheap one to
threads, never inline, where the reads would block the loop (:func:`aioloader._run.placement.place`).

What the consumer gets is the same: the same items in the same batches and order, with the same
keys, so ``state_dict()`` and resume are unchanged. A read failure is named by stage ``"read"``
and the key, and falls under the map's ``on_error`` as the unfused read stage does (which takes
the first map's policy): it ends the run, or under ``"skip"`` fails its own sample only (a retry
of ``fn`` does not retry it); a worker that dies redoes its items, reads included. ``stats()`` lists no read stage: the map stage's ``reads`` names it, and its busy time
includes the reads.

Applied only where nothing else can differ: a pooled executor (``"thread"``, ``"process"`` or
``"auto"``, decided when the pipeline is built, so a pool's work is the same every epoch), a
per-item sync ``fn``, no random transform (its draws are made from ``(key, sample)`` pairs), and
no ``timeout`` (the reads would count against ``fn``'s deadline). A source offers it with
``worker_reader()``; ``ImageFolder`` does unless a subclass reads its own way. A user's
map-style dataset (a torch ``Dataset`` whose ``__getitem__`` decodes) is read in the workers of
an explicit ``executor="process"`` stage, when it can be pickled: it travels to each worker once,
with ``fn``, and its ``__getitem__`` runs there, as in torch DataLoader's workers
(:mod:`aioloader.sources._dataset_reader`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from aioloader._run.executors import FAILED, ChunkResult, apply_items
from aioloader.errors import annotate

__all__ = ["NamedRead", "read_then_apply"]


class NamedRead:
    """The source's read as a worker runs it: keys -> items; a failure is named by the read
    stage and the key (the list of keys when the error does not say which). It counts the
    seconds each thread spends in it, so the placement probe times ``fn`` without the reads."""

    def __init__(self, read: Callable[[list[Any]], list[Any]], stage: str) -> None:
        self.read = read
        self.stage = stage
        self._spent = threading.local()

    def seconds_here(self) -> float:
        """Seconds the calling thread has spent reading so far."""
        return getattr(self._spent, "seconds", 0.0)

    def __call__(self, keys: Sequence[Any]) -> list[Any]:
        started = perf_counter()
        try:
            items = list(self.read(list(keys)))
        except Exception as exc:
            key = getattr(exc, "key", None)
            raise annotate(exc, self.stage, key if key is not None else list(keys)) from None
        finally:
            self._spent.seconds = self.seconds_here() + perf_counter() - started
        if len(items) != len(keys):  # a fused batch would come out short, silently
            raise RuntimeError(f"stage {self.stage!r}: {len(items)} items read for {len(keys)} keys")
        return items

    def __getstate__(self) -> dict[str, Any]:
        return {"read": self.read, "stage": self.stage}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["read"], state["stage"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"NamedRead({self.read!r}, {self.stage!r})"


def read_then_apply(read: NamedRead, fn: Callable[[Any], Any], keys: list[Any]) -> ChunkResult:
    """The chunk work of an unfused map stage that reads: the items at ``keys``, then ``fn`` on
    each (its failures recorded per item, as :func:`apply_items`). When the chunk's read fails,
    each key is read alone, so a file that cannot be read fails its own sample only (the map's
    ``on_error`` then applies to it, named by the read stage)."""
    started = perf_counter()
    try:
        items = read(keys)
    except Exception as exc:
        if len(keys) == 1:
            return [FAILED], [(0, exc)], perf_counter() - started
        return _read_each_then_apply(read, fn, keys, started)
    results, failures, _ = apply_items(fn, items)
    return results, failures, perf_counter() - started


def _read_each_then_apply(
    read: NamedRead, fn: Callable[[Any], Any], keys: list[Any], started: float
) -> ChunkResult:
    results: list[Any] = [FAILED] * len(keys)
    failures: list[tuple[int, BaseException]] = []
    readable: list[int] = []
    items: list[Any] = []
    for index, key in enumerate(keys):
        try:
            items.extend(read([key]))
        except Exception as exc:
            failures.append((index, exc))
        else:
            readable.append(index)
    applied, fn_failures, _ = apply_items(fn, items)
    for index, value in zip(readable, applied, strict=True):
        results[index] = value
    failures += [(readable[at], exc) for at, exc in fn_failures]
    failures.sort(key=lambda failure: failure[0])
    return results, failures, perf_counter() - started
