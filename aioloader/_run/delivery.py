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
        """Where the consumer is, from every stage's :meth:`~Stage.state_dict` at the consumer's
        cut: position, buffer prefix and reservoir counters, whether the epoch is done, and the
        failures before that point. Call it on the run's loop thread while ``stages`` may run."""
        delivered = self.delivered_next()
        # the shuffle buffer's part first: it says where the source resumes
        buffered = {} if self.reservoir is None else self.reservoir.state_dict(delivered)
        position = buffered.get("position", delivered)
        where: dict[str, Any] = {
            "position": position,
            "prefix": buffered.get("prefix", []),
            "reservoir": buffered.get("reservoir"),
        }
        where["epoch_done"] = (
            self.epoch_length is not None and position >= self.epoch_length and not where["prefix"]
        )
        # A stage before the shuffle buffer numbers items by source position (the source
        # resumes at ``position``; the buffer's items never failed); one after it, by the
        # buffer's output (the consumer received up to ``delivered``).
        failures = {}
        cut = position
        for stage in stages:
            if stage is self.reservoir:
                cut, part = delivered, buffered
            else:
                part = stage.state_dict(cut)
            if part.get("failures"):  # none: left out (the read's policy is there whenever a map skips)
                failures[stage.name] = part["failures"]
        where["failures"] = failures
        return where

    def saved_part(self, stage: Stage) -> dict[str, Any]:
        """``stage``'s part of the state this run resumes from, for :meth:`Stage.load_state_dict`."""
        if self.resume is None:
            return {}
        part: dict[str, Any] = {"failures": self.resume.failures.get(stage.name, 0)}
        if stage is self.reservoir:
            part["reservoir"] = self.resume.reservoir
        return part
