"""Backpressure: with a stalled consumer the source never runs more than the queue bounds ahead,
also for an endless source."""

from __future__ import annotations

import asyncio
import itertools

import aioloader as al

BLOCK = 8


class CountingStream:
    """An endless iterable that counts how many items were pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self):
        for i in itertools.count():
            self.pulled += 1
            yield i


def _bound(stages_before_batch: int, batch: int, batch_depth: int = 2, sample_depth: int = 4) -> int:
    # every channel full, plus one block in the hands of each stage (and one being pulled)
    samples = (stages_before_batch + 1) * (sample_depth + 1) * BLOCK
    batched = (batch_depth + 1) * batch
    return samples + batched + BLOCK


async def _settle() -> None:
    for _ in range(300):  # run every ready task until all of them block (no wall clock)
        await asyncio.sleep(0)


async def test_async_consumer_stalled_source_stops():
    stream = CountingStream()
    loader = al.Loader.from_source(stream).map(lambda x: x + 1).batch(4).options(block_size=BLOCK)
    async with loader:
        it = aiter(loader)
        first = await anext(it)
        assert first.tolist() == [1, 2, 3, 4]
        await _settle()
        pulled = stream.pulled
        await _settle()
        assert stream.pulled == pulled, "the source kept running while the consumer stalled"
        assert pulled <= _bound(stages_before_batch=1, batch=4)
        await it.aclose()


def test_sync_consumer_stalled_source_stops(event_loop_kind):
    stream = CountingStream()
    loader = (
        al.Loader.from_source(stream)
        .map(lambda x: x + 1)
        .batch(4)
        .prefetch(2)
        .options(block_size=BLOCK, event_loop=event_loop_kind)
    )
    with loader:
        it = iter(loader)
        assert next(it).tolist() == [1, 2, 3, 4]
        loop = loader._runtime.loop_thread(event_loop_kind).loop
        asyncio.run_coroutine_threadsafe(_settle(), loop).result()
        pulled = stream.pulled
        asyncio.run_coroutine_threadsafe(_settle(), loop).result()
        assert stream.pulled == pulled
        assert pulled <= _bound(stages_before_batch=1, batch=4)
        it.close()


async def test_concurrent_map_respects_bounds():
    stream = CountingStream()

    async def work(x: int) -> int:
        await asyncio.sleep(0)
        return x

    loader = al.Loader.from_source(stream).map(work, concurrency=4).batch(4).options(block_size=BLOCK)
    async with loader:
        it = aiter(loader)
        await anext(it)
        await _settle()
        pulled = stream.pulled
        await _settle()
        assert stream.pulled == pulled
        # the map's window adds 2 x concurrency chunks of at most one block each
        assert pulled <= _bound(stages_before_batch=1, batch=4) + (2 * 4 + 1) * BLOCK
        await it.aclose()


async def test_channel_grow_wakes_a_blocked_producer_and_never_shrinks():
    from aioloader._run.channel import Channel

    channel = Channel(1, "test")
    await channel.put(0)
    producer = asyncio.ensure_future(channel.put(1))
    await _settle()
    assert not producer.done(), "a full channel blocks its producer"
    channel.grow(1)  # not larger: nothing changes
    await _settle()
    assert not producer.done()
    channel.grow(3)
    await _settle()
    assert producer.done() and len(channel) == 2 and channel.capacity == 3
    channel.grow(2)
    assert channel.capacity == 3
