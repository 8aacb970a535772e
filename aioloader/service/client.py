"""The loader service's client: ``al.connect(address, token=...)`` iterates a remote Loader.

A :class:`Client` behaves like the Loader it stands for, for one rank: ``for`` and ``async for``
run the next epoch, ``len()`` when the server knows it, ``set_epoch``, ``state_dict`` /
``load_state_dict`` (exact resume, also against a restarted server), ``close``.

Each iteration is one connection (:class:`_Stream`): authenticate, ``start`` from the state the
:class:`~aioloader.service.cursor.Cursor` gives, then a reader task receives frames, decodes
batches (JSON tree + raw bytes, never unpickled) and hands them to the consumer, who grants one
credit back per batch taken, so at most ``credits`` batches are in flight or waiting here. Sync
iteration runs the connection on the client's own loop thread and hands batches over a
``queue.SimpleQueue``; async iteration runs it on the caller's loop.

Failures are never a hang: a refused connection, end of file, a reset, a malformed frame or
``timeout`` seconds without any frame (the server pings every few seconds) end the iteration
with ``ConnectionError``. The state of the last batch handed out stays in ``state_dict()``, and
the next iteration resumes the interrupted epoch there (retry the loop once the server is back,
or give the state to a new client with ``load_state_dict``).

A served pipeline that cannot be resumed exactly (``.bucket``, ``.pack``, ``.map(ordered=False)``,
batches shuffled) streams all the same, but has no state to resume from mid-epoch: its
``state_dict()`` raises the Loader's ``ValueError``, and after a connection lost mid-epoch the
next iteration raises ``RuntimeError`` until ``set_epoch`` says which epoch to run from its
start (see :mod:`.cursor`), rather than repeat or skip batches unsaid.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import ssl as _ssl
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, NoReturn

import aioloader.service.protocol as protocol
from aioloader._closing import Closing
from aioloader._run.bridge import LoopThread
from aioloader.order.sharding import resolve_rank
from aioloader.service.codec import DecodeError, decode
from aioloader.service.cursor import Cursor
from aioloader.service.protocol import (
    AuthenticationError,
    FrameTooLarge,
    ProtocolError,
    ServerBusyError,
    error_from,
    expect,
    read_frame,
    write_frame,
)

HANDSHAKE_MAX_BYTES = 64 * 1024
_CLOSE_TIMEOUT_S = 2.0
Item = tuple[str, Any, Any]  # ("batch", value, state) | ("end", None, state) | ("error", exc, None)


def parse_address(address: Any) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``(host, port)``."""
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
    elif isinstance(address, str) and ":" in address:
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"address must be 'host:port', got {address!r}") from None
    else:
        raise ValueError(f"address must be 'host:port' or (host, port), got {address!r}")
    if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"address must be 'host:port' or (host, port), got {address!r}")
    if not 0 < port < 65536:
        raise ValueError(f"address port must be in [1, 65535], got {port}")
    return host, port


class _Stream:
    """One connection running one epoch; lives on one event loop."""

    def __init__(self, client: Client, deliver: Callable[[Item], None]) -> None:
        self._client = client
        self._deliver_to = deliver
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def _deliver(self, item: Item) -> None:
        if item[0] != "batch":
            if self._finished:
                return
            self._finished = True
        self._deliver_to(item)

    async def open(self, state: dict[str, Any]) -> None:
        client = self._client
        self.loop = asyncio.get_running_loop()
        reader, writer, heartbeat = await client._open()
        self._writer = writer
        try:
            request = {"t": "start", "state": state, "credits": client._credits, **client._rank_fields()}
            write_frame(writer, request)
            async with asyncio.timeout(client._timeout):
                await writer.drain()
                header, _ = await read_frame(reader)
            expect(header, "started")
        except BaseException as exc:
            writer.transport.abort()
            client._raise_for(exc)
        timeout = max(client._timeout, 3 * heartbeat)
        self._task = asyncio.create_task(self._read(reader, timeout), name="aioloader-connect:read")

    async def _read(self, reader: asyncio.StreamReader, timeout: float) -> None:
        client = self._client
        expected = 0
        try:
            while True:
                async with asyncio.timeout(timeout):
                    header, body = await read_frame(reader, max_body=client._max_frame_bytes)
                kind = header["t"]
                if kind == "ping":
                    continue
                if kind == "batch":
                    if header.get("seq") != expected or not isinstance(header.get("state"), dict):
                        raise ProtocolError(f"batch {header.get('seq')!r} arrived, expected {expected}")
                    value = decode(header.get("data"), body)
                    del body
                    expected += 1
                    client._batches += 1
                    self._deliver(("batch", value, header["state"]))
                elif kind == "end":
                    self._deliver(("end", None, header.get("state")))
                    return
                elif kind == "error":
                    self._deliver(("error", error_from(header), None))
                    return
                else:
                    raise ProtocolError(f"unexpected {kind!r} frame")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self._deliver(
                (
                    "error",
                    ConnectionError(
                        f"no frame from the loader server at {client.address} for {timeout:.0f}s"
                    ),
                    None,
                )
            )
        except BaseException as exc:
            self._deliver(("error", client._connection_error(exc), None))

    def grant(self) -> None:
        """One more batch may be sent (the consumer took one)."""
        writer = self._writer
        if writer is not None and not writer.is_closing() and not self._finished:
            write_frame(writer, {"t": "credit", "n": 1})

    def abort(self) -> None:
        """Stop at once (``Client.close()`` from any iteration state); on the stream's loop."""
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.transport.abort()
        self._deliver(("error", ConnectionError("the client was closed"), None))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._deliver(("error", ConnectionError("the stream was closed"), None))
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await writer.wait_closed()
        except (TimeoutError, OSError, ConnectionError):
            writer.transport.abort()


class Client(Closing):
    """A remote Loader for one rank. Use :func:`connect` to make one."""

    def __init__(
        self,
        address: Any,
        *,
        token: str | bytes,
        rank: int | None = None,
        world_size: int | None = None,
        credits: int = 4,
        timeout: float = 30.0,
        max_frame_bytes: int = protocol.MAX_BODY_BYTES,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        self._host, self._port = parse_address(address)
        self._token = protocol.check_token(token)
        info = resolve_rank(rank, world_size)
        self.rank, self.world_size = info.rank, info.world_size
        if isinstance(credits, bool) or not isinstance(credits, int) or not 1 <= credits <= 1024:
            raise ValueError(f"credits must be an int in [1, 1024], got {credits!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(max_frame_bytes, bool) or not isinstance(max_frame_bytes, int) or max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be a positive int, got {max_frame_bytes!r}")
        self._credits = credits
        self._timeout = float(timeout)
        self._max_frame_bytes = max_frame_bytes
        self._ssl = ssl
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._thread: LoopThread | None = None
        self._closed = False
        self._batches = 0
        self._finalizer = weakref.finalize(self, _stop_thread, [None])
        try:
            info_frame = self._run(self._hello(None))
        except BaseException:
            self._closed = True
            self._finalizer()
            raise
        self._length: int | None = info_frame.get("len")
        self._cursor = Cursor(info_frame["state"])

    # -- the Loader's face -------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will run."""
        return self._cursor.next_epoch

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._cursor.set_epoch(epoch)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("len() is not known for this loader (the server's spec has no fixed length)")
        return self._length

    def state_dict(self) -> dict[str, Any]:
        """The served loader's state after the last batch this client handed out; ``ValueError``
        (the served Loader's) where its pipeline cannot be resumed exactly."""
        return self._cursor.state_dict()

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Resume from ``state`` (or every rank's states: elastic) on the next iteration; the
        server checks it against its spec now (``ValueError`` when it does not fit)."""
        self._check_open()
        self._cursor.load(self._run(self._hello(state))["state"])

    def stats(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "rank": self.rank,
            "world_size": self.world_size,
            "batches": self._batches,
        }

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiterate()

    def close(self) -> None:
        """Stop any iteration in progress and the client's loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            streams = list(self._streams)
            thread = self._thread
        waits = []
        for stream in streams:
            loop = stream.loop
            if thread is not None and loop is thread.loop and thread.alive:
                waits.append(thread.submit(stream.aclose()))  # a sync iteration: end it here
            elif loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stream.abort)
        for wait in waits:
            with contextlib.suppress(Exception):
                wait.result(_CLOSE_TIMEOUT_S + 1)
        self._finalizer()

    def __repr__(self) -> str:
        return f"<aioloader.service.Client rank {self.rank}/{self.world_size} of {self.address}>"

    # -- iteration ---------------------------------------------------------------------------
    def _iterate(self) -> Iterator[Any]:
        self._check_open()
        handoff: queue.SimpleQueue[Item] = queue.SimpleQueue()
        stream = _Stream(self, handoff.put)
        state = self._cursor.begin()
        self._track(stream)
        try:
            self._run(stream.open(state))
            loop = stream.loop
            while True:
                kind, value, after = handoff.get()
                if kind == "batch" and self._closed:  # batches that arrived before close() stay
                    raise RuntimeError("the client is closed")
                if kind == "batch":
                    self._cursor.delivered(after)
                    loop.call_soon_threadsafe(stream.grant)  # type: ignore[union-attr]
                    yield value
                elif kind == "end":
                    self._cursor.finished(after)
                    return
                else:
                    raise value
        except ConnectionError:
            self._cursor.interrupted()
            raise
        finally:
            self._untrack(stream)
            thread = self._thread
            if thread is not None and thread.alive:
                with contextlib.suppress(Exception):
                    thread.submit(stream.aclose()).result(_CLOSE_TIMEOUT_S + 1)

    async def _aiterate(self) -> AsyncIterator[Any]:
        self._check_open()
        handoff: asyncio.Queue[Item] = asyncio.Queue()
        stream = _Stream(self, handoff.put_nowait)
        state = self._cursor.begin()
        self._track(stream)
        try:
            await stream.open(state)
            while True:
                kind, value, after = await handoff.get()
                if kind == "batch" and self._closed:  # batches that arrived before close() stay
                    raise RuntimeError("the client is closed")
                if kind == "batch":
                    self._cursor.delivered(after)
                    stream.grant()
                    yield value
                elif kind == "end":
                    self._cursor.finished(after)
                    return
                else:
                    raise value
        except ConnectionError:
            self._cursor.interrupted()
            raise
        finally:
            self._untrack(stream)
            await stream.aclose()

    # -- connections -------------------------------------------------------------------------
    def _rank_fields(self) -> dict[str, int]:
        return {"rank": self.rank, "world_size": self.world_size}

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
        """A connected, mutually authenticated connection and the server's heartbeat period."""
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, limit=protocol.READ_LIMIT, ssl=self._ssl
                )
        except BaseException as exc:
            self._raise_for(exc)
        try:
            async with asyncio.timeout(self._timeout):
                challenge = expect((await read_frame(reader, max_header=HANDSHAKE_MAX_BYTES))[0], "challenge")
                server_nonce = str(challenge.get("nonce"))
                client_nonce = protocol.nonce()
                proof = protocol.client_proof(self._token, server_nonce, client_nonce)
                write_frame(writer, {"t": "auth", "nonce": client_nonce, "proof": proof})
                await writer.drain()
                welcome = expect((await read_frame(reader, max_header=HANDSHAKE_MAX_BYTES))[0], "welcome")
            expected = protocol.server_proof(self._token, server_nonce, client_nonce)
            if not protocol.proof_matches(expected, welcome.get("proof")):
                raise AuthenticationError(f"the server at {self.address} does not hold the token")
        except BaseException as exc:
            writer.transport.abort()
            self._raise_for(exc)
        heartbeat = challenge.get("heartbeat")
        return reader, writer, float(heartbeat) if isinstance(heartbeat, (int, float)) else 5.0

    async def _hello(self, state: Any) -> dict[str, Any]:
        """The server's answer to ``hello``: this rank's length and (checked) starting state."""
        reader, writer, _ = await self._open()
        try:
            write_frame(writer, {"t": "hello", "state": state, **self._rank_fields()})
            async with asyncio.timeout(self._timeout):
                await writer.drain()
                header, _ = await read_frame(reader)
            info = expect(header, "info")
            if not isinstance(info.get("state"), dict):
                raise ProtocolError("the server's info has no state")
            return info
        except (ValueError, TypeError, AuthenticationError):
            raise
        except BaseException as exc:
            self._raise_for(exc)
        finally:
            writer.close()
            with contextlib.suppress(TimeoutError, OSError, ConnectionError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await writer.wait_closed()

    def _raise_for(self, exc: BaseException) -> NoReturn:
        """Raise what the user should see for ``exc`` (chained to it when it differs)."""
        error = self._connection_error(exc)
        if error is exc:
            raise exc
        raise error from exc

    def _connection_error(self, exc: BaseException) -> BaseException:
        """What the user sees for ``exc`` on the connection: a ``ConnectionError`` saying so."""
        if isinstance(exc, (AuthenticationError, asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
            return exc
        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, (ProtocolError, DecodeError)):
            return exc
        if isinstance(exc, ServerBusyError):
            return ServerBusyError(f"{exc} (server at {self.address})")
        if isinstance(exc, TimeoutError):
            return ConnectionError(
                f"the loader server at {self.address} did not answer within {self._timeout:.0f}s"
            )
        if isinstance(exc, FrameTooLarge) and exc.part == "body" and exc.limit == self._max_frame_bytes:
            return ConnectionError(
                f"the loader server at {self.address} sent a batch of {exc.size:,} bytes, over "
                f"max_frame_bytes={exc.limit:,}; connect with a larger max_frame_bytes (or smaller batches)"
            )
        if isinstance(exc, (ProtocolError, DecodeError)):
            return ConnectionError(f"the loader server at {self.address} sent a malformed frame: {exc}")
        if isinstance(exc, EOFError):
            return ConnectionError(f"the loader server at {self.address} closed the connection")
        if isinstance(exc, ConnectionError):
            return type(exc)(f"lost the connection to the loader server at {self.address}: {exc}")
        if isinstance(exc, OSError):
            return ConnectionError(f"cannot reach the loader server at {self.address}: {exc}")
        return exc

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the client's loop thread and wait for it (its own timeouts bound it)."""
        future = self._loop_thread().submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _loop_thread(self) -> LoopThread:
        with self._lock:
            self._check_open()
            if self._thread is None or not self._thread.alive:
                self._thread = LoopThread("asyncio")
                self._finalizer.detach()
                self._finalizer = weakref.finalize(self, _stop_thread, [self._thread])
            return self._thread

    def _track(self, stream: _Stream) -> None:
        with self._lock:
            self._check_open()
            self._streams.add(stream)

    def _untrack(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")


def _stop_thread(holder: list[LoopThread | None]) -> None:
    thread = holder[0]
    if thread is not None:
        thread.stop()


def connect(
    address: str | tuple[str, int],
    *,
    token: str | bytes,
    rank: int | None = None,
    world_size: int | None = None,
    credits: int = 4,
    timeout: float = 30.0,
    max_frame_bytes: int = protocol.MAX_BODY_BYTES,
    ssl: _ssl.SSLContext | None = None,
) -> Client:
    """Connect to a loader server (``al.serve`` / ``aioloader serve``) as ``rank`` of
    ``world_size`` (default: torch.distributed, else RANK/WORLD_SIZE, else 0/1).

    Checks the token and fetches this rank's length and starting state at once (this call
    blocks briefly). ``credits``: batches the server may send ahead of the training step.
    ``timeout``: seconds without any frame (or to connect) before ``ConnectionError``.
    ``max_frame_bytes``: the largest batch accepted. ``ssl``: a client ``SSLContext``."""
    return Client(
        address,
        token=token,
        rank=rank,
        world_size=world_size,
        credits=credits,
        timeout=timeout,
        max_frame_bytes=max_frame_bytes,
        ssl=ssl,
    )
