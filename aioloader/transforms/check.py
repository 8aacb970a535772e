"""A declarative sample check for ``Loader.validate``: type, shape, dtype, value range, finiteness.

``Check(...)(sample)`` returns ``None`` when the sample passes, else the problem: a
:class:`DataFormatError` (wrong type, shape or dtype, a missing field) or a
:class:`DataCorruptionError` (values out of range, NaN or infinity). The validate stage adds
the sample's key and applies its ``on_error`` policy.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from aioloader.errors import DataCorruptionError, DataFormatError, DataLoadingError

_MISSING = object()


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name


class Check:
    """Declare what a sample (or ``sample[field]``) must look like; every option is optional.

    - ``type``: a type or tuple of types;
    - ``shape``: a tuple of dimensions, ``None`` for any size (``(3, None, None)``);
    - ``dtype``: a torch or numpy dtype (or its name), compared by name;
    - ``range``: ``(low, high)``, inclusive; ``None`` on one side for no bound;
    - ``finite``: no NaN or infinity.
    Arrays, tensors, PIL images (as arrays), numbers and lists of numbers are understood.
    """

    def __init__(
        self,
        *,
        type: type | tuple[type, ...] | None = None,
        shape: Sequence[int | None] | None = None,
        dtype: Any = None,
        range: tuple[float | None, float | None] | None = None,
        finite: bool = False,
        field: Hashable | None = None,
    ) -> None:
        if shape is not None and (
            isinstance(shape, (str, bytes))
            or not all(d is None or (isinstance(d, int) and d >= 0) for d in shape)
        ):
            raise TypeError(f"shape must be a tuple of ints >= 0 or None, got {shape!r}")
        if range is not None and (not isinstance(range, (tuple, list)) or len(range) != 2):
            raise TypeError(f"range must be a (low, high) pair, got {range!r}")
        self.type = type
        self.shape = None if shape is None else tuple(shape)
        self.dtype = None if dtype is None else _dtype_name(dtype)
        self.range = None if range is None else tuple(range)
        self.finite = bool(finite)
        self.field = field

    def __call__(self, sample: Any) -> DataLoadingError | None:
        where = ""
        if self.field is not None:
            try:
                sample = sample[self.field]
            except (KeyError, IndexError, TypeError):
                return DataFormatError(f"missing field {self.field!r}")
            where = f"field {self.field!r}: "
        if self.type is not None and not isinstance(sample, self.type):
            return DataFormatError(f"{where}expected type {self.type!r}, got {type(sample).__name__}")
        if self.shape is None and self.dtype is None and self.range is None and not self.finite:
            return None
        values = sample if isinstance(sample, torch.Tensor) else np.asarray(sample)
        if self.shape is not None:
            shape = tuple(values.shape)
            if len(shape) != len(self.shape) or any(
                want is not None and want != got for want, got in zip(self.shape, shape, strict=True)
            ):
                return DataFormatError(f"{where}expected shape {self.shape}, got {shape}")
        if self.dtype is not None and _dtype_name(values.dtype) != self.dtype:
            return DataFormatError(f"{where}expected dtype {self.dtype}, got {_dtype_name(values.dtype)}")
        return self._values(values, where)

    def _values(self, values: Any, where: str) -> DataLoadingError | None:
        empty = values.numel() == 0 if isinstance(values, torch.Tensor) else values.size == 0
        if empty or not (self.range or self.finite):
            return None
        array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        if array.dtype.kind not in "biuf":
            return DataFormatError(f"{where}cannot check the values of dtype {array.dtype}")
        if self.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            return DataCorruptionError(f"{where}contains NaN or infinity")
        if self.range is not None:
            low, high = self.range
            if array.dtype.kind == "f" and np.isnan(array).any():
                return DataCorruptionError(f"{where}contains NaN, outside range {self.range}")
            lowest, highest = array.min(), array.max()
            if (low is not None and lowest < low) or (high is not None and highest > high):
                return DataCorruptionError(
                    f"{where}values in [{lowest}, {highest}], outside range {self.range}"
                )
        return None

    def __repr__(self) -> str:
        options = {k: v for k, v in vars(self).items() if v not in (None, False)}
        return "Check(" + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")"
