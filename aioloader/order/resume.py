"""Resume state: what ``Loader.state_dict()`` returns and ``load_state_dict()`` checks.

A state names a position in one rank's epoch, in keys and counters, never payloads:

- ``epoch``, ``position``: the source resumes at this position of the rank's key order
  (everything before it was delivered, filtered or skipped);
- ``prefix``: the positions of the items that sat in the shuffle buffer (read again first);
- ``reservoir``: the buffer's counters (see :class:`~aioloader.order.reservoir.ReservoirState`);
- ``elastic``: earlier generations of ranks whose delivered keys this epoch excludes;
- ``failures``: per stage with ``on_error="skip"`` and a count ``max_failures``, the samples
  before the resume point it skipped (none: left out), so the budget counts them after a resume
  as it would have;
- ``fingerprint``: what the state depends on (source length, order, seed, sharding, stages);
  a state loaded into a different spec raises ``ValueError`` saying what differs;
- ``digest``: a hash of each other field (:func:`seal`), so the state checks itself.

A state is checked strictly before it is used: a missing field, a value of the wrong type or
out of range, or fields that contradict each other (a corrupted or hand-edited state) raise
``ValueError`` naming the field, rather than resuming somewhere else. An edit that leaves the
state consistent (a position moved by one drops a key) is caught by the digest: every field
whose value no longer has its recorded hash, and every field added or removed, is named. The
digest covers whatever fields a state has, so it holds when fields are added. A state saved
before states carried a digest (format ``aioloader.state/1``) is checked without it.

Elastic resume: ``load_state_dict([state_of_rank_0, ..., state_of_rank_W-1])`` continues the
epoch with exactly the keys no rank has received yet, spread over the new world size. A rank
that had received its whole share of the epoch (its state is already at the start of the
next epoch) counts as having delivered all of it.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aioloader.order.elastic import RemainingKeys
from aioloader.order.sequence import KeySequence

FORMAT = "aioloader.state/2"
_UNSEALED_FORMAT = "aioloader.state/1"  # saved before states carried a digest
DIGEST = "digest"
_REQUIRED = ("rank", "world_size", "fingerprint", "epoch", "position")
_POLICIES = ("drop", "pad", "uneven")
_RESERVOIR_FIELDS = ("slots", "inputs", "last_input", "emitted", "draining")


@dataclass(frozen=True)
class ResumePoint:
    """A parsed, validated state for the next run of a Loader."""

    epoch: int
    position: int
    prefix: list[int] = field(default_factory=list)
    reservoir: dict[str, Any] | None = None
    elastic: list[dict[str, Any]] = field(default_factory=list)
    delivered: int = 0
    failures: dict[str, int] = field(default_factory=dict)


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


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_at_least(value: Any, where: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ``ValueError`` naming ``where`` otherwise."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"state{where} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number JSON writes for it (a state may hold either)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _field_hash(name: str, value: Any) -> str:
    """A short hash of ``value``'s canonical JSON (the same before and after a JSON round trip)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"state[{name!r}] is not plain JSON data: {exc}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seal(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its ``digest``: a hash of every other field, by name, whatever fields the
    state has. Whoever builds or changes a state (``Loader.state_dict()``, a remote loader's
    cursor) seals it last; :func:`check_digest` then refuses any later edit."""
    fields = {name: value for name, value in state.items() if name != DIGEST}
    return {**fields, DIGEST: {name: _field_hash(name, value) for name, value in sorted(fields.items())}}


def check_digest(state: dict[str, Any]) -> None:
    """``ValueError`` naming each field of ``state`` that its digest does not fit (edited,
    added or removed since :func:`seal`); a pre-digest state (format 1) has none to check."""
    if state.get("format") == _UNSEALED_FORMAT:
        if DIGEST in state:  # only a sealed state has a digest: its format was edited
            raise ValueError(
                f"state['format'] is {_UNSEALED_FORMAT!r}, which has no digest, but the state carries "
                f"one: the state was edited (saved as {FORMAT!r})"
            )
        return
    digest = state.get(DIGEST)
    if not isinstance(digest, dict) or not all(isinstance(h, str) for h in digest.values()):
        raise ValueError(
            f"state[{DIGEST!r}] must be the dict of field hashes Loader.state_dict() writes, got "
            f"{digest!r}: the state was edited or corrupted"
        )
    fields = {name for name in state if name != DIGEST}
    problems = [f"{name!r} was removed" for name in sorted(set(digest) - fields, key=str)]
    problems += [f"{name!r} was added" for name in sorted(fields - set(digest), key=str)]
    problems += [
        f"{name!r} was changed"
        for name in sorted(fields & set(digest), key=str)
        if _field_hash(str(name), state[name]) != digest[name]
    ]
    if problems:
        raise ValueError(
            f"state does not match its digest: {', '.join(problems)} since Loader.state_dict() made "
            "it; a state must be loaded as saved (an edited position or buffer would drop or repeat "
            "samples)"
        )


def check_format(state: Any) -> dict[str, Any]:
    """``state`` if it is a dict in this module's format with every required field present."""
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, _UNSEALED_FORMAT):
        raise ValueError(f"state must be a dict returned by Loader.state_dict() (format {FORMAT!r})")
    missing = [name for name in _REQUIRED if name not in state]
    if missing:
        raise ValueError(
            f"state is missing {', '.join(map(repr, missing))}: it is not a whole Loader.state_dict()"
        )
    if not isinstance(state["fingerprint"], dict):
        raise ValueError(f"state['fingerprint'] must be a dict, got {type(state['fingerprint']).__name__}")
    return state


def _check_rank(state: dict[str, Any]) -> None:
    """``rank`` and ``world_size`` in range and agreeing with the fingerprint."""
    world = _int_at_least(state["world_size"], "['world_size']", 1)
    rank = _int_at_least(state["rank"], "['rank']", 0)
    if rank >= world:
        raise ValueError(f"state['rank'] is {rank}, not below state['world_size'] {world}")
    saved_world = state["fingerprint"].get("world_size", world)
    if saved_world != world:
        raise ValueError(
            f"state['world_size'] is {world} but its fingerprint says {saved_world!r}: the state is corrupted"
        )


def _rank_key_bound(fingerprint: dict[str, Any]) -> int | None:
    """The most keys any rank has in one epoch of the fingerprinted loader (None: unknown,
    a stream). The fingerprint names an indexable source as ``indexable:<length>``."""
    source = fingerprint.get("source")
    if not isinstance(source, str) or not source.startswith("indexable:"):
        return None
    try:
        count = int(source.split(":", 1)[1])
    except ValueError:
        return None
    order = fingerprint.get("order")
    samples = order.get("num_samples") if isinstance(order, dict) else None
    if _is_int(samples):
        count = int(samples)
    world = fingerprint.get("world_size", 1)
    return -(-count // world) if _is_int(world) and world > 0 else count


def _check_prefix(prefix: Any, position: int) -> list[int]:
    """The shuffle buffer's positions: distinct ints, each before the resume ``position``."""
    if not isinstance(prefix, list):
        raise ValueError(f"state['prefix'] must be a list of positions, got {type(prefix).__name__}")
    for p in prefix:
        if not _is_int(p) or not 0 <= p < position:
            raise ValueError(
                f"state['prefix'] holds {p!r}: each entry must be a position in [0, {position}) "
                f"(before state['position'])"
            )
    if len(set(prefix)) != len(prefix):
        raise ValueError("state['prefix'] repeats a position: the state is corrupted")
    return [int(p) for p in prefix]


def _check_reservoir(reservoir: Any, position: int, prefix: list[int]) -> dict[str, Any] | None:
    """The shuffle buffer's counters, consistent with ``position`` and ``prefix``."""
    if reservoir is None:
        if prefix:
            raise ValueError("state['prefix'] is not empty but state['reservoir'] is None")
        return None
    if not isinstance(reservoir, dict):
        raise ValueError(f"state['reservoir'] must be a dict or None, got {type(reservoir).__name__}")
    missing = [name for name in _RESERVOIR_FIELDS if name not in reservoir]
    if missing:
        raise ValueError(f"state['reservoir'] is missing {', '.join(map(repr, missing))}")
    inputs = _int_at_least(reservoir["inputs"], "['reservoir']['inputs']", 0)
    emitted = _int_at_least(reservoir["emitted"], "['reservoir']['emitted']", 0)
    last = reservoir["last_input"]
    if last is not None and not _is_int(last):
        raise ValueError(f"state['reservoir']['last_input'] must be an int or None, got {last!r}")
    if not isinstance(reservoir["draining"], bool):
        raise ValueError(f"state['reservoir']['draining'] must be a bool, got {reservoir['draining']!r}")
    if reservoir["slots"] != prefix:
        raise ValueError("state['reservoir']['slots'] differs from state['prefix']: the state is corrupted")
    if emitted + len(prefix) != inputs:
        raise ValueError(
            f"state['reservoir'] is inconsistent: {emitted} emitted + {len(prefix)} in the buffer "
            f"!= {inputs} inputs"
        )
    if position != (0 if last is None else int(last) + 1):
        raise ValueError(
            f"state['position'] {position} does not follow state['reservoir']['last_input'] {last!r}"
        )
    return reservoir


def _check_elastic(elastic: Any) -> list[dict[str, Any]]:
    """Earlier generations of ranks: world size, policy and one position (or None) per rank."""
    if not isinstance(elastic, list):
        raise ValueError(f"state['elastic'] must be a list, got {type(elastic).__name__}")
    for i, generation in enumerate(elastic):
        where = f"state['elastic'][{i}]"
        if not isinstance(generation, dict):
            raise ValueError(f"{where} must be a dict, got {type(generation).__name__}")
        world = generation.get("world_size")
        positions = generation.get("positions")
        if not _is_int(world) or world < 1:
            raise ValueError(f"{where}['world_size'] must be an int >= 1, got {world!r}")
        if generation.get("policy") not in _POLICIES:
            raise ValueError(
                f"{where}['policy'] must be one of {_POLICIES}, got {generation.get('policy')!r}"
            )
        if not isinstance(positions, list) or len(positions) != world:
            raise ValueError(f"{where}['positions'] must be a list of {world} positions, got {positions!r}")
        if any(p is not None and (not _is_int(p) or p < 0) for p in positions):
            raise ValueError(f"{where}['positions'] must hold ints >= 0 (or None), got {positions!r}")
    return elastic


def _checked(state: Any) -> ResumePoint:
    """One rank's state, structurally validated (each field's type, range and agreement)."""
    check_format(state)
    _check_rank(state)
    epoch = _int_at_least(state["epoch"], "['epoch']", 0)
    position = _int_at_least(state["position"], "['position']", 0)
    bound = _rank_key_bound(state["fingerprint"])
    if bound is not None and position > bound:
        raise ValueError(
            f"state['position'] {position} is past the end of the epoch (a rank of this loader "
            f"has at most {bound} keys)"
        )
    prefix = _check_prefix(state.get("prefix", []), position)
    reservoir = _check_reservoir(state.get("reservoir"), position, prefix)
    elastic = _check_elastic(state.get("elastic", []))
    failures = _check_failures(state.get("failures", {}))
    check_digest(state)  # last: an inconsistent field is named by the check above it
    return ResumePoint(
        epoch=epoch, position=position, prefix=prefix, reservoir=reservoir, elastic=elastic, failures=failures
    )


def _check_failures(failures: Any) -> dict[str, int]:
    """Skipped samples per stage name (a state saved before this field existed has none)."""
    if not isinstance(failures, dict):
        raise ValueError(f"state['failures'] must be a dict, got {type(failures).__name__}")
    for name, count in failures.items():
        if not isinstance(name, str):
            raise ValueError(f"state['failures'] keys must be stage names, got {name!r}")
        _int_at_least(count, f"['failures'][{name!r}]", 0)
    return {name: int(count) for name, count in failures.items()}


def parse(state: dict[str, Any], fingerprint: dict[str, Any]) -> ResumePoint:
    """One rank's state for a loader with the same world size."""
    check_format(state)
    diffs = fingerprint_diff(state["fingerprint"], fingerprint)
    if diffs:
        hint = ""
        if any(d.startswith("world_size:") for d in diffs):
            hint = " (to resume on another world size, load the list of every rank's states)"
        raise ValueError("the state was saved from a different loader: " + "; ".join(diffs) + hint)
    return _checked(state)


def _finished(state: dict[str, Any]) -> bool:
    """A state at the very start of an epoch: its rank received all of the previous one."""
    return int(state["position"]) == 0 and not state.get("prefix") and not state.get("elastic")


def _elastic_epoch(states: list[dict[str, Any]]) -> tuple[int, list[bool]]:
    """The epoch the ranks were in, and which ranks had already finished it (their state is
    at the start of the next epoch, as ``state_dict()`` says after a rank's last batch)."""
    epochs = sorted({int(s["epoch"]) for s in states})
    if len(epochs) == 1:
        return epochs[0], [False] * len(states)
    epoch = epochs[0]
    finished = [int(s["epoch"]) == epoch + 1 and _finished(s) for s in states]
    if (
        len(epochs) != 2
        or epochs[1] != epoch + 1
        or not all(done or int(s["epoch"]) == epoch for s, done in zip(states, finished, strict=True))
    ):
        raise ValueError(
            f"the ranks' states are from different epochs: {epochs} (only a rank that finished "
            f"epoch {epoch} may be at the start of epoch {epoch + 1})"
        )
    return epoch, finished


def parse_elastic(states: Sequence[dict[str, Any]], fingerprint: dict[str, Any]) -> ResumePoint:
    """The states of every rank of an earlier world: continue with what none of them received."""
    if not states:
        raise ValueError("elastic resume needs the state of every rank of the saved world; got an empty list")
    checked = [(s, _checked(s)) for s in states]
    world = len(states)
    ranks = sorted(int(s["rank"]) for s in states)
    if ranks != list(range(world)) or any(int(s["world_size"]) != world for s in states):
        raise ValueError(f"elastic resume needs exactly one state per rank 0..{world - 1} of the saved world")
    for s, point in checked:
        diffs = fingerprint_diff(s["fingerprint"], fingerprint, ignore=("world_size",))
        if diffs:
            raise ValueError("the state was saved from a different loader: " + "; ".join(diffs))
        if point.reservoir is not None or point.prefix:
            raise ValueError("elastic resume is not supported through a shuffle buffer (.shuffle)")
    by_rank = sorted(states, key=lambda s: int(s["rank"]))
    epoch, finished = _elastic_epoch(by_rank)
    running = [s for s, done in zip(by_rank, finished, strict=True) if not done]
    elastic = list(running[0].get("elastic", [])) if running else []
    if any(s.get("elastic", []) != elastic for s in running):
        raise ValueError("the ranks' states come from different elastic histories")
    generation = {
        "world_size": world,
        "policy": by_rank[0]["fingerprint"].get("shard_policy", "drop"),
        "positions": [
            None if done else int(s["position"]) for s, done in zip(by_rank, finished, strict=True)
        ],
    }
    return ResumePoint(epoch=epoch, position=0, elastic=[*elastic, generation])


def remaining_order(order: KeySequence, generations: list[dict[str, Any]]) -> KeySequence:
    """``order`` without the keys each generation of ranks delivered (or its sharding dropped),
    by position, never built (:class:`~aioloader.order.elastic.RemainingKeys`). A position of
    ``None`` is a rank that delivered its whole share."""
    for generation in generations:
        world, policy = int(generation["world_size"]), generation["policy"]
        order = RemainingKeys(order, world, policy, generation["positions"])
    return order
