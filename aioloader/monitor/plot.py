"""``--plot out.png``: per-stage throughput and queue occupancy over a run (the ``timeline`` of
``Loader.stats()``), drawn with matplotlib (the optional ``plot`` extra:
``pip install 'aioloader[plot]'``)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["plot_timeline"]


def plot_timeline(stats: dict[str, Any], path: str | os.PathLike[str]) -> str:
    """Write a two-panel PNG (items/s and queue occupancy per stage over time) to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "--plot needs matplotlib: pip install 'aioloader[plot]' (or pip install matplotlib)"
        ) from exc
    timeline = stats.get("timeline") or {}
    t = timeline.get("t") or []
    if not t:
        raise ValueError("the run was too short to sample a timeline (no points); run it longer")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, series in timeline["rate"].items():
        top.plot(t, series, label=name)
    for name, series in timeline["queue"].items():
        bottom.plot(t, series, label=name, drawstyle="steps-post")
    top.set_ylabel("items out per second")
    top.set_title(f"per-stage throughput (bottleneck: {stats.get('bottleneck')})")
    top.legend(fontsize="small", loc="upper right")
    bottom.set_ylabel("output queue occupancy (blocks)")
    bottom.set_xlabel("seconds since the epoch started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
