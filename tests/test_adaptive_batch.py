"""adaptive_batch: a batch size that follows the consumer's step time (seed 001's
AdaptiveDataLoader), a pure function of the step times, and exact on resume."""

from __future__ import annotations

import json

import pytest
import torch

import aioloader as al

STEPS = [0.1, 0.1, 2.0, 0.5, 1.0, 1.0, 0.2]  # seconds, reported per batch, cycled


def make(**options) -> al.Loader:
    settings = {"target_step_s": 1.0, "max_size": 64, "lag": 1, **options}
    return al.Loader.from_source(range(300), shuffle=True, seed=4).adaptive_batch(4, **settings)


def consume(loader: al.Loader, start: int = 0, stop: int | None = None) -> list[list[int]]:
    """Batches from batch ``start``, reporting STEPS; stops after batch ``stop`` (exclusive)."""
    out = []
    for j, batch in enumerate(loader, start):
        out.append(batch.tolist())
        loader.record_step_time(STEPS[j % len(STEPS)])
        if stop is not None and j + 1 == stop:
            break
    return out


def test_sizes_follow_the_step_times_by_the_rule():
    with make() as loader:
        sizes = [len(b) for b in consume(loader)]
    # size[j] = adjust(size[j-1], step[j-2]): x2 under 0.75 s, /2 over 1.25 s
    assert sizes[:9] == [4, 4, 8, 16, 8, 16, 16, 16, 32]
    assert sum(sizes) == 300 and max(sizes) <= 64
    with make() as again:
        assert [len(b) for b in consume(again)] == sizes  # deterministic, whatever the timing


@pytest.mark.parametrize("cut", [3, 9])
def test_resume_continues_exactly_with_the_same_sizes(cut):
    with make() as loader:
        whole = consume(loader) + consume(loader, 0)  # two epochs, sizes carry over
    with make() as first:
        head = consume(first, 0, cut)
        state = json.loads(json.dumps(first.state_dict()))
    assert state["adaptive"]["batches"] == cut
    with make() as resumed:
        resumed.load_state_dict(state)
        tail = consume(resumed, cut)
        tail += consume(resumed, 0)
    assert head + tail == whole


def test_without_reports_the_step_is_measured_and_nothing_hangs():
    loader = al.Loader.from_source(torch.arange(200)).adaptive_batch(8, target_step_s=10.0, max_size=32)
    with loader:
        batches = list(loader)  # steps far under the target: the size grows to max_size
    assert torch.equal(torch.cat(batches), torch.arange(200))
    assert [len(b) for b in batches][:5] == [8, 8, 8, 16, 32]


def test_a_break_mid_epoch_ends_that_step_and_the_next_epoch_runs_through():
    loader = al.Loader.from_source(range(100)).adaptive_batch(4, target_step_s=10.0, max_size=16, lag=1)
    with loader:
        for j, _batch in enumerate(loader):
            if j == 3:
                break  # batch 3's step is never reported: it ends with the break
        second = [len(b) for b in loader]
    assert sum(second) == 100 and second[:3] == [16, 16, 16]


async def test_async_iteration_follows_the_same_rule():
    with make() as loader:
        sizes = []
        async for batch in loader:
            sizes.append(len(batch))
            loader.record_step_time(STEPS[(len(sizes) - 1) % len(STEPS)])
    assert sizes[:9] == [4, 4, 8, 16, 8, 16, 16, 16, 32]


def test_arguments_are_checked_by_name():
    source = al.Loader.from_source(range(10))
    with pytest.raises(ValueError, match="target_step_s"):
        source.adaptive_batch(4, target_step_s=0)
    with pytest.raises(ValueError, match="initial_size"):
        source.adaptive_batch(4, target_step_s=1.0, max_size=2)
    with pytest.raises(TypeError, match="record_step_time"):
        source.batch(2).record_step_time(0.1)
    loader = source.adaptive_batch(4, target_step_s=1.0)
    with pytest.raises(ValueError, match=r"filter.*cannot follow adaptive_batch"):
        loader.filter(bool)
    with pytest.raises(ValueError, match="shuffle cannot follow adaptive_batch"):
        loader.shuffle(8)
    loader.map(len).prefetch(2).to_device("cpu")  # one batch in, one batch out: allowed
    with pytest.raises(ValueError, match="no batch"):
        loader.record_step_time(0.1)
    with loader:
        iterator = iter(loader)
        next(iterator)
        loader.record_step_time(0.1)
        with pytest.raises(ValueError, match="recorded already"):
            loader.record_step_time(0.1)
