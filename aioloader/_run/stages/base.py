"""The stage contract: what every stage spec declares and what every built stage may do.

A **spec** is the frozen record a ``Loader`` method appends to the pipeline. It declares, with
defaults here, everything the graph (:mod:`aioloader._run.graph`) and the Loader's length,
resume and fingerprint rules need, so neither ever asks which kind of spec it holds:

- ``build(ctx)``: its stage for one run, from a narrow :class:`BuildContext` (never the run);
- ``length(n)``: how many outputs ``n`` inputs give (``TypeError`` when the data decides);
- ``fingerprint()``: its part of a resume state's fingerprint (kind, name, order settings);
- ``resume_problem(method)``: why ``state_dict()`` cannot place the consumer exactly after it;
- ``step_problem()``: why the keys consumed after k outputs would differ between ranks;
- ``one_to_one()``: whether it hands on each item, in order, as one item;
- the class flags: whether it makes batches or splits them, keeps the item count known,
  renumbers its output (the shuffle buffer), and the depth of its output channel;
  ``upstream_depth()`` for a spec that only sizes the channel before it (prefetch).

A **stage** is the running part: ``input``/``output`` channels set by the graph, a ``stats``
record, one coroutine ``run()`` that closes its output when its input is done, an optional
``failure_policy`` (a budget that carries over a resume), ``close()`` once every task ended and
``drain(timeout)`` to wait for calls still running in threads, and its state:

- ``state_dict(cut)``: its part of a resume state once the consumer has every item numbered
  below ``cut``. Stages run ahead of the consumer, so the cut is not theirs to know: the run's
  :class:`~aioloader._run.delivery.Delivery` computes it (source positions before a shuffle
  buffer, the buffer's emission numbers from it on) and assembles the parts into
  ``Loader.state_dict()``'s ``position``, ``prefix``, ``reservoir`` and ``failures``;
- ``load_state_dict(state)``: on a resumed run, after the stage is built and before it runs,
  the part it gave (the ``Delivery`` cuts it from the saved state).

By default a stage's state is the failures its budget spent before the cut (a stage without a
budget that carries over has none); the shuffle buffer adds its content and counters. A
source stage is built at the resume position and prefix (by the graph, from ``ctx.resume``). The
one state that outlives a run, ``adaptive_batch``'s step sizes, is the Loader's (its Runtime's
step sizer), saved under ``adaptive`` even between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from aioloader._run.channel import Channel
    from aioloader._run.decisions import Decisions
    from aioloader._run.failures import FailurePolicy
    from aioloader.monitor.stats import ErrorLog, StageStats
    from aioloader.order.resume import ResumePoint
    from aioloader.order.sharding import RankInfo

__all__ = ["DEFAULT_DEPTH", "SAMPLE_DEPTH", "BuildContext", "Stage", "StageSpec"]

# Channel depth in blocks: sample blocks are small and cheap stages pay a task wake-up per
# empty/full transition, so they get a deeper channel than batches (``prefetch(n)`` sets it).
DEFAULT_DEPTH = 2
SAMPLE_DEPTH = 4


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a stage is built from: the run's epoch, seed and rank, its error log, the Loader's
    long-lived resources, where the run resumes, and this stage's place in the graph."""

    epoch: int
    seed: int
    rank: RankInfo
    errors: ErrorLog
    decisions: Decisions  # executor placements kept from earlier epochs
    runtime: Any = None  # the Loader's Runtime (process pools, step sizers); None for a bare run
    resume: ResumePoint | None = None
    expected_items: int | None = None  # the items this stage receives in the epoch, when known
    feeds_consumer: bool = False  # its output is the run's output


class Stage:
    """The running part of a stage (see the module docstring); subclasses implement ``run``."""

    name: str
    stats: StageStats
    input: Channel
    output: Channel
    failure_policy: FailurePolicy | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def state_dict(self, cut: int) -> dict[str, Any]:
        """Its part of a resume state (JSON values) once the consumer has every item numbered
        below ``cut``: by default ``{"failures": n}``, the items its budget skipped before
        ``cut`` when that budget carries over a resume, and ``{}`` when none."""
        policy = self.failure_policy
        if policy is None or not policy.carries_over:
            return {}
        failed = policy.failed_before(cut)
        return {"failures": failed} if failed else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back the part :meth:`state_dict` gave (a resumed run, before it starts): by
        default the failures spent, so the budget gives up at the same sample as before."""
        policy = self.failure_policy
        if policy is not None and policy.carries_over:
            policy.resume(int(state.get("failures", 0)))

    def close(self) -> None:
        """After the run's tasks ended: release what the stage holds (no waiting)."""

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for calls the stage started that are still running."""


@dataclass(frozen=True, slots=True)
class StageSpec:
    """Common base: every stage has a user-facing name, unique within a pipeline."""

    name: str
    # why state_dict() cannot place the consumer exactly after this stage (it holds items
    # across outputs or reorders them), or None when it can
    resume_blocker: ClassVar[str | None] = None
    makes_batches: ClassVar[bool] = False  # its items are batches (until an unbatch)
    unbatches: ClassVar[bool] = False  # it splits batches back into items
    keeps_count: ClassVar[bool] = True  # as many outputs as inputs (the next stage's expected_items)
    renumbers: ClassVar[bool] = False  # its output seqs are emission numbers (the shuffle buffer)
    output_depth: ClassVar[int | None] = None  # its output channel's depth; None: the current one
    fingerprint_kind: ClassVar[str | None] = None  # its kind in a fingerprint; None: the class name

    def build(self, ctx: BuildContext) -> Stage:
        raise TypeError(f"stage spec {type(self).__name__} ({self.name!r}) builds no stage")

    def length(self, n: int) -> int:
        """For ``len(loader)``: the outputs of ``n`` inputs; ``TypeError`` when not known."""
        return n

    def fingerprint(self) -> dict[str, Any]:
        """Its part of a state's fingerprint: kind, name and order-relevant settings."""
        described: dict[str, Any] = {"kind": self.fingerprint_kind or type(self).__name__, "name": self.name}
        for attribute in ("size", "drop_last", "buffer_size", "seed", "ordered"):
            value = getattr(self, attribute, None)
            if isinstance(value, (int, bool, str)):
                described[attribute] = value
        return described

    def resume_problem(self, method: str) -> str | None:
        """Why ``method`` (``state_dict``/``load_state_dict``) refuses this pipeline, or None."""
        if self.resume_blocker is None:
            return None
        return f"{method}: stage {self.name!r} cannot be resumed exactly: {self.resume_blocker}"

    def step_problem(self) -> str | None:
        """Why the keys a rank consumed after k outputs depend on its data (so another rank's
        state does not place this one), or None when they are the same on every rank."""
        return f"stage {self.name!r} ({type(self).__name__}) makes its outputs from the data"

    def one_to_one(self) -> bool:
        """Whether it hands on each item, in order, as one item."""
        return False

    def upstream_depth(self) -> int | None:
        """The depth this spec gives the channel before it, for a spec that builds no stage."""
        return None

    def after_batches(self) -> StageSpec:
        """This spec placed where its items are batches (a map then uses them as units)."""
        return self

    def block_hint(self) -> int | None:
        """The block size this stage wants from the source (a batch's size), 0 when the blocks
        it receives say nothing about those after it (a filter), None to look further."""
        return None

    def source_failures(self) -> tuple[str, int | float] | None:
        """``(on_error, max_failures)`` the source's reads take when this is the first stage
        with one (the decode map), or None."""
        return None
