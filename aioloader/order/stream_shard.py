"""Sharding a stream (no length, no random access) over ranks with the three policies.

Every rank reads the whole stream and keeps positions ``rank, rank + W, ...``. Under
``"uneven"`` that is all. Under ``"drop"`` a rank holds its item of each round of ``W``
positions until the round is complete, so a stream that ends mid-round drops the partial round
on every rank alike: equal counts (what DDP needs), at most ``W - 1`` items left out. Under
``"pad"`` the partial round is completed from the first round (kept, ``W`` items), as the
indexable ``"pad"`` policy wraps around to the start: equal counts, only padding repeats.

A stream made of independent parts (``shards()``: a text source's files) is sharded by part
under ``"uneven"`` when it has at least ``W`` of them: each rank reads only its own files.
Equal counts (``"drop"``, ``"pad"``) need the parts' lengths, which a stream does not know
without reading them, so those policies keep the scheme above.
"""

from __future__ import annotations

from typing import Any


class RoundSharder:
    def __init__(self, rank: int, world: int, policy: str) -> None:
        if policy not in ("drop", "pad", "uneven"):
            raise ValueError(f"shard_policy must be 'drop', 'pad' or 'uneven', got {policy!r}")
        self.rank, self.world, self.policy = rank, world, policy
        self.position = 0  # items of the whole stream seen so far
        self._held: list[Any] = []  # this rank's item of the current round, until it completes
        self._first_round: list[Any] = []  # kept for "pad"

    def push(self, item: Any) -> list[Any]:
        """This rank's items made final by one more item of the stream (zero or one)."""
        position = self.position
        self.position += 1
        if self.policy == "pad" and position < self.world:
            self._first_round.append(item)
        if position % self.world == self.rank:
            if self.policy == "uneven":
                return [item]
            self._held = [item]
        if position % self.world == self.world - 1 and self._held:
            out, self._held = self._held, []
            return out
        return []

    def finish(self) -> list[Any]:
        """This rank's last items when the stream ends (a partial round: dropped or padded)."""
        n = self.position
        if self.policy != "pad" or n % self.world == 0 or n == 0:
            return []
        if self._held:
            return self._held
        virtual = n - n % self.world + self.rank  # this rank's missing position of the round
        return [self._first_round[virtual % n]]
