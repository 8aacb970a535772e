"""The bound on worker results a fused shard stage holds for reordering, shared with its workers.

With stream fusion (:mod:`aioloader._run.stages.shard_map`) each worker streams whole shards
and sends their results back as they are done; the parent hands them on in shard order. A slow
shard at the head would let the workers behind it fill the parent with the results of every
shard in flight. A small shared-memory segment holds, per shard task in flight (a slot), the
bytes of results its worker has sent and the bytes the parent has handed on, the shard being
handed on now (the head) and the bound. A worker on any other shard waits before its next
sample while the bytes sent and not handed on are at the bound (:class:`GateView`); the
head's worker waits only while its own shard's are (the consumer is behind). The tasks enter
the pool in shard order, so no task the gate holds back is ahead of the head's on its worker,
and the run always progresses. The worker counts a part as it sends it, so parts still in the
pipe count too: the parent holds at most twice the bound (the shards behind the head, and the
head's) plus one part per worker.

Each count has one writer (the slot's worker, or the parent), so no lock is needed. The stage
owns the segment (:class:`HeldGate`): it lifts the bound before unlinking it at the run's end,
so a worker still waiting on it (the pool outlives the run) goes on.
"""

from __future__ import annotations

import mmap
import os
import secrets
from typing import Any

import numpy as np

from aioloader.workers import shm

__all__ = ["GateView", "HeldGate"]

_HEAD, _LIMIT, _SLOTS = 0, 1, 2  # then the slots' sent counts, then their handed-on counts
_OFF = -1  # the bound is lifted: nobody waits


def _open(name: str, slots: int, *, create: bool) -> tuple[mmap.mmap, np.ndarray]:
    size = 8 * (_SLOTS + 2 * slots)
    segment = shm._map(name, size, create=create)
    return segment, np.frombuffer(segment, dtype=np.int64)


class HeldGate:
    """The parent's side: ``limit`` bytes of results held at most (before one part per
    worker), ``slots`` shard tasks in flight at most."""

    def __init__(self, limit: int, slots: int) -> None:
        self.name = f"aioloader_{os.getpid()}_held_{secrets.token_hex(4)}"
        self.slots = slots
        self._map, self._values = _open(self.name, slots, create=True)
        self._values[:] = 0
        self._values[_HEAD], self._values[_LIMIT] = -1, limit
        self.limit = limit
        self.held = 0  # bytes received and not handed on
        self.peak = 0  # the most bytes held at once, for stats and tests

    def open_slot(self, place: int) -> int:
        """The slot of the shard task at ``place`` (the task that had it ended), its counts
        zeroed."""
        slot = place % self.slots
        self._values[_SLOTS + slot] = 0
        self._values[_SLOTS + self.slots + slot] = 0
        return slot

    def received(self, nbytes: int, *, slot: int | None = None) -> None:
        """A part of ``nbytes`` received; ``slot``: the parent read it (no worker counted it
        as sent in the slot, so the parent does)."""
        if slot is not None:
            self._values[_SLOTS + slot] += nbytes
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def handed_on(self, slot: int, nbytes: int) -> None:
        self.held -= nbytes
        self._values[_SLOTS + self.slots + slot] += nbytes

    def set_head(self, shard: int) -> None:
        """The shard whose results are handed on now: its worker never waits."""
        self._values[_HEAD] = shard

    def lift(self) -> None:
        """No worker waits any more (a shard read again after a worker died may wait in the
        pool behind a waiting worker's tasks; the run's end)."""
        if not self._map.closed:
            self._values[_LIMIT] = _OFF

    def close(self) -> None:
        if self._map.closed:
            return
        self.lift()
        del self._values
        self._map.close()
        shm.unlink(self.name)


class GateView:
    """A worker's side of the gate ``name`` of ``slots`` slots."""

    def __init__(self, name: str, slots: int) -> None:
        self.name, self.slots = name, slots
        self._map: Any = None
        try:
            self._map, self._values = _open(name, slots, create=False)
        except FileNotFoundError:  # the run ended already: nothing to wait for
            self._values = np.zeros(_SLOTS + 2 * slots, dtype=np.int64)
            self._values[_LIMIT] = _OFF

    def sent(self, slot: int, nbytes: int) -> None:
        """Count a part of ``nbytes`` sent for the task in ``slot`` (before it is sent)."""
        self._values[_SLOTS + slot] += nbytes

    def waits(self, shard: int, slot: int) -> bool:
        """Whether the worker on ``shard`` (its task's counts in ``slot``) should wait before
        its next sample."""
        values = self._values
        limit, slots = int(values[_LIMIT]), self.slots
        if limit == _OFF:
            return False
        if int(values[_HEAD]) == shard:  # only the head's own results: the others wait for it
            return int(values[_SLOTS + slot]) - int(values[_SLOTS + slots + slot]) >= limit
        held = int(values[_SLOTS : _SLOTS + slots].sum()) - int(values[_SLOTS + slots :].sum())
        return held >= limit

    def close(self) -> None:
        if self._map is not None and not self._map.closed:
            del self._values
            self._map.close()
