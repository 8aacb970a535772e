"""A stage's failure policy, shared by every stage with ``on_error``/``max_failures`` (map,
validate): raise the failure named by stage and key, or record it in the run's error log and
skip the item until more failed than ``max_failures`` (a count, or a fraction of the items
expected in the epoch; of those seen so far, after the first 100, for a stream)."""

from __future__ import annotations

from typing import Any

from aioloader.errors import TooManyFailures, annotate
from aioloader.monitor.stats import ErrorLog

_FRACTION_MIN_SEEN = 100


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
        self._resumed_failed = 0  # skipped before the resume point, in an earlier run
        self._failed_seqs: list[int] = []  # this run's skipped items' positions, for the state

    def resume(self, failed: int, seen: int) -> None:
        """Continue a run whose samples before the resume point had ``failed`` skips among
        ``seen`` (the position: the items before it, each attempted or filtered out)."""
        self.failed = self._resumed_failed = failed
        self.seen = seen

    def failed_before(self, position: int) -> int:
        """Items skipped whose position is before ``position`` (what a resume from there has
        already spent of the budget)."""
        return self._resumed_failed + sum(1 for seq in self._failed_seqs if seq < position)

    def fail(self, key: Any, exc: BaseException, seq: Any = None) -> None:
        """Apply the policy to one failed item (at position ``seq``, or a batch's list of
        them): raise, or record it (and raise past the budget)."""
        if self.on_error == "raise":
            raise annotate(exc, self.stage, key)
        self.errors.record(self.stage, key, exc)
        self.failed += 1
        while isinstance(seq, list):  # a batch: its last member decides
            seq = seq[-1] if seq else None
        if isinstance(seq, int):
            self._failed_seqs.append(seq)
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
