"""A stage's failure policy, shared by every stage with ``on_error``/``max_failures`` (map,
validate): raise the failure named by stage and key, or record it in the run's error log and
skip the item until more failed than ``max_failures`` (a count, or a fraction of the items
expected in the epoch; of those seen so far, after the first 100, for a stream).

A count budget carries over a resume: the state saves how many items before the resume point
failed (:meth:`FailurePolicy.failed_before`), and the resumed run starts from there
(:meth:`FailurePolicy.resume`), so it gives up at the same sample as the uninterrupted run. A
fractional budget starts again at a resume: its count of items seen would have to be kept per
position, and the resumed run reads the shuffle buffer's items again."""

from __future__ import annotations

import bisect
from typing import Any

from aioloader.errors import TooManyFailures, annotate
from aioloader.monitor.stats import ErrorLog

_FRACTION_MIN_SEEN = 100


def _position(seq: Any) -> Any:
    """An item's position: its seq, or a batch's last member's."""
    while isinstance(seq, list):
        seq = seq[-1] if seq else None
    return seq


class FailurePolicy:
    def __init__(
        self,
        stage: str,
        on_error: str,
        max_failures: int | float,
        errors: ErrorLog,
        expected: int | None = None,
    ) -> None:
        self.stage = stage
        self.on_error = on_error
        self.max_failures = max_failures
        self.errors = errors
        self.expected = expected
        self.seen = 0  # items attempted, updated by the stage
        self.failed = 0
        self._resumed = 0  # failures before the resume point, in an earlier run
        # positions of this run's skipped items, for the resume state: a count budget only
        # (it holds at most max_failures + 1 of them; the run fails past that)
        self._failed_at: list[int] | None = [] if self.carries_over else None

    @property
    def carries_over(self) -> bool:
        """Whether a resume state keeps this budget: skipping, with a count."""
        return self.on_error == "skip" and isinstance(self.max_failures, int)

    def resume(self, failed: int) -> None:
        """Continue a run whose items before the resume point had ``failed`` skips."""
        self.failed = self._resumed = failed

    def failed_before(self, position: int) -> int:
        """Items skipped before ``position``: what a resume from there has spent of the budget."""
        return self._resumed + bisect.bisect_left(self._failed_at or [], position)

    def fail(self, key: Any, exc: BaseException, seq: Any = None) -> None:
        """Apply the policy to one failed item (at position ``seq``, or a batch's list of
        them): raise, or record it (and raise past the budget)."""
        if self.on_error == "raise":
            raise annotate(exc, self.stage, key)
        self.errors.record(self.stage, key, exc)
        self.failed += 1
        position = _position(seq)
        if self._failed_at is not None and isinstance(position, int):
            bisect.insort(self._failed_at, position)
        budget = self.max_failures
        if isinstance(budget, int):
            exceeded = self.failed > budget
        elif self.expected is not None:
            exceeded = self.failed > budget * self.expected
        else:
            exceeded = self.seen >= _FRACTION_MIN_SEEN and self.failed > budget * self.seen
        if exceeded:
            raise TooManyFailures(
                f"stage {self.stage!r}: {self.failed} samples failed, more than max_failures={budget}"
                f" (last: key {key!r}, {type(exc).__name__}: {exc})",
                stage=self.stage,
                key=key,
            ) from exc
