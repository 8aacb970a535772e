"""The adaptive batch stage: a batch size that follows the training step time (seed 001's
``AdaptiveDataLoader``), deterministic and resumable.

The consumer's step time for batch ``i`` is ``step[i]``: given by ``Loader.record_step_time``,
else measured by the iteration as the time from handing out batch ``i`` to the request for the
next one. Batch sizes follow one rule::

    size[0] = initial_size
    size[j] = adjust(size[j-1], step[j-1-lag])      (size[j-1] while j-1-lag < 0)

``adjust`` multiplies by ``factor`` when the step took less than ``target_step_s x (1 -
tolerance)`` and divides by it when it took more than ``target_step_s x (1 + tolerance)``,
within ``[min_size, max_size]``. The stage forms batch ``j`` only once ``step[j-1-lag]`` is
known, so up to ``lag + 1`` batches are prepared ahead and the sizes are a pure function of the
step times, whatever the timing of the pipeline. Sizes change at batch boundaries only.

The :class:`StepSizer` (held by the Loader's runtime, across epochs) counts the batches the
consumer received; ``state_dict()`` saves that count, the last delivered batch's size and the
step times not applied yet, so a resumed loader forms the same next batches as the
uninterrupted one given the same step times.
"""

from __future__ import annotations

import asyncio
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

from aioloader._run.stages._grouping import GroupStage, unknown_length
from aioloader._run.stages.base import BuildContext, StageSpec
from aioloader._spec import check_bool, check_callable, check_positive_int
from aioloader.collate import stack


@dataclass(frozen=True, slots=True)
class AdaptiveBatchSpec(StageSpec):
    makes_batches: ClassVar[bool] = True
    initial_size: int
    target_step_s: float
    min_size: int = 1
    max_size: int | None = None
    factor: int = 2
    tolerance: float = 0.25
    lag: int = 2
    collate: Callable[[list[Any]], Any] | None = None
    drop_last: bool = False

    def length(self, n: int) -> int:
        """For ``len(loader)``: the batch count depends on the step times."""
        raise unknown_length(self.name)

    def adjust(self, size: int, step_s: float) -> int:
        if step_s < self.target_step_s * (1 - self.tolerance):
            size *= self.factor
        elif step_s > self.target_step_s * (1 + self.tolerance):
            size //= self.factor
        top = self.max_size if self.max_size is not None else size
        return max(self.min_size, min(size, top))

    def build(self, ctx: BuildContext) -> AdaptiveBatchStage:
        return AdaptiveBatchStage(self, ctx.runtime.step_sizer(self))


class StepSizer:
    """Step times and batch sizes over a Loader's life (see the module docstring). The
    consumer's thread records steps; the stage waits for them on the loop."""

    def __init__(self, spec: AdaptiveBatchSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self.delivered = 0  # batches the consumer received, over all epochs
        self._sizes: dict[int, int] = {}  # decided sizes, from delivered - 1 on
        self._steps: dict[int, float] = {}  # step times, from delivered - 1 - lag on
        self._handed_at: float | None = None
        self._waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    # consumer side (any thread)
    def handed_out(self) -> None:
        """The consumer received the next batch."""
        with self._lock:
            self.delivered += 1
            self._handed_at = perf_counter()
            self._prune()

    def step_done(self) -> None:
        """The consumer asks for the next batch: the last one's step, if not recorded, took
        the time since it was handed out."""
        with self._lock:
            if self._handed_at is not None and self.delivered - 1 not in self._steps:
                self._set(self.delivered - 1, perf_counter() - self._handed_at)

    def record(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds >= 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        with self._lock:
            batch = self.delivered - 1
            if batch < 0:
                raise ValueError("record_step_time: no batch has been delivered yet")
            if batch in self._steps:
                raise ValueError(f"record_step_time: the step time of batch {batch} is recorded already")
            self._set(batch, float(seconds))

    def _set(self, batch: int, seconds: float) -> None:
        self._steps[batch] = seconds
        for loop, future in self._waiters.pop(batch, []):
            if not loop.is_closed():  # closed: the run that waited was stopped with its loop
                loop.call_soon_threadsafe(_resolve, future)

    def _prune(self) -> None:
        low = self.delivered - 1
        for j in [j for j in self._sizes if j < low]:
            del self._sizes[j]
        for i in [i for i in self._steps if i < low - self.spec.lag]:
            del self._steps[i]

    # stage side (the loop)
    def start_run(self) -> int:
        """A new run forms batches from the next undelivered one: sizes decided for batches
        a stopped run never delivered are decided again (the same way)."""
        with self._lock:
            for j in [j for j in self._sizes if j >= self.delivered]:
                del self._sizes[j]
            return self.delivered

    async def size_of(self, j: int) -> int:
        """``size[j]``, waiting for ``step[j-1-lag]`` when it is not known yet."""
        spec = self.spec
        if j == 0:
            return spec.initial_size
        i = j - 1 - spec.lag
        while True:
            with self._lock:
                previous = self._sizes.get(j - 1, spec.initial_size)
                if i < 0:
                    size = previous
                elif i in self._steps:
                    size = spec.adjust(previous, self._steps[i])
                else:
                    loop = asyncio.get_running_loop()
                    future = loop.create_future()
                    self._waiters.setdefault(i, []).append((loop, future))
                    size = None
                if size is not None:
                    self._sizes[j] = size
                    return size
            await future

    # state
    def state(self) -> dict[str, Any]:
        """What a resumed loader needs: the batches delivered, the last one's size and the
        step times still to apply (the current step's counted as done now, as it will be)."""
        self.step_done()
        with self._lock:
            low = self.delivered - 1 - self.spec.lag
            return {
                "batches": self.delivered,
                "size": self._sizes.get(self.delivered - 1, self.spec.initial_size),
                "steps": [[i, t] for i, t in sorted(self._steps.items()) if i >= low],
            }

    def restore(self, state: Any) -> None:
        try:
            batches, size = int(state["batches"]), int(state["size"])
            steps = {int(i): float(t) for i, t in state["steps"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the state's 'adaptive' field is malformed: {state!r}") from exc
        with self._lock:
            self.delivered = batches
            self._sizes = {batches - 1: size} if batches else {}
            self._steps = steps
            self._handed_at = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AdaptiveBatchStage(GroupStage):
    def __init__(self, spec: AdaptiveBatchSpec, sizer: StepSizer) -> None:
        super().__init__(spec.name, spec.collate or stack)  # a size, not lengths: stack
        self._spec = spec
        self._sizer = sizer

    async def run(self) -> None:
        sizer = self._sizer
        j = sizer.start_run()
        size = await sizer.size_of(j)
        keys: list[Any] = []
        seqs: list[Any] = []
        values: list[Any] = []
        async for block in self.input:
            self.stats.items_in += len(block)
            for key, seq, value in zip(block.keys, block.seqs, block.values, strict=True):
                keys.append(key)
                seqs.append(seq)
                values.append(value)
                if len(values) == size:
                    await self.emit(keys, seqs, values)
                    keys, seqs, values = [], [], []
                    j += 1
                    size = await sizer.size_of(j)
        if values and not self._spec.drop_last:
            await self.emit(keys, seqs, values)
        self.output.close()


def adaptive_batch_spec(
    initial_size: int,
    target_step_s: float,
    min_size: int,
    max_size: int | None,
    factor: int,
    tolerance: float,
    lag: int,
    collate: Callable[[list[Any]], Any] | None,
    drop_last: bool,
) -> AdaptiveBatchSpec:
    """Validate ``Loader.adaptive_batch`` arguments (naming each) and build the spec."""
    check_positive_int(initial_size, "initial_size")
    check_positive_int(min_size, "min_size")
    if max_size is not None:
        check_positive_int(max_size, "max_size", minimum=min_size)
    if not min_size <= initial_size <= (max_size if max_size is not None else initial_size):
        raise ValueError(f"initial_size must be within [min_size, max_size], got {initial_size}")
    check_positive_int(factor, "factor", minimum=2)
    check_positive_int(lag, "lag", minimum=0)
    if (
        isinstance(target_step_s, bool)
        or not isinstance(target_step_s, numbers.Real)
        or not target_step_s > 0
    ):
        raise ValueError(f"target_step_s must be a number of seconds > 0, got {target_step_s!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a fraction in [0, 1), got {tolerance!r}")
    if collate is not None:
        check_callable(collate, "collate")
    return AdaptiveBatchSpec(
        "adaptive_batch",
        initial_size,
        float(target_step_s),
        min_size,
        max_size,
        factor,
        float(tolerance),
        lag,
        collate,
        check_bool(drop_last, "drop_last"),
    )
