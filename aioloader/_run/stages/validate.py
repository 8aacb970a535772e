"""The validate stage: checks every item (type, shape, dtype, value range) and raises or skips.

A check is any callable taking a sample and returning ``None`` (or ``True``) when it is fine, else
a problem: a message (raised as :class:`DataFormatError`), ``False`` (a generic
:class:`DataFormatError`), or a :class:`DataLoadingError` instance (raised as it is, e.g. a
:class:`DataCorruptionError` for values out of range). ``al.transforms.Check`` is the
declarative one. Under ``on_error="skip"`` a failing item is dropped and recorded with its key
in ``stats()["errors"]``; past ``max_failures`` the stage raises :class:`TooManyFailures`.
Checks are cheap, so they run inline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from aioloader._run.channel import Channel
from aioloader._run.failures import FailurePolicy
from aioloader._run.stages.base import BuildContext, Stage, StageSpec
from aioloader._spec import ON_ERROR, check_callable, check_choice, check_max_failures, fn_name
from aioloader.errors import DataFormatError, DataLoadingError, annotate
from aioloader.monitor.stats import ErrorLog, StageStats


@dataclass(frozen=True, slots=True)
class ValidateSpec(StageSpec):
    checks: tuple[Callable[[Any], Any], ...]
    on_error: str = "raise"
    max_failures: int | float = 0

    def length(self, n: int) -> int:
        """For ``len(loader)``: unchanged when failures raise; unknown when they are skipped."""
        if self.on_error == "skip":
            raise TypeError(f"len() is not known: stage {self.name!r} may skip items")
        return n

    def build(self, ctx: BuildContext) -> ValidateStage:
        return ValidateStage(self, ctx.errors)

    def step_problem(self) -> str | None:
        return f"stage {self.name!r} skips failed samples" if self.on_error == "skip" else None


def problem_of(check: Callable[[Any], Any], sample: Any, stage: str, key: Any) -> DataLoadingError | None:
    """Run one check; its problem as an exception naming the stage and key, or ``None``."""
    result = check(sample)
    if result is None or result is True:
        return None
    if isinstance(result, DataLoadingError):
        exc = result
    elif result is False:
        exc = DataFormatError(f"sample key {key!r} failed check {check!r}")
    else:
        exc = DataFormatError(f"sample key {key!r}: {result}")
    if exc.stage is None:
        exc.stage = stage
    if exc.key is None:
        exc.key = key
    return exc


class ValidateStage(Stage):
    def __init__(self, spec: ValidateSpec, errors: ErrorLog) -> None:
        self.name = spec.name
        self._spec = spec
        self.failure_policy = FailurePolicy(spec.name, spec.on_error, spec.max_failures, errors)
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(spec.name)

    def _problem(self, key: Any, value: Any) -> DataLoadingError | None:
        for check in self._spec.checks:
            try:
                exc = problem_of(check, value, self.name, key)
            except Exception as raised:  # a check that raises reports the problem itself
                raise annotate(raised, self.name, key) from None
            if exc is not None:
                return exc
        return None

    async def run(self) -> None:
        async for block in self.input:
            started = perf_counter()
            self.stats.items_in += len(block)
            keep: list[int] = []
            for index, (key, value) in enumerate(zip(block.keys, block.values, strict=True)):
                self.failure_policy.seen += 1
                exc = self._problem(key, value)
                if exc is None:
                    keep.append(index)
                else:
                    self.failure_policy.fail(key, exc, block.seqs[index])
            out = block if len(keep) == len(block) else block.take(keep)
            self.stats.busy_s += perf_counter() - started
            if len(out):
                self.stats.items_out += len(out)
                await self.output.put(out)
        self.output.close()


def validate_spec(
    check: Callable[[Any], Any] | Sequence[Callable[[Any], Any]], on_error: str, max_failures: int | float
) -> ValidateSpec:
    """Validate ``Loader.validate`` arguments (naming each) and build the spec."""
    checks = tuple(check) if isinstance(check, (list, tuple)) else (check,)
    if not checks:
        raise ValueError("check must be a callable or a non-empty list of callables")
    for one in checks:
        check_callable(one, "check")
    check_choice(on_error, "on_error", ON_ERROR)
    check_max_failures(max_failures)
    name = "validate" if len(checks) > 1 else f"validate({fn_name(checks[0])})"
    return ValidateSpec(name, checks, on_error, max_failures)
