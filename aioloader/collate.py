"""Turning a list of samples into a batch.

:func:`stack` is the default collate: it follows ``torch.utils.data.default_collate`` case by
case (tensors, numpy arrays and scalars, Python numbers, strings, mappings, named tuples,
sequences), with the error for mismatched shapes naming the sample that differs.
"""

from __future__ import annotations

import collections.abc
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["stack", "as_list"]


def as_list(samples: list[Any]) -> list[Any]:
    """No collation: the batch is the list of samples (variable-length items)."""
    return list(samples)


def _stack_tensors(samples: list[torch.Tensor]) -> torch.Tensor:
    try:
        return torch.stack(samples)
    except RuntimeError:
        shape = samples[0].shape
        for i, sample in enumerate(samples):
            if sample.shape != shape:
                raise RuntimeError(
                    f"stack: sample {i} has shape {tuple(sample.shape)}, sample 0 has {tuple(shape)}; "
                    "use collate=al.collate.as_list or a padding collate for variable-size items"
                ) from None
        raise


def _stack_arrays(samples: list[np.ndarray]) -> torch.Tensor:
    first = samples[0]
    if first.dtype.kind in "OUSV":
        raise TypeError(f"stack: numpy arrays of dtype {first.dtype} cannot become a tensor")
    return torch.from_numpy(np.stack(samples))


def stack(samples: list[Any]) -> Any:
    """Collate like torch's ``default_collate``, into preallocated tensors."""
    if not samples:
        raise ValueError("stack: cannot collate an empty batch")
    first = samples[0]
    if isinstance(first, torch.Tensor):
        return _stack_tensors(samples)
    if isinstance(first, np.ndarray):
        return _stack_arrays(samples)
    if isinstance(first, np.generic):
        return torch.as_tensor(np.asarray(samples))
    if isinstance(first, bool):
        return torch.tensor(samples, dtype=torch.bool)
    if isinstance(first, numbers.Integral):
        return torch.tensor(samples, dtype=torch.int64)
    if isinstance(first, numbers.Real):
        return torch.tensor(samples, dtype=torch.float64)
    if isinstance(first, (str, bytes)):
        return list(samples)
    if isinstance(first, Mapping):
        collated = {key: stack([s[key] for s in samples]) for key in first}
        if type(first) is dict:
            return collated
        try:
            return type(first)(collated)
        except TypeError:
            return collated
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # namedtuple
        return type(first)(*(stack(list(field)) for field in zip(*samples, strict=True)))
    if isinstance(first, Sequence):
        size = len(first)
        if any(len(s) != size for s in samples):
            raise RuntimeError("stack: each element in the batch should be of equal size")
        columns = [stack(list(column)) for column in zip(*samples, strict=True)]
        if isinstance(first, tuple):
            return columns
        try:
            return type(first)(columns)
        except TypeError:
            return columns
    raise TypeError(f"stack: cannot collate samples of type {type(first).__name__}")


def uncollate(batch: Any, size: int) -> list[Any]:
    """The inverse of :func:`stack` for :meth:`Loader.unbatch`: ``size`` samples out of a batch."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return list(batch.unbind(0)) if isinstance(batch, torch.Tensor) else list(batch)
    if isinstance(batch, Mapping):
        columns = {key: uncollate(value, size) for key, value in batch.items()}
        return [{key: columns[key][i] for key in columns} for i in range(size)]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        columns = [uncollate(column, size) for column in batch]
        return [type(batch)(*row) for row in zip(*columns, strict=True)]
    if isinstance(batch, collections.abc.Sequence) and not isinstance(batch, (str, bytes)):
        if len(batch) == size and not (batch and _is_column(batch[0], size)):
            return list(batch)
        columns = [uncollate(column, size) for column in batch]
        return [tuple(row) for row in zip(*columns, strict=True)]
    raise TypeError(f"unbatch: cannot split a batch of type {type(batch).__name__}")


def _is_column(value: Any, size: int) -> bool:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim > 0 and value.shape[0] == size
    return isinstance(value, (list, Mapping)) and len(value) == size


Collate = Callable[[list[Any]], Any]
