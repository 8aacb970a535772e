"""What the stage specs share: argument checks (each names the argument), function names, the
pickling check for worker processes, the source's spec and the runtime options.

Each stage kind's spec lives in its own module under :mod:`aioloader._run.stages`, beside its
stage, and implements the contract of :mod:`aioloader._run.stages.base`. The fluent
:class:`~aioloader.loader.Loader` only assembles these records; nothing here runs. The old
names (``MapSpec``, ``BatchSpec``, ...) are still importable from here.
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
from typing import Any

from aioloader._main_module import defined_under_guard
from aioloader._run.stages.base import StageSpec as StageSpec

# The specs that moved to their stage's module, importable from here as before (resolved on
# first use: those modules import this one).
_MOVED = {
    "MapSpec": "aioloader._run.stages.map",
    "make_map_spec": "aioloader._run.stages.map",
    "FilterSpec": "aioloader._run.stages.filter",
    "BatchSpec": "aioloader._run.stages.batch",
    "UnbatchSpec": "aioloader._run.stages.unbatch",
    "PrefetchSpec": "aioloader._run.stages.prefetch",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
