"""Declarative, frozen stage specs and their build-time validation.

The fluent :class:`~aioloader.loader.Loader` only assembles these records; nothing here runs.
Every check on user arguments happens here, when the pipeline is built, and names the argument.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aioloader._main_module import defined_under_guard

EXECUTORS = ("auto", "inline", "thread", "process", "ray")
ON_ERROR = ("raise", "skip")
SHARD_POLICIES = ("drop", "pad", "uneven")


def fn_name(fn: Callable[..., Any]) -> str:
    """The name a user wrote: ``decode`` for a function, ``Decoder.decode`` for a method,
    ``Decoder`` for a callable object, the inner name for a ``functools.partial``."""
    if isinstance(fn, functools.partial):
        return fn_name(fn.func)
    if inspect.ismethod(fn):
        return f"{type(fn.__self__).__name__}.{fn.__name__}"
    if inspect.isfunction(fn) or inspect.isbuiltin(fn) or inspect.isclass(fn):
        return fn.__name__
    return type(fn).__name__


def is_async_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class InteractiveMainError(pickle.PicklingError):
    """Pickled by name from a ``__main__`` that spawned workers cannot import (an interactive
    one, or a name bound only under the script's main guard)."""


class _ForWorkers(pickle.Pickler):
    """A pickler that also refuses what a spawned worker could not import: a function or class
    of a ``__main__`` that has no file (Jupyter, ``python -c``, stdin). Pickle saves those by
    name, which succeeds here and fails in the worker."""

    def reducer_override(self, obj: Any) -> Any:
        if (inspect.isfunction(obj) or isinstance(obj, type)) and obj.__module__ == "__main__":
            main_file = getattr(sys.modules.get("__main__"), "__file__", None)
            if main_file is None or not os.path.isfile(main_file):  # None, or "<stdin>"
                raise InteractiveMainError(
                    f"{obj.__qualname__!r} is defined in an interactive __main__ (a notebook, "
                    "python -c or stdin), which worker processes cannot import; define it in a "
                    "module (a .py file) and import it"
                )
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            if spec is not None and spec.name.endswith("__main__"):  # python -m package
                raise InteractiveMainError(
                    f"{obj.__qualname__!r} is defined in {main_file}, a package's __main__ module, "
                    "which worker processes do not import (multiprocessing skips it); define it "
                    "in another module of the package and import it"
                )
            if defined_under_guard(main_file, obj):
                raise InteractiveMainError(
                    f"{obj.__qualname__!r} is defined under `if __name__ == '__main__':` in "
                    f"{main_file}, a block that worker processes do not run (they import the "
                    "script as a module); define it at the script's top level, or in a module"
                )
        return NotImplemented


def pickle_error(obj: Any) -> Exception | None:
    """Why ``obj`` cannot travel to a spawned worker process, or None when it can."""
    try:
        _ForWorkers(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception as exc:
        return exc
    return None


class _Discard:
    def write(self, data: Any) -> int:
        return len(data)


def is_picklable(obj: Any) -> bool:
    """Whether ``obj`` can be pickled and reach spawned worker processes."""
    return pickle_error(obj) is None


def check_bool(value: Any, argument: str) -> bool:
    """``value`` as a bool, refusing anything else (``drop_last="no"`` would be truthy)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool too
        return bool(value)
    raise TypeError(f"{argument} must be a bool, got {type(value).__name__}: {value!r}")


def check_callable(value: Any, argument: str) -> None:
    if not callable(value):
        raise TypeError(f"{argument} must be callable, got {type(value).__name__}: {value!r}")


def check_positive_int(value: Any, argument: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{argument} must be >= {minimum}, got {value}")
    return int(value)


def check_choice(value: Any, argument: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class StageSpec:
    """Common base: every stage has a user-facing name, unique within a pipeline.

    ``resume_blocker``: why ``state_dict()`` cannot place the consumer exactly after this
    stage (it holds items across outputs or reorders them), or None when it can.
    """

    name: str
    resume_blocker: ClassVar[str | None] = None
    makes_batches: ClassVar[bool] = False  # its items are batches (until an unbatch)


@dataclass(frozen=True, slots=True)
class MapSpec(StageSpec):
    fn: Callable[..., Any]
    executor: str = "auto"
    concurrency: int | None = None
    ordered: bool = True
    on_error: str = "raise"
    max_failures: int | float = 0
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (OSError,)
    timeout: float | None = None
    is_async: bool = False
    per_block: bool = False  # fn takes the list of values of a block and returns a list
    item_fn: Callable[[Any], Any] | None = None  # per-item twin of a per_block fn, to find failures
    seed: int | None = None  # set for a random transform: fn(sample, rng), rng from (seed, epoch, key)
    # the batch stage fused into this one (aioloader._run.fusion): fn takes (keys, members)
    fused_batch: str | None = None
    # the source's read, run by this stage's workers: its values are keys, and ``reads(keys)``
    # (an aioloader._run.read_fusion.NamedRead) gives the items fn takes
    reads: Any = None
    # set when the run is built: fn's results are whole batches (it follows a batching stage,
    # or a batch is fused into it), used and dropped as a unit (aioloader.workers.shm)
    on_batches: bool = False
    # the stall watch (aioloader._run.stall; the process pool's own for executor="process"):
    # seconds, "auto" or None, and "warn" or "raise"
    stall_after: float | str | None = "auto"
    on_stall: str = "warn"


@dataclass(frozen=True, slots=True)
class FilterSpec(StageSpec):
    predicate: Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class BatchSpec(StageSpec):
    makes_batches: ClassVar[bool] = True
    size: int
    collate: Callable[[list[Any]], Any] | None = None
    drop_last: bool = False


@dataclass(frozen=True, slots=True)
class UnbatchSpec(StageSpec):
    pass


@dataclass(frozen=True, slots=True)
class PrefetchSpec(StageSpec):
    depth: int


@dataclass(frozen=True, slots=True)
class SourceSpec:
    source: Any
    shuffle: Any = False
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    shard_policy: str = "drop"
    order: Any = None  # the resolved KeyOrder for indexable sources (aioloader.order.orders)


@dataclass(frozen=True, slots=True)
class Options:
    """Runtime options that do not change the data: loop kind and block size."""

    event_loop: str = "auto"  # "auto" (uvloop when installed), "uvloop" or "asyncio"
    block_size: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def make_map_spec(
    fn: Callable[..., Any],
    *,
    executor: str,
    concurrency: int | None,
    ordered: bool,
    on_error: str,
    max_failures: int | float,
    retries: int,
    retry_on: tuple[type[BaseException], ...],
    timeout: float | None,
    name: str | None,
) -> MapSpec:
    check_callable(fn, "fn")
    check_choice(executor, "executor", EXECUTORS)
    if concurrency is not None:
        check_positive_int(concurrency, "concurrency")
    check_bool(ordered, "ordered")
    check_choice(on_error, "on_error", ON_ERROR)
    check_max_failures(max_failures)
    check_positive_int(retries, "retries", minimum=0)
    if not isinstance(retry_on, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
    ):
        raise TypeError(f"retry_on must be a tuple of exception types, got {retry_on!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        timeout = float(timeout)
    is_async = is_async_callable(fn)
    if is_async and executor in ("thread", "process", "ray"):
        raise ValueError(f"executor={executor!r} needs a sync function; {fn_name(fn)} is async")
    if timeout is not None and executor == "inline" and not is_async:
        raise ValueError(
            "timeout cannot be enforced with executor='inline' (the function blocks the event "
            "loop); use executor='thread' or 'process'"
        )
    return MapSpec(
        name=name or f"map({fn_name(fn)})",
        fn=fn,
        executor=executor,
        concurrency=concurrency,
        ordered=ordered,
        on_error=on_error,
        max_failures=max_failures,
        retries=retries,
        retry_on=retry_on,
        timeout=timeout,
        is_async=is_async,
    )


def check_max_failures(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"max_failures must be a count (int) or a fraction (float), got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError(f"max_failures must be >= 0, got {value}")
    elif not (0.0 <= float(value) < 1.0) or math.isnan(value):
        raise ValueError(f"max_failures as a fraction must be in [0, 1), got {value}")


def unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name}#{i}" in taken:
        i += 1
    return f"{name}#{i}"
