"""A remote Loader's epoch and resume bookkeeping, kept on the consumer's side.

A loader running elsewhere (a child process, a server) produces batches ahead of the consumer,
so its own ``state_dict()`` is ahead too. Each batch therefore travels with the state *after* it
(``Loader.state_dict()`` taken right after the batch left the loader), and the consumer's side
keeps the state of the last batch it actually handed out. :class:`Cursor` mirrors the Loader's
epoch rules on top of that: each iteration runs the next epoch, ``set_epoch`` picks it, a
loaded state wins over both, and a broken-off iteration still reports where it stopped. One
addition: a run cut off by a lost connection (not by the consumer) is resumed by the next
iteration, so retrying the loop after a server restart continues the interrupted epoch.

Every run starts from an explicit state (a fresh epoch is "epoch e, position 0"), so the
remote side never depends on what it remembers between runs.

Pipelines that cannot be resumed exactly (``.bucket``, ``.pack``, ``.map(ordered=False)``; a
``.shuffle`` of batches mid-epoch) have no state where ``Loader.state_dict()`` raises. There the
remote side sends a *mark* in the state's place: ``{"epoch": e, "unresumable": why}`` (see
:func:`mark`), and a run that starts from a mark starts epoch ``e`` from its beginning
(``set_epoch``). The cursor's ``state_dict()`` raises ``ValueError(why)`` where it holds a mark,
as the Loader's does. A run of such a pipeline cut off mid-epoch (lost connection) cannot be
continued: the next iteration raises ``RuntimeError`` saying so, until ``set_epoch`` (or
``load_state_dict``) says which epoch to run, so no batch is repeated or skipped unsaid. Cut
off before its first batch, it simply starts again.
"""

from __future__ import annotations

import copy
from typing import Any

from aioloader.order.resume import DIGEST, seal

_FRESH = {"position": 0, "prefix": [], "reservoir": None, "elastic": []}
UNRESUMABLE = "unresumable"  # a mark's field: why there is no exact state here


def mark(epoch: int, why: str) -> dict[str, Any]:
    """The stand-in for a state that cannot be taken: the epoch, and why (the Loader's error)."""
    return {"epoch": int(epoch), UNRESUMABLE: str(why)}


def is_mark(state: dict[str, Any]) -> bool:
    """True when ``state`` is a :func:`mark`, not a state ``load_state_dict`` can resume."""
    return UNRESUMABLE in state


class Cursor:
    """Where a remote loader's consumer is; ``initial`` is the remote ``state_dict()`` at the
    start (or a :func:`mark` when the remote loader has none)."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self._template = dict(initial)
        self.next_epoch = int(initial["epoch"])
        self._resume: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._completed = True
        self._handed_out = 0  # batches of the current (or last) run the consumer received
        self._cut_off: str | None = None  # why the next run cannot start, when it cannot

    def begin(self) -> dict[str, Any]:
        """The state the next run starts from; advances the epoch as ``iter(loader)`` does.
        ``RuntimeError`` after a cut-off run that cannot be resumed (see the module's doc)."""
        if self._cut_off is not None:
            raise RuntimeError(self._cut_off)
        if self._resume is not None:
            state, self._resume = self._resume, None
        else:
            state = self.at_epoch(self.next_epoch)
        self.next_epoch = int(state["epoch"]) + 1
        self._last = state
        self._completed = False
        self._handed_out = 0
        return state

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next run (a cut-off run is then left behind, by the user's choice)."""
        self.next_epoch = int(epoch)
        self._cut_off = None

    def delivered(self, state: dict[str, Any]) -> None:
        """The consumer received a batch; ``state`` is the remote state (or mark) right after it."""
        self._last = state
        self._handed_out += 1

    def finished(self, state: dict[str, Any]) -> None:
        """The run reached the end of its epoch."""
        self._last = state
        self._completed = True

    def interrupted(self) -> None:
        """The run was cut off (the connection or the child was lost, not the consumer's
        choice): the next run resumes after the last batch handed out, not at the next epoch;
        for a pipeline that cannot be resumed there, it raises until ``set_epoch``."""
        if self._last is None or self._completed or self._resume is not None:
            return
        if not is_mark(self._last):
            self.load(self._last)
        elif self._handed_out == 0:
            self.next_epoch = int(self._last["epoch"])  # nothing handed out: run it again
        else:
            self._cut_off = _cut_off_message(self._last, self._handed_out)

    def load(self, state: dict[str, Any]) -> None:
        """A state validated by the remote loader: the next run resumes from it."""
        self._resume = state
        self.next_epoch = int(state["epoch"])
        self._cut_off = None

    def state_dict(self) -> dict[str, Any]:
        """The state after the last batch handed out; ``ValueError`` (the remote loader's) where
        the pipeline cannot be resumed exactly."""
        if self._resume is not None:
            state = self._resume
        elif self._last is None or self._completed:
            state = self.at_epoch(self.next_epoch)
        else:
            state = self._last
        if is_mark(state):
            raise ValueError(state[UNRESUMABLE])
        return copy.deepcopy(state)

    def at_epoch(self, epoch: int) -> dict[str, Any]:
        """The state (or mark) of the start of ``epoch``."""
        if is_mark(self._template):
            return mark(epoch, self._template[UNRESUMABLE])
        state = {**copy.deepcopy(self._template), **copy.deepcopy(_FRESH), "epoch": int(epoch)}
        return seal(state) if DIGEST in state else state  # a sealed template: so is its epoch


def _cut_off_message(last: dict[str, Any], handed_out: int) -> str:
    epoch = int(last["epoch"])
    return (
        f"the run of epoch {epoch} was cut off after {handed_out} batches, and this loader "
        f"cannot resume it mid-epoch ({last[UNRESUMABLE]}); call set_epoch({epoch}) to run "
        f"epoch {epoch} again from its start (its first {handed_out} batches again), or "
        f"set_epoch({epoch + 1}) to go on with the next epoch"
    )
