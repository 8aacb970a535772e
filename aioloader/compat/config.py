"""The seed API's settings: :class:`DataLoaderConfig`, :class:`LoadingMode` and the worker rule.

``DataLoaderConfig`` keeps every field and default of the seed and checks them when it is made
(and again on ``dataclasses.replace``): an impossible value raises ``ValueError`` naming the
field; a value of the wrong type raises :class:`ConfigTypeError`, a ``TypeError`` that is also a
``ValueError``. ``pin_memory=True`` on a machine without CUDA turns itself off with a warning.
"""

from __future__ import annotations

import enum
import numbers
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from aioloader.monitor.memory import check_fraction

__all__ = ["DataLoaderConfig", "LoadingMode", "ConfigTypeError", "optimal_num_workers"]


class LoadingMode(enum.StrEnum):
    """How a dataset reads its file(s); the values are the sources' ``mode=`` strings."""

    LAZY = "lazy"
    EAGER = "eager"
    STREAMING = "streaming"
    CACHED = "cached"


class ConfigTypeError(TypeError, ValueError):
    """A config field of the wrong type (a ``TypeError``, and a ``ValueError`` like every other
    impossible config value)."""


def optimal_num_workers() -> int:
    """The seed's worker rule: 75% of the usable cores (at least 1), at most 2 when less than
    4 GiB of memory is available. The same rule sizes ``executor="process"`` pools."""
    from aioloader.workers.executor import default_workers

    return default_workers()


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _check_bool(value: Any, field: str) -> bool:
    if not _is_bool(value):
        raise ConfigTypeError(f"DataLoaderConfig.{field} must be a bool, got {value!r}")
    return bool(value)


def _check_int(value: Any, field: str, minimum: int) -> int:
    if not _is_int(value):
        raise ConfigTypeError(f"DataLoaderConfig.{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"DataLoaderConfig.{field} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_device(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigTypeError(f"DataLoaderConfig.pin_memory_device must be a str, got {value!r}")
    if value == "":  # torch's "the current accelerator"
        return value
    try:
        device = torch.device(value)
    except RuntimeError as exc:
        raise ValueError(f"DataLoaderConfig.pin_memory_device: {value!r} is not a device ({exc})") from None
    if device.type == "cpu":
        raise ValueError("DataLoaderConfig.pin_memory_device must be an accelerator (e.g. 'cuda'), got 'cpu'")
    return value


def _is_order(value: Any) -> bool:
    return callable(getattr(value, "keys", None)) and callable(getattr(value, "describe", None))


@dataclass
class DataLoaderConfig:
    """Everything an :class:`~aioloader.compat.EfficientDataLoader` needs, with the seed's
    defaults. ``num_workers=None`` means :func:`optimal_num_workers`."""

    batch_size: int = 32
    num_workers: int | None = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int | None = 2
    drop_last: bool = False
    shuffle: bool = True
    collate_fn: Callable[[list[Any]], Any] | None = None
    memory_efficient: bool = False
    max_memory_usage: float = 0.8
    pin_memory_device: str = "cuda"
    non_blocking: bool = True
    generator_seed: int | None = None
    custom_sampler: Any = None
    custom_batch_sampler: Any = None
    enable_monitoring: bool = True
    log_loading_stats: bool = True

    def __post_init__(self) -> None:
        self.batch_size = _check_int(self.batch_size, "batch_size", 1)
        if self.num_workers is not None:
            self.num_workers = _check_int(self.num_workers, "num_workers", 0)
        if self.prefetch_factor is not None:
            self.prefetch_factor = _check_int(self.prefetch_factor, "prefetch_factor", 1)
        for field in (
            "pin_memory",
            "persistent_workers",
            "drop_last",
            "shuffle",
            "memory_efficient",
            "non_blocking",
            "enable_monitoring",
            "log_loading_stats",
        ):
            setattr(self, field, _check_bool(getattr(self, field), field))
        if self.collate_fn is not None and not callable(self.collate_fn):
            raise ConfigTypeError(
                f"DataLoaderConfig.collate_fn must be callable or None, got {self.collate_fn!r}"
            )
        try:
            self.max_memory_usage = check_fraction(self.max_memory_usage, "DataLoaderConfig.max_memory_usage")
        except TypeError as exc:
            raise ConfigTypeError(str(exc)) from None
        self.pin_memory_device = _check_device(self.pin_memory_device)
        if self.generator_seed is not None:
            self.generator_seed = _check_int(self.generator_seed, "generator_seed", 0)
        self._check_samplers()
        if self.pin_memory and not torch.cuda.is_available():
            warnings.warn(
                "DataLoaderConfig.pin_memory=True but CUDA is not available: pin_memory is turned off",
                RuntimeWarning,
                stacklevel=3,
            )
            self.pin_memory = False

    def _check_samplers(self) -> None:
        sampler, batch_sampler = self.custom_sampler, self.custom_batch_sampler
        if sampler is not None and not (isinstance(sampler, Iterable) or _is_order(sampler)):
            raise ConfigTypeError(
                "DataLoaderConfig.custom_sampler must be a torch Sampler (an iterable of indices) "
                f"or an al.order sampler, got {sampler!r}"
            )
        if batch_sampler is not None and not isinstance(batch_sampler, Iterable):
            raise ConfigTypeError(
                "DataLoaderConfig.custom_batch_sampler must be an iterable of index lists "
                f"(a torch BatchSampler), got {batch_sampler!r}"
            )
        if sampler is not None and batch_sampler is not None:
            raise ValueError(
                "DataLoaderConfig.custom_sampler and custom_batch_sampler are mutually exclusive "
                "(give the sampler to the batch sampler)"
            )

    @property
    def workers(self) -> int:
        """``num_workers``, with ``None`` resolved by :func:`optimal_num_workers`."""
        return optimal_num_workers() if self.num_workers is None else self.num_workers
