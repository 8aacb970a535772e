"""A state saved on one rank resumes on every rank of the same world size (each rank at the
same step of its own share), as PyTorch Lightning under DDP needs: it saves rank 0's state and
hands it to every rank. ``loader.sampler.set_epoch(e)`` is the epoch call such frameworks make."""

from __future__ import annotations

import pytest

import aioloader as al


def _make(rank: int, *, policy: str = "drop", world: int = 2) -> al.Loader:
    return al.Loader.from_source(
        list(range(23)), shuffle=True, seed=3, rank=rank, world_size=world, shard_policy=policy
    ).batch(3)


def _epoch(loader: al.Loader) -> list[list[int]]:
    return [b.tolist() for b in loader]


@pytest.mark.parametrize("policy", ["drop", "pad", "uneven"])
def test_rank_0s_state_resumes_every_rank_at_the_same_step(policy: str) -> None:
    steps = 2
    with _make(0, policy=policy) as saver:
        iterator = iter(saver)
        for _ in range(steps):
            next(iterator)
        state = saver.state_dict()
    for rank in (0, 1):
        with _make(rank, policy=policy) as plain:
            expected = _epoch(plain)[steps:]
        with _make(rank, policy=policy) as resumed:
            resumed.load_state_dict(state)
            assert _epoch(resumed) == expected
            assert expected


def test_a_state_at_the_end_of_rank_0s_epoch_starts_the_next_on_rank_1() -> None:
    with _make(0) as saver:
        _epoch(saver)
        state = saver.state_dict()
    with _make(1) as plain:
        _epoch(plain)
        expected = _epoch(plain)
    with _make(1) as resumed:
        resumed.load_state_dict(state)
        assert resumed.epoch == 1
        assert _epoch(resumed) == expected


def test_another_ranks_state_is_refused_where_the_step_depends_on_the_data() -> None:
    def filtered(rank: int) -> al.Loader:
        return al.Loader.from_source(list(range(20)), rank=rank, world_size=2).filter(lambda x: x % 3).batch(2)

    with filtered(0) as saver:
        next(iter(saver))
        state = saver.state_dict()
    with filtered(1) as other, pytest.raises(ValueError, match=r"rank 0's; this loader is rank 1.*filter"):
        other.load_state_dict(state)
    with filtered(0) as same:
        same.load_state_dict(state)  # its own rank still resumes


def test_another_ranks_state_from_another_world_size_is_refused() -> None:
    with _make(0, world=3) as saver:
        next(iter(saver))
        state = saver.state_dict()
    with _make(1) as other, pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(state)


def test_sampler_set_epoch_after_a_state_of_an_earlier_epoch_starts_that_epoch() -> None:
    """Lightning's ``limit_train_batches`` ends an epoch after a few batches and checkpoints it
    as finished; on resume it calls ``sampler.set_epoch(next epoch)``."""
    with _make(0) as saver:
        iterator = iter(saver)
        next(iterator)
        state = saver.state_dict()  # epoch 0, one batch in: the framework cut the epoch here
        rest = list(iterator)
    with _make(0) as plain:
        _epoch(plain)
        epoch_1 = _epoch(plain)
    with _make(0) as resumed:
        resumed.load_state_dict(state)
        resumed.sampler.set_epoch(0)  # the same epoch: the state resumes
        assert resumed.resuming
        assert [b.tolist() for b in resumed] == [b.tolist() for b in rest]
    with _make(0) as moved_on:
        moved_on.load_state_dict(state)
        moved_on.sampler.set_epoch(1)
        assert not moved_on.resuming and moved_on.epoch == 1
        assert _epoch(moved_on) == epoch_1
    with _make(0) as saver:
        _epoch(saver)
        next(iter(saver))
        state_in_epoch_1 = saver.state_dict()
    with _make(0) as earlier:
        earlier.load_state_dict(state_in_epoch_1)
        with pytest.raises(ValueError, match=r"set_epoch\(0\) after load_state_dict"):
            earlier.sampler.set_epoch(0)
