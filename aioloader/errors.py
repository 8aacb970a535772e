"""Exception hierarchy of aioloader.

Every error the loader raises about data derives from :class:`DataLoadingError`.
Errors raised by user code inside a stage keep their own type; the loader adds a
note naming the stage and the sample key (see :func:`annotate`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DataLoadingError",
    "DataCorruptionError",
    "DataNotFoundError",
    "DataFormatError",
    "WorkerCrashError",
    "StageTimeoutError",
    "StageStalledError",
    "TooManyFailures",
    "annotate",
]


class DataLoadingError(Exception):
    """Base class of every data error raised by aioloader."""

    def __init__(self, message: str, *, stage: str | None = None, key: Any = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.key = key


class DataCorruptionError(DataLoadingError):
    """A sample exists but its bytes cannot be decoded."""


class DataNotFoundError(DataLoadingError):
    """A path, file or sample that was asked for does not exist."""


class DataFormatError(DataLoadingError):
    """Data has the wrong structure: a missing dataset name, a wrong shape or dtype."""


class WorkerCrashError(DataLoadingError):
    """A worker process died and the work could not be redone."""


class StageTimeoutError(DataLoadingError):
    """A task ran longer than the stage's ``timeout``."""


class StageStalledError(StageTimeoutError):
    """A stage made no progress for its ``stall_after`` seconds with ``on_stall="raise"``: the
    message names the keys in flight, the worker's pid and state, and its Python stack."""


class TooManyFailures(DataLoadingError):
    """More samples failed than the stage's ``max_failures`` allows."""


def annotate(exc: BaseException, stage: str, key: Any) -> BaseException:
    """Name the stage and sample key on ``exc`` (a note, plus ``stage``/``key`` attributes).

    The exception keeps its type, so ``except FileNotFoundError`` in user code still works.
    An exception already annotated by an inner stage is left as it is.
    """
    if getattr(exc, "_aioloader_annotated", False):
        return exc
    exc.add_note(f"aioloader: raised in stage {stage!r} for sample key {key!r}")
    for name, value in (("stage", stage), ("key", key), ("_aioloader_annotated", True)):
        try:
            if name == "_aioloader_annotated" or getattr(exc, name, None) is None:
                setattr(exc, name, value)
        except (AttributeError, TypeError):  # exceptions with slots or read-only attributes
            pass
    return exc


def stopped_early(fn: Any) -> RuntimeError:
    """The error for a function that raised ``StopIteration``: ``map`` would take it for the end
    of its input and drop the rest silently, so it fails the sample instead (as PEP 479 does for
    generators)."""
    return RuntimeError(f"{fn!r} raised StopIteration, which a per-sample function must not raise")
