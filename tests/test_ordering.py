"""Ordering: ``ordered=True`` emits in input order whatever the completion order, through a
bounded reorder window; ``ordered=False`` emits in completion order and loses nothing."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aioloader as al


def _jittered_sync(seed: int):
    rng = random.Random(seed)
    delays = [rng.random() * 0.002 for _ in range(10_000)]

    def work(x: int) -> int:
        time.sleep(delays[x % len(delays)])  # random completion order, not a timing assertion
        return x * 10

    return work


def _jittered_async(seed: int):
    rng = random.Random(seed)
    delays = [rng.random() * 0.002 for _ in range(10_000)]

    async def work(x: int) -> int:
        await asyncio.sleep(delays[x % len(delays)])
        return x * 10

    return work


@pytest.mark.parametrize("executor", ["thread", "async"])
def test_ordered_output_under_random_delays(executor, event_loop_kind):
    fn = _jittered_sync(1) if executor == "thread" else _jittered_async(1)
    kwargs = {"executor": "thread"} if executor == "thread" else {}
    loader = (
        al.Loader.from_source(range(300)).map(fn, concurrency=8, **kwargs).options(event_loop=event_loop_kind)
    )
    with loader:
        assert list(loader) == [x * 10 for x in range(300)]


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(0, 120),
    concurrency=st.integers(1, 9),
    block=st.integers(1, 20),
    batch=st.integers(1, 13),
    seed=st.integers(0, 1000),
)
def test_ordered_is_deterministic_for_any_concurrency(n, concurrency, block, batch, seed):
    loader = (
        al.Loader.from_source(range(n), shuffle=True, seed=seed)
        .map(_jittered_sync(seed), executor="thread", concurrency=concurrency)
        .batch(batch)
        .options(block_size=block)
    )
    reference = al.Loader.from_source(range(n), shuffle=True, seed=seed).map(lambda x: x * 10).batch(batch)
    with loader, reference:
        assert [b.tolist() for b in loader] == [b.tolist() for b in reference]


async def test_unordered_emits_in_completion_order_and_loses_nothing():
    release_zero = asyncio.Event()

    async def work(x: int) -> int:
        if x == 0:
            await release_zero.wait()
        if x == 5:
            release_zero.set()
        return x

    async with al.Loader.from_source(range(20)).map(work, concurrency=8, ordered=False) as loader:
        got = [x async for x in loader]
    assert sorted(got) == list(range(20))
    assert got.index(5) < got.index(0)


async def test_ordered_holds_back_later_items_behind_a_slow_one():
    release_zero = asyncio.Event()

    async def work(x: int) -> int:
        if x == 0:
            await release_zero.wait()
        if x == 5:
            release_zero.set()
        return x

    async with al.Loader.from_source(range(20)).map(work, concurrency=8) as loader:
        assert [x async for x in loader] == list(range(20))


async def test_reorder_window_is_bounded():
    """While item 0 is stuck, at most ``2 x concurrency`` chunks may start."""
    concurrency = 3
    release = asyncio.Event()
    started: list[int] = []

    async def work(x: int) -> int:
        started.append(x)
        if x == 0:
            await release.wait()
        return x

    async with al.Loader.from_source(range(1000)).map(work, concurrency=concurrency) as loader:
        it = aiter(loader)
        first = asyncio.ensure_future(anext(it))
        for _ in range(200):  # let every task run until all are blocked (no wall clock)
            await asyncio.sleep(0)
        assert not first.done()
        assert len(started) <= 2 * concurrency + 1
        release.set()
        assert await first == 0
        rest = [x async for x in it]
    assert rest == list(range(1, 1000))


def test_thread_executor_really_runs_concurrently():
    """``concurrency`` threads are busy at once (a barrier that needs all of them)."""
    barrier = threading.Barrier(4, timeout=10)

    def work(x: int) -> int:
        if x < 4:
            barrier.wait()
        return x

    with al.Loader.from_source(range(16)).map(work, executor="thread", concurrency=4) as loader:
        assert list(loader) == list(range(16))
