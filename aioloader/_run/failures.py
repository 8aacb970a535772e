"""A stage's failure policy, shared by every stage with ``on_error``/``max_failures`` (map,
validate): raise the failure named by stage and key, or record it in the run's error log and
skip the item until more failed than ``max_failures`` (a count, or a fraction of the items
expected in the epoch; of those seen so far, after the first 100, for a stream)."""

from __future__ import annotations

import array
import bisect
from typing import Any

from aioloader.errors import TooManyFailures, annotate
from aioloader.monitor.stats import ErrorLog

_FRACTION_MIN_SEEN = 100


_MAX_MARKS = 4096  # chunks remembered for the resume state; older ones fold into counts


def _position(seq: Any) -> Any:
    """An item's position: its seq, or a batch's last member's."""
    while isinstance(seq, list):
        seq = seq[-1] if seq else None
    return seq


class FailurePolicy:
    """The budget of one stage, and what a resume state needs of it: how many items before a
    position failed and were seen. The stage reports each chunk it ran (:meth:`saw`, in order)
    and each failure with its position; a run resumed from a state starts from those counts
    (:meth:`resume`), so ``max_failures`` counts as in the uninterrupted run."""

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
        self.seen = 0  # items attempted
        self.failed = 0
        # counts before the first remembered chunk (a resume's, or chunks folded away)
        self._base_seen = 0
        self._base_failed = 0
        self._marks_last: list[int] = []  # per chunk run: its last item's position,
        self._marks_seen: list[int] = []  # the items seen before it,
        self._marks_seqs: list[int | array.array[int]] = []  # and its positions (or the first)
        self._failed_at: list[int] = []  # positions of the failed items, in order

    def resume(self, failed: int, seen: int) -> None:
        """Continue a run that had ``failed`` skips among ``seen`` items before the resume point."""
        self.failed = self._base_failed = failed
        self.seen = self._base_seen = seen

    def saw(self, seqs: list[Any]) -> None:
        """The stage ran a chunk of items at positions ``seqs`` (chunks come in order)."""
        if self.on_error == "skip" and seqs:  # (raise ends the run: no budget to resume)
            positions = [_position(seq) for seq in seqs]
            first, last = positions[0], positions[-1]
            if isinstance(first, int) and isinstance(last, int):
                self._marks_last.append(last)
                self._marks_seen.append(self.seen)
                # a run of consecutive positions (no filter before) is known by its ends
                consecutive = last - first + 1 == len(positions)
                self._marks_seqs.append(first if consecutive else array.array("q", positions))
                if len(self._marks_last) > _MAX_MARKS:
                    self._fold(_MAX_MARKS // 2)
        self.seen += len(seqs)

    def _fold(self, count: int) -> None:
        """Forget the oldest ``count`` chunks, keeping their items in the base counts (a state
        saved that far behind the stage is approximate)."""
        self._base_seen = self._marks_seen[count]
        cut = self._marks_last[count - 1]
        folded = bisect.bisect_right(self._failed_at, cut)
        self._base_failed += folded
        del self._failed_at[:folded]
        del self._marks_last[:count], self._marks_seen[:count], self._marks_seqs[:count]

    def before(self, position: int) -> tuple[int, int]:
        """(failed, seen): the items before ``position`` that failed, and that were seen."""
        return self._base_failed + bisect.bisect_left(self._failed_at, position), self._seen_before(position)

    def _seen_before(self, position: int) -> int:
        i = bisect.bisect_left(self._marks_last, position)  # the first chunk not wholly before
        if i == len(self._marks_last):
            return self.seen
        chunk = self._marks_seqs[i]  # its positions, or the first of consecutive ones
        inside = max(0, position - chunk) if isinstance(chunk, int) else bisect.bisect_left(chunk, position)
        return self._marks_seen[i] + inside

    def fail(self, key: Any, exc: BaseException, seq: Any = None) -> None:
        """Apply the policy to one failed item (at position ``seq``, or a batch's list of
        them): raise, or record it (and raise past the budget)."""
        if self.on_error == "raise":
            raise annotate(exc, self.stage, key)
        self.errors.record(self.stage, key, exc)
        self.failed += 1
        position = _position(seq)
        if isinstance(position, int):
            bisect.insort(self._failed_at, position)
        budget = self.max_failures
        if isinstance(budget, int):
            exceeded = self.failed > budget
        elif self.expected is not None:
            exceeded = self.failed > budget * self.expected
        else:  # of the items up to this one: the same whatever the chunks (a resumed run's differ)
            seen = self._seen_before(position + 1) if isinstance(position, int) else self.seen
            exceeded = seen >= _FRACTION_MIN_SEEN and self.failed > budget * seen
        if exceeded:
            raise TooManyFailures(
                f"stage {self.stage!r}: {self.failed} samples failed, more than max_failures={budget}"
                f" (last: key {key!r}, {type(exc).__name__}: {exc})",
                stage=self.stage,
                key=key,
            ) from exc
