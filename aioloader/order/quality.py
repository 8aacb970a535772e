"""How well an order is shuffled: one number, 0 for the source order, ~1 for a full permutation.

``quality(keys)`` is the mean displacement ``|position - rank of key|`` divided by its
expectation under a uniformly random permutation (``(n^2 - 1) / (3n)``), capped at 1. It
measures how far samples travel from where storage put them, which is what a chunk or
buffer shuffle trades away: a shuffle buffer of ``b`` items moves samples about ``b`` places
(quality ~ ``3b / n``), a chunk shuffle moves whole chunks anywhere (quality close to 1) but
keeps neighbours together; ``neighbour_rate`` reports that second effect: the fraction of
consecutive outputs whose keys were within ``window`` of each other in the source
(~``2 window / n`` for a full permutation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["quality", "neighbour_rate", "report"]


def quality(keys: Any) -> float:
    keys = np.asarray(keys)
    n = len(keys)
    if n < 2:
        return 1.0
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(keys, kind="stable")] = np.arange(n)
    displacement = np.abs(np.arange(n) - ranks).mean()
    expected = (n * n - 1) / (3 * n)
    return float(min(1.0, displacement / expected))


def neighbour_rate(keys: Any, window: int = 1) -> float:
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(keys)) <= window))


def report(keys: Any) -> dict[str, float]:
    return {"quality": quality(keys), "neighbour_rate": neighbour_rate(keys)}
