"""Re-deciding an ``executor="auto"`` stage's placement from the rates its epoch measured.

The probe (:class:`aioloader._run.placement.PlacementProbe`) decides on a stage's first block; a
function whose cost changes later (a dataset whose long samples come after the short ones) can
leave it wrong for the rest of the run. At the end of each whole epoch the stage hands
:func:`review` what it measured after its executor's first result (the pool's start left out):

- in processes: the items, the seconds the stage waited on the pool for them, and the
  function's own seconds for them in the workers. Processes stay while they deliver at least
  :data:`PROCESSES_PAY` times the rate the function would run at inline (its measured cost);
  otherwise the stage goes inline, unless a sample costs over
  :data:`~aioloader._run.placement.THREAD_ABOVE_S` (inline, it would hold the loop that long; a
  fused stage's rates and costs are per sample, not per batch). A stage slowed by its consumer or its input waits on neither
  in those seconds, so only a pool that is itself too slow is moved.
- inline: the function's CPU time per item on the loop thread (a busy machine's waits for a
  core are not its cost; a function that waits on I/O reads cheap, and is not moved). One now clearly above :data:`~aioloader._run.placement.INLINE_BELOW_S`
  (cheap when probed) is placed again on that cost, with the thread trial's GIL reading on the
  last block's inputs (:func:`aioloader._run.thread_trial.thread_trial`).

The switch takes effect at the next epoch (:class:`~aioloader._run.decisions.Decisions`); the
placement never changes the data. A stage never goes back to a kind a review moved it from (the
two rules must not take turns), and a review needs :data:`MIN_CHUNKS` results to judge from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aioloader._run.placement import INLINE_BELOW_S, THREAD_ABOVE_S, place
from aioloader._run.thread_trial import thread_trial

__all__ = ["MIN_CHUNKS", "PROCESSES_PAY", "EpochRates", "review"]

PROCESSES_PAY = 1.1  # a pool's measured rate over the inline rate the function's cost predicts
MIN_CHUNKS = 12  # results after the first that a review judges from
_COSTLIER = 2.0  # an inline function re-placed: its cost above this many times INLINE_BELOW_S


@dataclass
class EpochRates:
    """What a stage measured in one epoch after its executor's first result."""

    items: int = 0  # samples (a fused stage's work items are batches of them)
    units: int = 0  # the work's items: samples, or a fused stage's batches
    chunks: int = 0
    waited_s: float = 0.0  # the stage waiting on its pool for results
    fn_s: float = 0.0  # the function's seconds (workers' time; inline: the loop thread's CPU)
    started: bool = False  # the first result is in: later ones count
    last_inputs: Sequence[Any] = ()  # an inline stage's last chunk's inputs (a list or an array)

    def ran(self, items: int, fn_s: float, *, units: int | None = None) -> None:
        """A chunk of ``items`` samples (in ``units`` work items, when not one each) done,
        ``fn_s`` of the function's time."""
        if self.started:
            self.items += items
            self.units += items if units is None else units
            self.fn_s += fn_s

    def waited(self, seconds: float) -> None:
        """A result taken, after waiting ``seconds`` for it (the first one starts the count)."""
        if self.started:
            self.chunks += 1
            self.waited_s += seconds
        self.started = True


def review(
    kind: str,
    rates: EpochRates,
    *,
    work: Callable[[list[Any]], Any],
    trial: bool,
    can_process: bool,
    picklable: Callable[[], bool],
    left: set[str],
    epoch: int,
    tried: Callable[[], bool] = lambda: False,
) -> tuple[str, dict[str, Any]] | None:
    """``(new kind, why)`` when the epoch's rates say ``kind`` was wrong, else None. ``work``
    and ``trial``: the stage's chunk function and whether it may run again on the inputs (the
    thread trial); ``left``: the kinds a review already moved this stage from; ``tried()``:
    whether a review ran the thread trial for this stage already, and notes that it runs now
    (once a stage: a trial that kept it inline is not run again at each epoch's end)."""
    if rates.chunks < MIN_CHUNKS or rates.items <= 0 or rates.fn_s <= 0:
        return None
    cost = rates.fn_s / rates.items  # a sample's
    unit_cost = rates.fn_s / max(rates.units, 1)  # a work item's (a fused stage's batch)
    why: dict[str, Any] = {"epoch": epoch, "from": kind, "cost_us": round(cost * 1e6, 1), "chunks": rates.chunks}
    if kind == "process":
        measured = rates.items / max(rates.waited_s, 1e-9)
        inline = 1.0 / cost
        if measured >= PROCESSES_PAY * inline or cost > THREAD_ABOVE_S or "inline" in left:
            return None
        why.update(measured_per_s=round(measured), inline_per_s=round(inline))
        return "inline", {**why, "to": "inline"}
    if kind == "inline" and trial and len(rates.last_inputs) and cost > _COSTLIER * INLINE_BELOW_S:
        if tried():
            return None
        reading = thread_trial(work, list(rates.last_inputs), unit_cost)
        work_s = rates.fn_s
        decision = place(unit_cost, reading.holds_gil, True, can_process, work_s=work_s)
        if decision == "process" and not picklable():
            decision = place(unit_cost, reading.holds_gil, False, can_process, work_s=work_s)
        if decision == "inline" or decision in left:
            return None
        why.update(thread_speedup=round(reading.speedup, 2), parallel=round(reading.parallel or 0.0, 2))
        return decision, {**why, "to": decision}
    return None
