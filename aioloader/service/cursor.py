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
"""

from __future__ import annotations

import copy
from typing import Any

_FRESH = {"position": 0, "prefix": [], "reservoir": None, "elastic": []}


class Cursor:
    """Where a remote loader's consumer is; ``initial`` is the remote ``state_dict()`` at the start."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self._template = dict(initial)
        self.next_epoch = int(initial["epoch"])
        self._resume: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._completed = True

    def begin(self) -> dict[str, Any]:
        """The state the next run starts from; advances the epoch as ``iter(loader)`` does."""
        if self._resume is not None:
            state, self._resume = self._resume, None
        else:
            state = self.at_epoch(self.next_epoch)
        self.next_epoch = int(state["epoch"]) + 1
        self._last = state
        self._completed = False
        return state

    def delivered(self, state: dict[str, Any]) -> None:
        """The consumer received a batch; ``state`` is the remote state right after it."""
        self._last = state

    def finished(self, state: dict[str, Any]) -> None:
        """The run reached the end of its epoch."""
        self._last = state
        self._completed = True

    def interrupted(self) -> None:
        """The run was cut off (the connection or the child was lost, not the consumer's
        choice): the next run resumes after the last batch handed out, not at the next epoch."""
        if self._last is not None and not self._completed and self._resume is None:
            self.load(self._last)

    def load(self, state: dict[str, Any]) -> None:
        """A state validated by the remote loader: the next run resumes from it."""
        self._resume = state
        self.next_epoch = int(state["epoch"])

    def state_dict(self) -> dict[str, Any]:
        if self._resume is not None:
            return copy.deepcopy(self._resume)
        if self._last is None or self._completed:
            return self.at_epoch(self.next_epoch)
        return copy.deepcopy(self._last)

    def at_epoch(self, epoch: int) -> dict[str, Any]:
        """The state of the start of ``epoch``."""
        return {**copy.deepcopy(self._template), **copy.deepcopy(_FRESH), "epoch": int(epoch)}
