"""Composing transforms, and the random-transform protocol they follow.

A transform is any callable ``t(sample) -> sample``. A *random* transform has the attribute
``random = True`` and is called ``t(sample, rng)`` with a ``numpy.random.Generator``; a loader's
map stage passes the generator of (seed, epoch, sample key), so augmentation is reproducible
whatever the concurrency or executor, new each epoch, and the same after a resume. Called
directly without ``rng``, a random transform draws from fresh OS entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from aioloader.order.sample_rng import is_random


def resolve_rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class Compose:
    """Apply ``transforms`` in order; random when any of them is (each gets the same
    generator in turn, so the draws are sequential and reproducible)."""

    def __init__(self, transforms: Sequence[Callable[..., Any]]) -> None:
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
            raise TypeError(f"transforms must be a list of callables, got {transforms!r}")
        for t in transforms:
            if not callable(t):
                raise TypeError(f"transforms must be callables, got {t!r}")
        self.transforms = tuple(transforms)
        self.random = any(is_random(t) for t in self.transforms)

    def __call__(self, sample: Any, rng: np.random.Generator | None = None) -> Any:
        if self.random:
            rng = resolve_rng(rng)
        for t in self.transforms:
            sample = t(sample, rng) if is_random(t) else t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({list(self.transforms)!r})"


class OnField:
    """Apply ``transform`` to one field of a sample (``sample[field]`` of a tuple, list or
    mapping), keeping the other fields: ``OnField(Resize(224), 0)`` on ``(image, label)``."""

    def __init__(self, transform: Callable[..., Any], field: Hashable) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {transform!r}")
        self.transform = transform
        self.field = field
        self.random = is_random(transform)

    def __call__(self, sample: Any, rng: np.random.Generator | None = None) -> Any:
        value = sample[self.field]
        value = self.transform(value, resolve_rng(rng)) if self.random else self.transform(value)
        if isinstance(sample, dict):
            return {**sample, self.field: value}
        if isinstance(sample, tuple) and hasattr(sample, "_replace"):
            return sample._replace(**{sample._fields[self.field]: value})
        if isinstance(sample, (tuple, list)):
            out = list(sample)
            out[self.field] = value
            return type(sample)(out)
        raise TypeError(f"OnField: cannot replace field {self.field!r} of a {type(sample).__name__}")

    def __repr__(self) -> str:
        return f"OnField({self.transform!r}, {self.field!r})"
