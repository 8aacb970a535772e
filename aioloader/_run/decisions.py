"""What a Loader remembers from one run to the next: the executor each ``executor="auto"``
stage settled on, with the measurements that decided it, and whether a one-shot source has
already been iterated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Decisions:
    executors: dict[str, str] = field(default_factory=dict)  # stage name -> executor kind
    placements: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # what decided it
    one_shot_started: bool = False  # a one-shot iterator source was iterated by an earlier run
    left: dict[str, set[str]] = field(default_factory=dict)  # stage -> kinds a review moved it from
    tried: set[str] = field(default_factory=set)  # stages a review ran the thread trial for
    # fused shard stages whose first shard measured who reads faster: True the workers
    stream_reads: dict[str, bool] = field(default_factory=dict)

    def executor(self, stage: str) -> str | None:
        return self.executors.get(stage)

    def decide(self, stage: str, kind: str, placement: dict[str, Any] | None) -> None:
        self.executors[stage] = kind
        self.placements[stage] = placement

    def placement(self, stage: str) -> dict[str, Any] | None:
        return self.placements.get(stage)

    def tried_once(self, stage: str) -> bool:
        """Whether a review ran the thread trial for ``stage`` before; it is noted as run now."""
        if stage in self.tried:
            return True
        self.tried.add(stage)
        return False

    def moved(self, stage: str, old: str, kind: str, placement: dict[str, Any] | None) -> None:
        """A review moved ``stage`` from ``old`` to ``kind`` (it is not moved back to ``old``)."""
        self.left.setdefault(stage, set()).add(old)
        self.decide(stage, kind, placement)
