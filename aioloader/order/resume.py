"""Resume state: what ``Loader.state_dict()`` returns and ``load_state_dict()`` checks.

A state names a position in one rank's epoch, in keys and counters, never payloads:

- ``epoch``, ``position``: the source resumes at this position of the rank's key order
  (everything before it was delivered, filtered or skipped);
- ``prefix``: the positions of the items that sat in the shuffle buffer (read again first);
- ``reservoir``: the buffer's counters (see :class:`~aioloader.order.reservoir.ReservoirState`);
- ``elastic``: earlier generations of ranks whose delivered keys this epoch excludes;
- ``fingerprint``: what the state depends on (source length, order, seed, sharding, stages);
  a state loaded into a different spec raises ``ValueError`` saying what differs.

Elastic resume: ``load_state_dict([state_of_rank_0, ..., state_of_rank_W-1])`` continues the
epoch with exactly the keys no rank has received yet, spread over the new world size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "aioloader.state/1"


@dataclass(frozen=True)
class ResumePoint:
    """A parsed, validated state for the next run of a Loader."""

    epoch: int
    position: int
    prefix: list[int] = field(default_factory=list)
    reservoir: dict[str, Any] | None = None
    elastic: list[dict[str, Any]] = field(default_factory=list)
    delivered: int = 0


def fingerprint_diff(
    saved: dict[str, Any], current: dict[str, Any], *, ignore: Sequence[str] = ()
) -> list[str]:
    """Human-readable differences between two fingerprints."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        if saved.get(key) != current.get(key):
            diffs.append(f"{key}: saved {saved.get(key)!r}, now {current.get(key)!r}")
    return diffs


def check_format(state: Any) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"state must be a dict returned by Loader.state_dict() (format {FORMAT!r})")
    return state


def parse(state: dict[str, Any], fingerprint: dict[str, Any]) -> ResumePoint:
    """One rank's state for a loader with the same world size."""
    check_format(state)
    diffs = fingerprint_diff(state["fingerprint"], fingerprint)
    if diffs:
        raise ValueError("the state was saved from a different loader: " + "; ".join(diffs))
    return ResumePoint(
        epoch=int(state["epoch"]),
        position=int(state["position"]),
        prefix=[int(p) for p in state.get("prefix", [])],
        reservoir=state.get("reservoir"),
        elastic=list(state.get("elastic", [])),
        delivered=int(state.get("delivered", 0)),
    )


def parse_elastic(states: Sequence[dict[str, Any]], fingerprint: dict[str, Any]) -> ResumePoint:
    """The states of every rank of an earlier world: continue with what none of them received."""
    states = [check_format(s) for s in states]
    world = len(states)
    ranks = sorted(int(s["rank"]) for s in states)
    if ranks != list(range(world)) or any(int(s["world_size"]) != world for s in states):
        raise ValueError(f"elastic resume needs exactly one state per rank 0..{world - 1} of the saved world")
    for s in states:
        diffs = fingerprint_diff(s["fingerprint"], fingerprint, ignore=("world_size",))
        if diffs:
            raise ValueError("the state was saved from a different loader: " + "; ".join(diffs))
        if s.get("reservoir") is not None or s.get("prefix"):
            raise ValueError("elastic resume is not supported through a shuffle buffer (.shuffle)")
    epochs = {int(s["epoch"]) for s in states}
    if len(epochs) != 1:
        raise ValueError(f"the ranks' states are from different epochs: {sorted(epochs)}")
    by_rank = sorted(states, key=lambda s: int(s["rank"]))
    elastic = list(by_rank[0].get("elastic", []))
    if any(s.get("elastic", []) != elastic for s in by_rank):
        raise ValueError("the ranks' states come from different elastic histories")
    generation = {
        "world_size": world,
        "policy": by_rank[0]["fingerprint"].get("shard_policy", "drop"),
        "positions": [int(s["position"]) for s in by_rank],
    }
    return ResumePoint(epoch=epochs.pop(), position=0, elastic=[*elastic, generation])


def remaining_order(order: np.ndarray, generations: list[dict[str, Any]]) -> np.ndarray:
    """``order`` without the keys each generation of ranks delivered (or its sharding dropped)."""
    for generation in generations:
        world, policy = int(generation["world_size"]), generation["policy"]
        n = len(order)
        taken = np.zeros(n, dtype=bool)
        if policy == "drop":
            taken[(n // world) * world :] = True  # never assigned in that generation
        for rank, position in enumerate(generation["positions"]):
            positions = rank + world * np.arange(int(position), dtype=np.int64)
            taken[positions % n if n else positions] = True
        order = order[~taken]
    return order
