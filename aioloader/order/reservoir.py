"""The shuffle buffer (reservoir) for streams, with an exact, compact state.

Algorithm: fill ``size`` slots; then for each new item draw a slot ``j``, emit its occupant
and put the new item there; at the end of a finite stream drain the slots in random order.
Draw number ``t`` is the ``t``-th raw output of a PCG64 stream seeded from (seed, epoch), so
the generator at any step is recreated with ``advance(t)``: the state needs no generator
state, only the *keys* (input sequence numbers) in the slots and two counters.

The buffer runs ahead of the consumer. Each emission logs how to undo itself (the slot and
the emitted item's input seq, and the input it let in), so :meth:`Reservoir.state_at` can
rewind to the emission the consumer last received. The log holds at most ``history``
emissions: the items in flight between the buffer and the consumer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

_DRAWS_PER_REFILL = 1024


class _Draws:
    """Uniform slot draws: draw ``t`` depends only on (seed, epoch, t)."""

    def __init__(self, seed: int, epoch: int, start: int = 0) -> None:
        words = np.random.SeedSequence([seed, epoch, 0x5E5]).generate_state(4)
        self._bitgen = np.random.PCG64(np.random.SeedSequence(words))
        if start:
            self._bitgen.advance(start)
        self._buffer: list[int] = []
        self._next = 0

    def below(self, n: int) -> int:
        if self._next == len(self._buffer):
            self._buffer = self._bitgen.random_raw(_DRAWS_PER_REFILL).tolist()
            self._next = 0
        raw = self._buffer[self._next]
        self._next += 1
        return (raw * n) >> 64  # Lemire's multiply-shift: uniform enough for n << 2**64


@dataclass(frozen=True, slots=True)
class ReservoirState:
    """What a resumed run needs: ``slots`` holds the input seqs in the buffer (in slot order)
    ``inputs`` how many inputs were taken, ``last_input`` the seq of the last one (the source
    resumes after it), ``emitted`` how many items went out (= draws used)."""

    slots: list[Any]
    inputs: int
    last_input: Any
    emitted: int
    draining: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "slots": list(self.slots),
            "inputs": self.inputs,
            "last_input": self.last_input,
            "emitted": self.emitted,
            "draining": self.draining,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReservoirState:
        return cls(
            list(data["slots"]),
            int(data["inputs"]),
            data["last_input"],
            int(data["emitted"]),
            bool(data["draining"]),
        )


class Reservoir:
    """The buffer over arbitrary entries; ``seq_of(entry)`` names an entry by its input seq."""

    def __init__(self, size: int, seed: int, epoch: int, *, history: int, seq_of: Any) -> None:
        self.size = size
        self._seed, self._epoch = seed, epoch
        self._seq_of = seq_of
        self.slots: list[Any] = []
        self.inputs = 0
        self.last_input: Any = None
        self.emitted = 0
        self.draining = False
        self._draws = _Draws(seed, epoch)
        # undo log, one entry per emission still in flight: (slot, emitted seq, previous last_input, inserted?)
        self._log: deque[tuple[int, Any, Any, bool]] = deque(maxlen=history)

    @classmethod
    def restored(
        cls, size: int, seed: int, epoch: int, state: ReservoirState, *, history: int, seq_of: Any
    ) -> Reservoir:
        """A reservoir whose slots will be refilled, in slot order, by the first inputs
        (the resumed source sends the saved slots' items first)."""
        reservoir = cls(size, seed, epoch, history=history, seq_of=seq_of)
        reservoir.inputs = state.inputs - len(state.slots)
        reservoir.emitted = state.emitted
        reservoir._draws = _Draws(seed, epoch, start=state.emitted)
        reservoir._refill = len(state.slots)
        reservoir._restored = state
        return reservoir

    _refill = 0
    _restored: ReservoirState | None = None

    def push(self, entry: Any) -> Any:
        """Take one input; return the entry it displaces (to emit) or ``None`` while filling."""
        self.inputs += 1
        if self._refill:  # resumed: these inputs are the saved slots' items, in slot order
            self.slots.append(entry)
            self._refill -= 1
            if not self._refill and self._restored is not None:
                self.last_input = self._restored.last_input
            return None
        previous_last = self.last_input
        self.last_input = self._seq_of(entry)
        if len(self.slots) < self.size:
            self.slots.append(entry)
            return None
        j = self._draws.below(self.size)
        out = self.slots[j]
        self.slots[j] = entry
        self.emitted += 1
        self._log.append((j, self._seq_of(out), previous_last, True))
        return out

    def pop(self) -> Any:
        """At the end of the input: one entry out of the buffer, in random order."""
        self.draining = True
        j = self._draws.below(len(self.slots))
        out = self.slots[j]
        self.slots[j] = self.slots[-1]
        self.slots.pop()
        self.emitted += 1
        self._log.append((j, self._seq_of(out), self.last_input, False))
        return out

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def refilling(self) -> int:
        """How many of a resumed buffer's saved items have not come back yet (0 once full)."""
        return self._refill

    def forget_before(self, emitted: int) -> None:
        """Drop undo entries of emissions before ``emitted`` (the consumer has them)."""
        log = self._log
        drop = len(log) - (self.emitted - emitted)
        for _ in range(max(0, drop)):
            log.popleft()

    def state_at(self, emitted: int) -> ReservoirState:
        """The state right after emission number ``emitted`` (what the consumer has seen)."""
        if self._refill:
            if self._restored is not None and emitted == self.emitted:
                return self._restored
            raise RuntimeError("the shuffle buffer is still refilling after a resume")
        back = self.emitted - emitted
        log = list(self._log)
        if back < 0 or back > len(log):
            raise ValueError(f"cannot rewind the shuffle buffer by {back} items (history holds {len(log)})")
        slots = [self._seq_of(e) for e in self.slots]
        last_input, inputs = self.last_input, self.inputs
        for j, out_seq, previous_last, inserted in reversed(log[len(log) - back :]):
            if inserted:  # undo: the emitted item goes back into its slot, the input leaves
                slots[j] = out_seq
                inputs -= 1
                last_input = previous_last
            elif j == len(slots):  # undo a drain step that took the last slot
                slots.append(out_seq)
            else:  # undo a drain step: the last slot had moved into j
                slots.append(slots[j])
                slots[j] = out_seq
        index = len(log) - back - 1  # the log entry of emission number `emitted - 1`
        # emission `emitted - 1` in this run's log, else before this run (or there was none)
        draining = not log[index][3] if index >= 0 else bool(self._restored and self._restored.draining)
        return ReservoirState(slots, inputs, last_input, emitted, draining)
