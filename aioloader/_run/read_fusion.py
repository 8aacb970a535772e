"""Read fusion: an indexable source's read runs in the map stage's workers, not on the loop.

Why: reading on the parent's loop and piping the bytes to the workers costs the parent CPU per
item that the workers then wait for (bench/results/design-notes.md); workers that read their own
keys, as torch DataLoader's do, keep the bytes out of the parent. The rewrite
(:func:`aioloader._run.rewrite.fuse_read`) applies only where nothing else can differ: a pooled
executor, a per-item sync ``fn``, no random transform, no ``timeout``. The consumer gets the same
items, batches, order and keys (so resume is unchanged); a read failure is named by stage
``"read"`` and the key under the map's ``on_error``, and ``stats()`` names the read in the map
stage's ``reads``. A source offers it with ``worker_reader()``; a picklable user dataset is read
in the workers of an explicit process or Ray stage (:mod:`aioloader.sources._dataset_reader`).
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
