"""Per-sample random generators drawn from (seed, epoch, key), and the call wrapper that uses them.

A random transform (an object with ``random = True``) is called as ``t(sample, rng)``. The map
stage hands it ``key_rng(seed, epoch, key)``, so a sample's augmentation depends only on the
loader's seed, the epoch and the sample's key: the same whatever the concurrency, executor or
timing, different from one epoch to the next, and the same again after a resume. Batch-level
transforms (mixup, cutmix) get the generator of the batch's list of member keys.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from aioloader.order.permutation import epoch_rng

_DOMAIN = 0x5A4D  # separates these streams from the other users of epoch_rng(seed, epoch, ...)
_MASK32 = 0xFFFFFFFF


def is_random(fn: Any) -> bool:
    """True for a random transform: an object (or function) with the attribute ``random = True``."""
    return getattr(fn, "random", False) is True


def _words(key: Any, out: list[int]) -> None:
    """Append a fixed-width encoding of ``key``: a tag word, then two 32-bit words per leaf."""
    if isinstance(key, (list, tuple)):
        out.extend((1, len(key)))
        for part in key:
            _words(part, out)
        return
    if isinstance(key, numbers.Integral) and not isinstance(key, bool) and 0 <= int(key) < 2**64:
        value = int(key)
        out.extend((0, value & _MASK32, value >> 32))
        return
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    out.extend((2, value & _MASK32, value >> 32))


def key_rng(seed: int, epoch: int, key: Any) -> np.random.Generator:
    """The generator of sample ``key`` (an int, a tuple such as (shard, offset), a batch's list
    of keys, or anything with a stable ``repr``) in ``epoch``."""
    words: list[int] = [_DOMAIN]
    _words(key, words)
    return epoch_rng(seed, epoch, *words)


class WithRng:
    """``fn(sample, rng)`` on a ``(key, sample, epoch)`` triple: the per-item function of a map
    stage running a random transform. The epoch travels with each item, not in this object: a
    process pool unpickles its work once and keeps it across epochs (a pool keeping epoch 0's
    generator drew the same augmentation every epoch). Picklable when ``fn`` is."""

    __slots__ = ("fn", "seed")

    def __init__(self, fn: Callable[[Any, np.random.Generator], Any], seed: int) -> None:
        self.fn = fn
        self.seed = seed

    def __call__(self, item: tuple[Any, Any, int]) -> Any:
        key, sample, epoch = item
        return self.fn(sample, key_rng(self.seed, epoch, key))

    def __getstate__(self) -> tuple[Any, int]:
        return self.fn, self.seed

    def __setstate__(self, state: tuple[Any, int]) -> None:
        self.fn, self.seed = state
