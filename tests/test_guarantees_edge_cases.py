"""Adversarial checks of guarantees 1-4 (exactly once, deterministic, exact resume, bounded
state): corrupted or foreign states, elastic resume when some ranks had finished, shuffling
batches, resume through every batching kind, async iteration, the process executor."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import aioloader as al
from aioloader._run.bridge import STOP_TIMEOUT_S

from .conftest import state_after


def _plain(value: Any) -> Any:
    """A batch as nested Python lists (comparable, printable)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.tolist() if hasattr(value, "tolist") else value


def _epochs(loader: al.Loader, count: int) -> list[list[Any]]:
    with loader:
        return [[_plain(b) for b in loader] for _ in range(count)]



def _resumed(make: Callable[[], al.Loader], state: dict[str, Any], count: int) -> list[list[Any]]:
    loader = make()
    loader.load_state_dict(state)
    return _epochs(loader, count)


def _assert_resumes_after_every_batch(make: Callable[[], al.Loader]) -> None:
    """For every k from 0 to one past the last batch of epoch 0: the next batches of a loader
    resumed from the state after batch k are those of the uninterrupted run."""
    full = _epochs(make(), 3)
    for k in range(len(full[0]) + 1):
        state = state_after(make(), k)
        expected = [full[0][k:], full[1]] if state["epoch"] == 0 else [full[1], full[2]]
        assert _resumed(make, state, 2) == expected, f"resumed after batch {k}"


# -- corrupted and foreign states -----------------------------------------------------------


def _shuffled() -> al.Loader:
    return al.Loader.from_source(range(30), shuffle=True, seed=1).shuffle(4).batch(4)


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(state: dict[str, Any]) -> None:
        target = state
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return mutate


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda state: state.pop(name)


CORRUPTIONS = {
    "missing fingerprint": (_drop("fingerprint"), "missing 'fingerprint'"),
    "missing position": (_drop("position"), "missing 'position'"),
    "fingerprint not a dict": (_set(("fingerprint",), "x"), r"state\['fingerprint'\] must be a dict"),
    "negative epoch": (_set(("epoch",), -1), r"state\['epoch'\] must be an int >= 0"),
    "negative position": (_set(("position",), -5), r"state\['position'\] must be an int >= 0"),
    "position past the end": (_set(("position",), 10**6), "past the end of the epoch"),
    "prefix out of range": (_set(("prefix",), [10**6]), r"state\['prefix'\] holds 1000000"),
    "prefix negative": (_set(("prefix",), [-1]), r"state\['prefix'\] holds -1"),
    "prefix without reservoir": (_set(("reservoir",), None), r"state\['reservoir'\] is None"),
    "reservoir without fields": (_set(("reservoir",), {"x": 1}), r"state\['reservoir'\] is missing"),
    "slots unlike prefix": (_set(("reservoir", "slots"), [1, 2]), "differs from state\\['prefix'\\]"),
    "negative emitted": (_set(("reservoir", "emitted"), -3), r"\['emitted'\] must be an int >= 0"),
    "world size unlike fingerprint": (_set(("world_size",), 3), "fingerprint says 1"),
    "elastic garbage": (_set(("elastic",), [{"a": 1}]), r"state\['elastic'\]\[0\]\['world_size'\]"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupted_state_is_refused_naming_the_field(name: str) -> None:
    mutate, message = CORRUPTIONS[name]
    state = state_after(_shuffled(), 3)
    assert state["prefix"], "the state must hold a shuffle buffer for these corruptions"
    mutate(state)
    with _shuffled() as loader, pytest.raises(ValueError, match=message):
        loader.load_state_dict(state)


def test_a_repeated_prefix_position_is_refused() -> None:
    state = state_after(_shuffled(), 3)
    state["prefix"] = state["reservoir"]["slots"] = [state["prefix"][0]] * len(state["prefix"])
    with _shuffled() as loader, pytest.raises(ValueError, match="repeats a position"):
        loader.load_state_dict(state)


def test_a_state_from_another_world_size_says_how_to_resume_elastically() -> None:
    state = state_after(al.Loader.from_source(range(20), rank=0, world_size=2), 2)
    with (
        al.Loader.from_source(range(20), rank=0, world_size=3) as loader,
        pytest.raises(ValueError, match=r"world_size: saved 2, now 3.*list of every rank's states"),
    ):
        loader.load_state_dict(state)


def test_an_empty_list_of_states_is_refused() -> None:
    with al.Loader.from_source(range(20)) as loader, pytest.raises(ValueError, match="empty list"):
        loader.load_state_dict([])


def test_a_state_loaded_twice_and_taken_before_the_first_batch_resumes_the_same() -> None:
    (full,) = _epochs(_shuffled(), 1)
    state = state_after(_shuffled(), 4)
    loader = _shuffled()
    loader.load_state_dict(state)
    loader.load_state_dict(copy.deepcopy(state))
    assert loader.state_dict() == state  # pending: the state as loaded
    with loader:
        it = iter(loader)
        assert loader.state_dict() == state  # started, nothing delivered yet
        assert _plain(next(it)) == full[4]
        it.close()


# -- elastic resume -------------------------------------------------------------------------


def test_elastic_resume_counts_a_rank_that_finished_its_share_as_delivered() -> None:
    """Uneven ranks in lock-step: after 3 batches ranks 1 and 2 have all their keys (their
    states are at the start of epoch 1), rank 0 has one left; nothing is lost or repeated."""
    n, delivered, states = 10, [], []
    for rank in range(3):
        loader = al.Loader.from_source(
            range(n), shuffle=True, seed=1, rank=rank, world_size=3, shard_policy="uneven"
        )
        with loader:
            it = iter(loader)
            delivered += [int(next(it)) for _ in range(3)]
            states.append(json.loads(json.dumps(loader.state_dict())))
            it.close()
    assert [s["epoch"] for s in states] == [0, 1, 1]
    after = []
    for rank in range(2):
        loader = al.Loader.from_source(
            range(n), shuffle=True, seed=1, rank=rank, world_size=2, shard_policy="uneven"
        )
        loader.load_state_dict(states)
        with loader:
            after += [int(x) for x in loader]
            assert loader.epoch == 1
    assert sorted(delivered + after) == list(range(n))


def test_elastic_resume_refuses_ranks_in_unrelated_epochs() -> None:
    states = []
    for rank, (epochs, k) in enumerate([(0, 2), (1, 1)]):
        loader = al.Loader.from_source(range(10), rank=rank, world_size=2, shard_policy="uneven")
        loader.set_epoch(epochs)
        states.append(state_after(loader, k))
    loader = al.Loader.from_source(range(10), shard_policy="uneven")
    with loader, pytest.raises(ValueError, match="different epochs"):
        loader.load_state_dict(states)


# -- shuffling batches ----------------------------------------------------------------------


def test_shuffled_batches_can_be_unbatched_with_every_item_once() -> None:
    loader = al.Loader.from_source(range(30), seed=1).batch(4).shuffle(3).unbatch().batch(5)
    (batches,) = _epochs(loader, 1)
    assert sorted(x for b in batches for x in b) == list(range(30))


@pytest.mark.parametrize("batching", ["batch", "batch_by_tokens"])
def test_the_state_of_a_loader_shuffling_batches_is_refused_clearly(batching: str) -> None:
    loader = al.Loader.from_source([[0] * (i % 4 + 1) for i in range(30)], seed=1)
    loader = loader.batch(4, collate=list) if batching == "batch" else loader.batch_by_tokens(6, collate=list)
    with pytest.raises(ValueError, match="stage 'shuffle' shuffles batches"):
        state_after(loader.shuffle(3), 2)


# -- exact resume through every kind of stage, at every batch ------------------------------


def _double(x: int) -> int:
    return 2 * x


def _fail_on_some(x: int) -> int:
    if x in (3, 17, 22):
        raise ValueError(f"sample {x} is corrupt")
    return x


class _Stream:
    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __iter__(self):
        return iter(range(self.offset, self.offset + self.n))


PIPELINES: dict[str, Callable[[], al.Loader]] = {
    "batch_by_tokens": lambda: al.Loader.from_source(
        [[i] * (i % 5 + 1) for i in range(23)], shuffle=True, seed=1
    ).batch_by_tokens(8, collate=list),
    "skip failures before and after": lambda: (
        al.Loader.from_source(range(23), shuffle=True, seed=1)
        .map(_fail_on_some, on_error="skip", max_failures=10)
        .shuffle(3)
        .batch(4)
    ),
    "validate skip, drop_last": lambda: (
        al.Loader.from_source(range(23), seed=1)
        .validate(lambda x: x % 5 != 2, on_error="skip", max_failures=10)
        .batch(4, drop_last=True)
    ),
    "mix of streams": lambda: (
        al.Loader.from_source(al.sources.Mix([_Stream(9), _Stream(14, 100)], [1, 2], seed=2, stop="all"))
        .shuffle(4)
        .batch(3)
    ),
    "chunks, sharded pad, reservoir": lambda: (
        al.Loader.from_source(
            range(23), shuffle="chunks", chunk_window=2, seed=1, rank=2, world_size=3, shard_policy="pad"
        )
        .shuffle(3)
        .batch(2)
    ),
    "unbatch and rebatch": lambda: (
        al.Loader.from_source(range(23), shuffle=True, seed=1).batch(3).unbatch().batch(4)
    ),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_resume_after_every_batch_through(name: str) -> None:
    _assert_resumes_after_every_batch(PIPELINES[name])


def test_class_balanced_refuses_a_negative_num_samples() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        al.order.ClassBalanced(np.arange(6) % 2, num_samples=-3)


async def test_async_iteration_resumes_exactly() -> None:
    def make() -> al.Loader:
        return al.Loader.from_source(range(40), shuffle=True, seed=3).shuffle(5).batch(3)

    async def collect(loader: al.Loader) -> list[Any]:
        return [_plain(b) async for b in loader]

    async with make() as loader:
        full = await collect(loader)
    async with make() as loader:
        taken = 0
        async for _ in loader:
            taken += 1
            if taken == 5:
                state = json.loads(json.dumps(loader.state_dict()))
                break
    resumed = make()
    resumed.load_state_dict(state)
    async with resumed:
        assert await collect(resumed) == full[5:]


def test_the_process_executor_gives_the_inline_sequence_and_resumes_it() -> None:
    def make(executor: str) -> al.Loader:
        return (
            al.Loader.from_source(range(97), shuffle=True, seed=5)
            .map(_fail_on_some, executor=executor, concurrency=2, on_error="skip", max_failures=5)
            .shuffle(6)
            .batch(5)
        )

    (reference,) = _epochs(make("inline"), 1)
    state = state_after(make("process"), 7)
    loader = make("process")
    loader.load_state_dict(state)
    assert _epochs(loader, 1) == [reference[7:]]


# -- bugs whose fix is in files outside this review's scope ---------------------------------


class _AsyncStream:
    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self):
        async def items():
            for i in range(self.n):
                yield i

        return items()


def test_resume_at_the_end_of_a_padded_async_stream() -> None:
    def make() -> al.Loader:
        return (
            al.Loader.from_source(_AsyncStream(23), rank=1, world_size=3, shard_policy="pad")
            .shuffle(2)
            .batch(2)
        )

    _assert_resumes_after_every_batch(make)


def test_a_streaming_array_source_shards_uneven() -> None:
    rows = np.arange(57 * 3, dtype=np.int32).reshape(57, 3)
    seen = []
    for rank in range(3):
        source = al.sources.Array(rows, mode="streaming")
        loader = al.Loader.from_source(source, rank=rank, world_size=3, shard_policy="uneven")
        with loader:
            seen += [int(row[0]) // 3 for row in loader]
    assert sorted(seen) == list(range(57))


def test_a_state_saved_with_processes_resumes_with_threads() -> None:
    """The executor never changes the data, so it is not part of what a state must match."""

    def make(executor: str) -> al.Loader:
        return (
            al.Loader.from_source(list(range(40)), shuffle=True, seed=3)
            .map(_double, executor=executor, concurrency=2)
            .batch(4)
        )

    with make("thread") as whole:
        expected = [b.tolist() for b in whole]
    with make("process") as first:
        iterator = iter(first)
        head = [next(iterator).tolist() for _ in range(3)]
        state = first.state_dict()
        iterator.close()
    with make("thread") as resumed:
        resumed.load_state_dict(state)
        rest = [b.tolist() for b in resumed]
    assert head + rest == expected


def test_set_epoch_after_load_state_dict_must_name_the_states_epoch() -> None:
    def make() -> al.Loader:
        return al.Loader.from_source(list(range(20)), shuffle=True, seed=1).batch(5)

    with make() as first:
        first.set_epoch(2)
        iterator = iter(first)
        head = [next(iterator).tolist()]
        state = first.state_dict()
        rest_expected = [b.tolist() for b in iterator]
    with make() as resumed:
        resumed.load_state_dict(state)
        assert resumed.resuming
        with pytest.raises(
            ValueError, match=r"set_epoch\(3\) after load_state_dict\(\) of a state in epoch 2"
        ):
            resumed.set_epoch(3)
        resumed.set_epoch(2)  # the state's own epoch is fine
        assert [b.tolist() for b in resumed] == rest_expected
        assert not resumed.resuming
        resumed.set_epoch(5)  # once resumed, any epoch again
    assert head and len(rest_expected) == 3


def test_a_state_is_refused_by_a_pipeline_that_cannot_resume_exactly() -> None:
    """state_dict() of an unordered map raises, so a state for it can only be hand-made; loading
    one must be refused too, not resumed approximately."""
    from aioloader.order.resume import FORMAT
    from aioloader.order.sharding import RankInfo

    loader = al.Loader.from_source(list(range(10))).map(_double, ordered=False, executor="thread").batch(2)
    with loader:
        with pytest.raises(ValueError, match="state_dict: stage 'map\\(_double\\)' has ordered=False"):
            loader.state_dict()
        state = {
            "format": FORMAT,
            "rank": 0,
            "world_size": 1,
            "fingerprint": loader._fingerprint(RankInfo(0, 1)),
            "epoch": 0,
            "position": 4,
            "prefix": [],
            "reservoir": None,
            "elastic": [],
        }
        with pytest.raises(ValueError, match="load_state_dict: stage 'map\\(_double\\)' has ordered=False"):
            loader.load_state_dict(state)
        assert not loader.resuming


def test_state_dict_waits_for_a_loop_held_past_the_stop_timeout() -> None:
    """A sync consumer's state_dict() is answered on the loop thread. A loop held longer than
    STOP_TIMEOUT_S (an inline call; executor="auto"'s GIL trial took that long on a busy machine)
    delays the answer: it failed with TimeoutError, which ended a subprocess loader's run."""
    entered, asked = threading.Event(), threading.Event()

    def held(x: int) -> int:
        if x == 4:
            entered.set()
            asked.wait(30)
            time.sleep(STOP_TIMEOUT_S + 0.5)  # the slow part: the loop is held past one wait
        return x

    loader = (
        al.Loader.from_source(list(range(10))).map(held, executor="inline").batch(2).options(block_size=1)
    )
    with loader:
        batches = iter(loader)
        assert next(batches).tolist() == [0, 1]
        assert entered.wait(30), "the loop did not run ahead into the held call"
        asked.set()
        state = loader.state_dict()
        assert (state["epoch"], state["position"]) == (0, 2)
        assert [b.tolist() for b in batches] == [[2, 3], [4, 5], [6, 7], [8, 9]]
