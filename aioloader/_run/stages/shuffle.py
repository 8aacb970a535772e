"""The shuffle-buffer stage: ``Loader.shuffle(buffer_size)``, a seeded reservoir for streams.

Items keep their keys; their seqs become emission numbers, so the consumer's position is a
position in this stage's output, which :meth:`state_at` maps back to the buffer's content
(input seqs, i.e. keys: never payloads) and the source position to resume from. The undo log
is trimmed as the consumer receives items, so it holds only what is in flight.

Shuffling batches (a ``.shuffle`` after a batching stage) works, but cannot be resumed exactly
(a resumed source could not regroup the buffered batches' members): ``state_dict()`` raises.
A resumed run whose source ends before resending the buffer's saved items raises too, rather
than lose them.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._run.stages.base import BuildContext, Stage, StageSpec
from aioloader.errors import DataLoadingError
from aioloader.monitor.stats import StageStats
from aioloader.order.reservoir import Reservoir, ReservoirState

_HISTORY = 1 << 22  # a backstop; the log is trimmed to what is in flight


@dataclass(frozen=True, slots=True)
class ShuffleSpec(StageSpec):
    buffer_size: int
    seed: int | None = None

    renumbers: ClassVar[bool] = True

    def build(self, ctx: BuildContext) -> ShuffleStage:
        return ShuffleStage(self, ctx)


def _seq_of(entry: tuple[Any, Any, Any]) -> Any:
    return entry[1]


def _output_seq(input_seq: Any, emission: int) -> Any:
    """The seq of an emitted entry: its emission number; a batch (its seq the list of its
    members' seqs) keeps one entry per member, so ``unbatch`` can still split it."""
    if isinstance(input_seq, list) and input_seq:
        return [emission] * len(input_seq)
    return emission


def _holds_batches(state: ReservoirState) -> bool:
    """True when the buffer's inputs are batches (their seqs are lists of members' seqs)."""
    return isinstance(state.last_input, list) or any(isinstance(s, list) for s in state.slots)


class ShuffleStage(Stage):
    def __init__(self, spec: ShuffleSpec, ctx: BuildContext) -> None:
        self.name = spec.name
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(spec.name)
        self._size = spec.buffer_size
        self._seed = ctx.seed if spec.seed is None else spec.seed
        self._epoch = ctx.epoch
        self.reservoir = Reservoir(self._size, self._seed, self._epoch, history=_HISTORY, seq_of=_seq_of)
        self._block = 64

    def state_dict(self, cut: int) -> dict[str, Any]:
        """The buffer once the consumer has emission ``cut`` and everything before it: the
        source position after its last input, the positions it held (read again first on a
        resume) and its counters."""
        state = self.state_at(cut)
        return {
            "position": 0 if state.last_input is None else int(state.last_input) + 1,
            "prefix": [int(s) for s in state.slots],
            "reservoir": state.to_json(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refill the buffer's counters from a saved ``reservoir`` (its items come back from
        the source, whose resumed run sends the ``prefix`` first)."""
        saved = state.get("reservoir")
        if saved is not None:
            self.reservoir = Reservoir.restored(
                self._size,
                self._seed,
                self._epoch,
                ReservoirState.from_json(saved),
                history=_HISTORY,
                seq_of=_seq_of,
            )

    def state_at(self, emitted: int) -> ReservoirState:
        """The buffer's state after emission ``emitted``; ``ValueError`` when it shuffles
        batches, whose members a resumed source could not regroup the same way."""
        state = self.reservoir.state_at(emitted)
        if _holds_batches(state):
            raise ValueError(
                f"state_dict: stage {self.name!r} shuffles batches (it follows a batching stage), "
                "which cannot be resumed exactly; shuffle the items before batching them"
            )
        return state

    async def run(self) -> None:
        reservoir = self.reservoir
        keys: list[Any] = []
        seqs: list[Any] = []
        values: list[Any] = []
        async for block in self.input:
            started = perf_counter()
            self.stats.items_in += len(block)
            for entry in zip(block.keys, block.seqs, block.values, strict=True):
                out = reservoir.push(entry)
                if out is not None:
                    keys.append(out[0])
                    seqs.append(_output_seq(out[1], reservoir.emitted - 1))
                    values.append(out[2])
            self.stats.busy_s += perf_counter() - started
            if len(values) >= self._block or (values and self.output.starved()):
                await self._emit(keys, seqs, values)
                keys, seqs, values = [], [], []
        self._check_refilled()
        while len(reservoir):
            out = reservoir.pop()
            keys.append(out[0])
            seqs.append(_output_seq(out[1], reservoir.emitted - 1))
            values.append(out[2])
            if len(values) >= self._block:
                await self._emit(keys, seqs, values)
                keys, seqs, values = [], [], []
        if values:
            await self._emit(keys, seqs, values)
        self.output.close()

    def _check_refilled(self) -> None:
        """At the end of the input of a resumed run: every item the buffer held when the state
        was saved must have come back, else resuming would lose them without a word."""
        missing = self.reservoir.refilling
        if missing:
            raise DataLoadingError(
                f"resume: the source ended before resending {missing} of the items that were in "
                f"the shuffle buffer when the state was saved; they would be lost",
                stage=self.name,
            )

    async def _emit(self, keys: list[Any], seqs: list[Any], values: list[Any]) -> None:
        self.stats.items_out += len(values)
        await self.output.put(Block(keys, seqs, values))

    def trim(self, delivered: int) -> None:
        """The consumer has everything before emission ``delivered``: forget how to undo it."""
        self.reservoir.forget_before(delivered)
