"""A small object server for the remote-source tests: aiohttp on 127.0.0.1, in a thread.

GET (with ``Range``) and HEAD over objects held in memory, with a first-byte latency (on both), a
bandwidth per connection, and faults queued per object and consumed one per GET: ``"500"``,
``"reset"`` (the connection is cut half-way through the body), ``"truncate"`` (half the body,
then a clean close: fewer bytes than the Content-Length said) and ``"trickle"`` (a few bytes,
then nothing). It counts requests, the body bytes it sent, the most GETs (and HEADs) in
flight at once and the seconds GETs were being answered, summed over them (over a run's wall
time: the mean number in flight).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict

from aiohttp import web


class ObjectServer:
    def __init__(self, *, latency_s: float = 0.0, bytes_per_s: float | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.requests: dict[str, int] = defaultdict(int)
        self.bytes_sent = 0
        self.in_flight = 0  # GETs being answered now
        self.max_in_flight = 0
        self.request_s = 0.0  # seconds of GETs being answered, summed over the GETs
        self.head_latency_s: dict[str, float] = {}  # an object's HEADs answered this much later
        self.heads_in_flight = 0  # HEADs (size lookups) being answered now
        self.max_heads_in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-objserver", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> ObjectServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{name:.+}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- serving ----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        data = self.objects.get(name)
        if data is None:
            return web.Response(status=404)
        if request.method == "HEAD":  # a round trip too: the same first-byte latency
            self.heads_in_flight += 1
            self.max_heads_in_flight = max(self.max_heads_in_flight, self.heads_in_flight)
            try:
                if self.latency_s or name in self.head_latency_s:
                    await asyncio.sleep(self.latency_s + self.head_latency_s.get(name, 0.0))
            finally:
                self.heads_in_flight -= 1
            return web.Response(headers={"Content-Length": str(len(data)), "Accept-Ranges": "bytes"})
        self.requests[name] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = time.perf_counter()
        try:
            return await self._answer(request, name, data)
        finally:
            self.in_flight -= 1
            self.request_s += time.perf_counter() - started

    async def _answer(self, request: web.Request, name: str, data: bytes) -> web.StreamResponse:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        fault = self.faults[name].pop(0) if self.faults[name] else None
        if fault == "500":
            return web.Response(status=500, text="injected")
        span = request.http_range
        start, stop, _ = span.indices(len(data))
        body = data[start:stop]
        ranged = request.headers.get("Range") is not None
        headers = {"Content-Length": str(len(body)), "Accept-Ranges": "bytes"}
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        response = web.StreamResponse(status=206 if ranged else 200, headers=headers)
        await response.prepare(request)
        if fault in ("reset", "truncate"):
            await response.write(body[: len(body) // 2])
            self.bytes_sent += len(body) // 2
            transport = request.transport
            if transport is not None:
                if fault == "reset":
                    transport.abort()
                else:
                    transport.close()
            return response
        if fault == "trickle":
            for i in range(len(body)):
                await response.write(body[i : i + 1])
                self.bytes_sent += 1
                await asyncio.sleep(0.5)
            return response
        step = 64 * 1024
        for first in range(0, len(body), step):
            piece = body[first : first + step]
            await response.write(piece)
            self.bytes_sent += len(piece)
            if self.bytes_per_s:
                await asyncio.sleep(len(piece) / self.bytes_per_s)
        await response.write_eof()
        return response
