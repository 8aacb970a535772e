"""The unit that travels between stages: a block of items with their keys and sequence numbers.

Stages hand each other blocks, not single items, so per-item Python overhead stays small.
``keys`` identify samples (a dataset index, or a stream position); ``seqs`` number items in the
order this rank's source produced them in the epoch. After batching, each entry of ``keys`` and
``seqs`` is the list of the batch's members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Block:
    keys: list[Any]
    seqs: list[Any]
    values: list[Any]

    def __len__(self) -> int:
        return len(self.values)

    def before_consumer(self) -> None:
        """Called on the consumer's thread before it sees the values (a device block waits for
        its copy there); nothing for a block already complete."""

    def take(self, index: list[int]) -> Block:
        """The items at ``index`` (ascending), as a new block."""
        keys, seqs, values = self.keys, self.seqs, self.values
        return Block([keys[i] for i in index], [seqs[i] for i in index], [values[i] for i in index])

    def slice(self, start: int, stop: int) -> Block:
        return Block(self.keys[start:stop], self.seqs[start:stop], self.values[start:stop])
