"""What the consumer of one run received, and where a state taken now resumes.

The run's output items carry seqs (source positions, or a shuffle buffer's emission numbers);
the consumer's iteration records the block it is in and how many of its items it has handed
out. From that, :meth:`Delivery.position_state` gives the resume cursor: the source position,
the shuffle buffer's content and counters, and the failures each budget spent before it.
Written from the consumer's thread (the counters) and read on the run's loop thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aioloader._run.block import Block
from aioloader._run.stages.base import Stage
from aioloader.order.resume import ResumePoint

__all__ = ["Delivery"]


class Delivery:
    """The consumer's side of one run: the block it is in, how far it got, whether it reached
    the end of the epoch, and how long it waited for blocks."""

    def __init__(self, resume: ResumePoint | None) -> None:
        self.resume = resume  # where the run started in the epoch (Loader.load_state_dict)
        self.epoch_length: int | None = None  # this rank's keys in the epoch (indexable sources)
        self.reservoir: Any = None  # the shuffle stage, when the pipeline has one
        # the seqs of the block the consumer is in (not its values: those are the consumer's; a
        # batch kept here after the epoch, or after close(), kept its segment mapped)
        self.current_seqs: list[Any] | None = None
        self.current_count = 0  # how many items of it the consumer has received
        self.completed = False  # the consumer reached the end of the epoch
        self.ended: float | None = None  # when the consumer saw the end of the epoch
        self.consumer_wait_s = 0.0  # time the consumer waited for a block

    def attach_reservoir(self, stage: Stage) -> None:
        """``stage`` renumbers its output (the shuffle buffer): positions are mapped through it."""
        if self.reservoir is not None:
            raise ValueError("a pipeline can have one .shuffle(buffer_size) stage")
        self.reservoir = stage

    def received(self, block: Block) -> None:
        """The consumer took ``block``; it then advances ``current_count`` item by item."""
        previous = self.current_seqs
        if previous is not None and self.reservoir is not None:
            self.current_count = len(previous)
            self.reservoir.trim(self.delivered_next())
        self.current_seqs = block.seqs
        self.current_count = 0

    def delivered_next(self) -> int:
        """The output seq after the last item the consumer received."""
        seqs = self.current_seqs
        if seqs is None or not self.current_count:
            if self.resume is None:
                return 0
            if self.resume.reservoir is not None:
                return int(self.resume.reservoir["emitted"])
            return self.resume.position
        seq = seqs[self.current_count - 1]
        while isinstance(seq, list):  # a batch: its members, in order
            seq = seq[-1]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"cannot locate the consumer in the epoch: a stage renumbered items ({seq!r})")
        return seq + 1

    def position_state(self, stages: Sequence[Stage]) -> dict[str, Any]:
        """Where the consumer is: position, buffer prefix and reservoir counters, whether the
        epoch is done, and the failures before that point. Call it on the run's loop thread
        while ``stages`` may still run."""
        delivered = self.delivered_next()
        if self.reservoir is None:
            where = {"position": delivered, "prefix": [], "reservoir": None}
        else:
            state = self.reservoir.state_at(delivered)
            position = 0 if state.last_input is None else int(state.last_input) + 1
            where = {
                "position": position,
                "prefix": [int(s) for s in state.slots],
                "reservoir": state.to_json(),
            }
        where["epoch_done"] = (
            self.epoch_length is not None and where["position"] >= self.epoch_length and not where["prefix"]
        )
        where["failures"] = self._failures_before(stages, where["position"], delivered)
        return where

    def _failures_before(self, stages: Sequence[Stage], position: int, delivered: int) -> dict[str, int]:
        """Per stage whose count budget carries over a resume: the items before the resume
        point it skipped (a stage that skipped none is left out). A stage before the shuffle
        buffer numbers items by source position (the source resumes at ``position``; the
        buffer's items never failed); one after it, by the buffer's output (the consumer
        received up to ``delivered``)."""
        out = {}
        cut = position
        for stage in stages:
            if stage is self.reservoir:
                cut = delivered
            policy = stage.failure_policy
            if policy is not None and policy.carries_over:
                failed = policy.failed_before(cut)
                if failed:  # none: left out (the read stage's policy is there whenever a map skips)
                    out[stage.name] = failed
        return out
