"""Fault injection on resume: a source that no longer holds what a state refers to raises a
typed error naming the source and the position (no placeholders, no quiet end), and an edited
state is refused naming the field (every single-field edit of a real state, exhaustively)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import aioloader as al
from aioloader.order.resume import DIGEST, FORMAT

from .conftest import state_after

# -- a source that lost what the state refers to ----------------------------------------------


class Numbers:
    """A re-iterable stream of ``0..n-1`` (a generator reloaded with another length)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __repr__(self) -> str:
        return f"Numbers({self.n})"


class AsyncNumbers(Numbers):
    def __aiter__(self) -> Any:
        return self._gen()

    async def _gen(self) -> Any:
        for i in range(self.n):
            yield i


def _write_lines(path: Path, n: int) -> None:
    path.write_text("".join(f"line {i}\n" for i in range(n)))


def _resume_all(loader: al.Loader, state: dict[str, Any], delivered: list[Any]) -> None:
    with loader:
        loader.load_state_dict(state)
        for item in loader:
            delivered.append(item)


def test_a_text_stream_cut_shorter_than_the_state_raises_naming_the_file_and_position(tmp_path):
    """5000 lines through a 256 reservoir, state after 1000 items, file cut to 1100 lines:
    before, 256 items of which ~115 were None; now DataNotFoundError before any item."""
    path = tmp_path / "lines.txt"
    _write_lines(path, 5000)

    def make() -> al.Loader:
        return al.Loader.from_source(al.sources.TextLines(path, mode="streaming")).shuffle(256)

    state = state_after(make(), 1000)
    assert state["position"] == 1256 and len(state["prefix"]) == 256
    _write_lines(path, 1100)
    delivered: list[Any] = []
    with pytest.raises(al.DataNotFoundError) as caught:
        _resume_all(make(), state, delivered)
    assert delivered == []
    message = str(caught.value)
    assert "ended after 1100 items, before position 1256" in message
    assert str(path) in message and "TextLines" in message
    assert caught.value.key == 1100


@pytest.mark.parametrize("buffer", [256, 0], ids=["reservoir", "no-reservoir"])
@pytest.mark.parametrize("kind", [Numbers, AsyncNumbers], ids=["sync", "async"])
def test_a_generator_reloaded_shorter_raises_naming_it_and_the_position(kind, buffer):
    """Saved over 5000 items, reloaded as 100: before, 254 of 256 None with a reservoir and
    0 items without; now DataNotFoundError naming the stream and the resume position."""

    def make(n: int) -> al.Loader:
        loader = al.Loader.from_source(kind(n))
        return loader.shuffle(buffer) if buffer else loader

    state = state_after(make(5000), 1000)
    position = 1000 + buffer
    assert state["position"] == position
    delivered: list[Any] = []
    with pytest.raises(
        al.DataNotFoundError, match=rf"Numbers\(100\) ended after 100 items, before position {position}"
    ):
        _resume_all(make(100), state, delivered)
    assert delivered == []


def test_a_sharded_stream_reloaded_shorter_names_the_rank():
    def make(n: int) -> al.Loader:
        return al.Loader.from_source(Numbers(n), rank=1, world_size=2).shuffle(8)

    state = state_after(make(100), 20)
    with pytest.raises(al.DataNotFoundError, match=r"ended after 5 items of rank 1, before position 28"):
        _resume_all(make(10), state, [])


def test_a_stream_resumed_at_its_very_end_ends_without_error():
    """The state after the last item of a stream (its length unknown to the loader) refers to
    exactly what the source holds: the resumed epoch is empty, not an error."""
    state = state_after(al.Loader.from_source(Numbers(50)), 50)
    assert state["position"] == 50
    delivered: list[Any] = []
    _resume_all(al.Loader.from_source(Numbers(50)), state, delivered)
    assert delivered == []


def test_a_stream_that_still_holds_the_state_resumes_exactly():
    def make() -> al.Loader:
        return al.Loader.from_source(Numbers(300)).shuffle(32).batch(7)

    with make() as loader:
        full = [b.tolist() for b in loader]
    state = state_after(make(), 10)
    delivered: list[Any] = []
    _resume_all(make(), state, delivered)
    assert [b.tolist() for b in delivered] == full[10:]


def _keep(x: Any) -> Any:
    return x


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_buffered_line_that_no_longer_decodes_is_skipped_or_raised_not_passed_on(tmp_path, on_error):
    """The shuffle buffer's items are read again on resume: one that became unreadable since
    the state was saved is a read failure under the first map's on_error, never an item."""
    path = tmp_path / "lines.txt"
    _write_lines(path, 200)

    def make() -> al.Loader:
        source = al.sources.TextLines(path, mode="streaming")
        return al.Loader.from_source(source).map(_keep, on_error=on_error, max_failures=5).shuffle(8)

    with make() as loader:
        full = list(loader)
    state = state_after(make(), 20)
    bad = state["prefix"][0]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[bad] = b"caf\xe9\n"
    path.write_bytes(b"".join(lines))
    delivered: list[Any] = []
    if on_error == "raise":
        with pytest.raises(al.DataCorruptionError, match=rf"line {bad + 1} of .*\(key {bad}\)"):
            _resume_all(make(), state, delivered)
        assert f"line {bad}" not in delivered
        return
    with make() as loader:
        loader.load_state_dict(state)
        delivered = list(loader)
        errors = [(e["stage"], e["key"], e["type"]) for e in loader.stats()["errors"]]
    # exactly the rest but the bad line (the buffer holds one item fewer: another order after it)
    assert sorted(delivered) == sorted(x for x in full[20:] if x != f"line {bad}")
    assert errors == [("source", bad, "DataCorruptionError")]


# -- an edited state is refused ----------------------------------------------------------------


def _failing(x: int) -> int:
    if x % 11 == 5:
        raise ValueError(f"bad sample {x}")
    return x


def _pipeline() -> al.Loader:
    """A state with every kind of field filled: a reservoir, its prefix, a failure count."""
    return (
        al.Loader.from_source(range(60), shuffle=True, seed=3)
        .map(_failing, on_error="skip", max_failures=10)
        .shuffle(5)
        .batch(4)
    )


def _batches(loader: al.Loader) -> list[list[int]]:
    with loader:
        return [b.tolist() for b in loader]


def test_an_edited_position_is_refused_naming_the_field():
    """Before: state["position"] + 1 was accepted and dropped a key (3719 of 3720 delivered)."""
    make = lambda: al.Loader.from_source(range(3720), shuffle=True, seed=0)  # noqa: E731
    state = state_after(make(), 10)
    state["position"] += 1
    with make() as loader, pytest.raises(ValueError, match="'position' was changed"):
        loader.load_state_dict(state)


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaf_paths(item, (*path, i))


def _replacements(value: Any) -> list[Any]:
    """Other values for one field: near neighbours of the same type and values of other types."""
    out: list[Any] = [None, "x", [], {}]
    if isinstance(value, bool):
        out.append(not value)
    elif isinstance(value, int):
        out += [value + 1, value - 1, 0, -1, value * 2 + 7, str(value), float(value)]
    elif isinstance(value, str):
        out += [value + "x", value[:-1]]
    elif isinstance(value, list):
        out += [value[:-1], [*value, value[-1] if value else 0], value[::-1], [*value, 10**6]]
    elif isinstance(value, dict):
        out += [{**value, "extra": 1}] + [{k: v for k, v in value.items() if k != drop} for drop in value]
    return [v for v in out if v != value or type(v) is not type(value)]


def _edits(state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every single-field edit of ``state``: each value replaced, each field removed, a field added."""
    for path in _leaf_paths(state):
        if not path:
            continue
        parent_path, last = path[:-1], path[-1]
        current = state
        for part in parent_path:
            current = current[part]
        for new in _replacements(current[last]):
            edited = copy.deepcopy(state)
            target = edited
            for part in parent_path:
                target = target[part]
            target[last] = new
            yield f"{path} = {new!r}", edited
        edited = copy.deepcopy(state)
        target = edited
        for part in parent_path:
            target = target[part]
        del target[last]
        yield f"del {path}", edited
    yield "added field", {**copy.deepcopy(state), "note": "hand-made"}


def test_every_single_field_edit_of_a_real_state_is_refused_or_resumes_exactly():
    """Exhaustive: each edit either raises ValueError at load_state_dict or (an edit that
    changes nothing the resume depends on) resumes with exactly the uninterrupted batches."""
    full = _batches(_pipeline())
    state = state_after(_pipeline(), 3)
    assert state["prefix"] and state["failures"] and state["reservoir"], "every field must be filled"
    expected = full[3:]
    accepted: list[str] = []
    refused = 0
    loader = _pipeline()
    with loader:
        for name, edited in _edits(state):
            try:
                loader.load_state_dict(edited)
            except ValueError:
                refused += 1
                continue
            accepted.append(name)
            assert [b.tolist() for b in loader] == expected, f"accepted edit {name} changed the resume"
    assert refused > 300
    # only ways of writing the same state as a pre-digest one are accepted
    assert all("'format'" in name for name in accepted), accepted


def test_a_digest_edit_or_removal_is_refused_naming_the_fields():
    state = state_after(_pipeline(), 3)
    with _pipeline() as loader:
        for edit, message in [
            ({DIGEST: None}, r"state\['digest'\] must be the dict of field hashes"),
            (
                {
                    "prefix": list(reversed(state["prefix"])),
                    "reservoir": {**state["reservoir"], "slots": list(reversed(state["prefix"]))},
                },
                "'prefix' was changed, 'reservoir' was changed",
            ),
            ({"failures": {}}, "'failures' was changed"),
            ({"epoch": 1}, "'epoch' was changed"),
        ]:
            with pytest.raises(ValueError, match=message):
                loader.load_state_dict({**state, **edit})
        without = {k: v for k, v in state.items() if k != "failures"}
        with pytest.raises(ValueError, match="'failures' was removed"):
            loader.load_state_dict(without)


def test_a_state_saved_before_states_had_a_digest_still_resumes_exactly():
    full = _batches(_pipeline())
    state = state_after(_pipeline(), 3)
    legacy = {k: v for k, v in state.items() if k != DIGEST}
    legacy["format"] = "aioloader.state/1"
    assert state["format"] == FORMAT != legacy["format"]
    loader = _pipeline()
    loader.load_state_dict(legacy)
    assert _batches(loader) == full[3:]
    with _pipeline() as loader, pytest.raises(ValueError, match=r"state\['digest'\] must be"):
        loader.load_state_dict({**legacy, "format": FORMAT})
    with _pipeline() as loader, pytest.raises(ValueError, match="has no digest, but the state carries one"):
        loader.load_state_dict({**state, "format": "aioloader.state/1"})  # a sealed state passed off as old


def test_a_digest_survives_json_and_the_state_of_a_loaded_state():
    """The loaded state read back before the run (and a JSON round trip) is the same, sealed."""
    state = state_after(_pipeline(), 3)
    loader = _pipeline()
    loader.load_state_dict(json.loads(json.dumps(state)))
    assert loader.state_dict() == state
    again: Callable[[], al.Loader] = _pipeline
    with again() as twin:
        twin.load_state_dict(loader.state_dict())
    loader.close()
