"""A batch the consumer has dropped is freed at once: nothing in the loader keeps it alive,
also when a worker sent it in a block of many batches (a process map fused with its batch)."""

from __future__ import annotations

import gc
import weakref

import pytest

import aioloader as al


class Payload:
    """An item that can be watched through a weak reference."""


def make_payload(i: int) -> Payload:
    return Payload()


def _loader() -> al.Loader:
    # blocks of 96 samples: each process task returns a block of 24 batches of 4
    return (
        al.Loader.from_source(list(range(192)))
        .map(make_payload, executor="process", concurrency=1)
        .batch(4, collate=list)
        .options(block_size=96)
    )


def _watch(delivered: weakref.WeakSet[Payload], batch: list[Payload]) -> int:
    """How many items delivered so far are alive, ``batch`` (the one in hand) included."""
    delivered.update(batch)
    gc.collect()
    return len(delivered)


def test_a_dropped_batch_is_freed_though_its_block_holds_more() -> None:
    delivered: weakref.WeakSet[Payload] = weakref.WeakSet()
    alive = []
    with _loader() as loader:
        for batch in loader:
            alive.append(_watch(delivered, batch))
            del batch
    assert len(alive) == 48
    assert max(alive) == 4, alive  # before: up to 96, the block's delivered batches


@pytest.mark.asyncio
async def test_a_dropped_batch_is_freed_though_its_block_holds_more_async() -> None:
    delivered: weakref.WeakSet[Payload] = weakref.WeakSet()
    alive = []
    async with _loader() as loader:
        async for batch in loader:
            alive.append(_watch(delivered, batch))
            del batch
    assert len(alive) == 48
    assert max(alive) == 4, alive
