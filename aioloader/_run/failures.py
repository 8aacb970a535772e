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

    def fail(self, key: Any, exc: BaseException) -> None:
        """Apply the policy to one failed item: raise, or record it (and raise past the budget)."""
        if self.on_error == "raise":
            raise annotate(exc, self.stage, key)
        self.errors.record(self.stage, key, exc)
        self.failed += 1
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
