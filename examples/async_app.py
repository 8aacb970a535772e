"""An async-native application: batches consumed with ``async for`` on the app's own loop.

The source is an async generator (a feed of records arriving over time), enrichment is an
async function (a simulated lookup service; 8 lookups in flight), and the consumer is a
coroutine next to another task (a heartbeat) that keeps running: nothing blocks the loop.

    python examples/async_app.py
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aioloader as al

RECORDS = 400


async def feed() -> AsyncIterator[dict[str, Any]]:
    """Records arriving from somewhere (a queue, a socket, an HTTP stream)."""
    for i in range(RECORDS):
        if i % 50 == 0:
            await asyncio.sleep(0.005)  # a burst arrives
        yield {"id": i, "value": float(i)}


async def enrich(record: dict[str, Any]) -> dict[str, Any]:
    """An async lookup per record (a database or a service)."""
    await asyncio.sleep(0.001)
    return {**record, "score": record["value"] * 0.5}


async def heartbeat(stop: asyncio.Event, beats: list[int]) -> None:
    while not stop.is_set():
        beats.append(1)
        await asyncio.sleep(0.005)


async def main() -> int:
    loader = (
        al.Loader.from_source(feed())
        .map(enrich, concurrency=8)  # async fn: runs on this loop, 8 at a time, order kept
        .batch(32, collate=al.collate.stack)
        .prefetch(2)
    )
    stop, beats = asyncio.Event(), []
    ticker = asyncio.create_task(heartbeat(stop, beats))
    ids = []
    async with loader:
        async for batch in loader:
            ids.extend(batch["id"].tolist())
            await asyncio.sleep(0)  # the app does its own async work per batch
    stop.set()
    await ticker
    in_order = ids == list(range(RECORDS))
    print(
        f"{len(ids)} records in {RECORDS // 32 + 1} batches, in order: {in_order}; heartbeat ticked {len(beats)} times"
    )
    return 0 if in_order else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
