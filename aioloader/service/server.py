"""The loader server: streams a Loader spec's batches to trainers over TCP, one rank per connection.

``serve(loader, port=..., token=...)`` starts a :class:`Server` on its own event-loop thread and
returns once it listens. Each connection is one task the server owns:

1. authentication (:mod:`~aioloader.service.protocol`), within ``auth_timeout``; frames
   before it may hold at most 64 KiB. Connections not yet authenticated have their own budget
   (``max_unauthenticated``): past it the oldest of them is dropped for the newcomer, so
   strangers who connect and stay silent can never keep a client that holds the token out.
   ``max_connections`` counts authenticated connections only; past it a client is told the
   server is full (an ``error`` frame of kind "busy");
2. one request: ``hello {rank, world_size, state?}`` is answered with ``info {len, state}`` (the
   client's length and starting state; a given state is checked by a twin loader), ``start
   {rank, world_size, state, credits}`` runs one epoch for that rank from ``state``;
   where the pipeline cannot be resumed exactly, a state is a mark ``{epoch, unresumable}``
   (:mod:`~aioloader.service.cursor`): a ``start`` from a mark runs that epoch from its start;
3. while streaming, the server sends ``batch`` frames (the batch's tree, the rank loader's
   state after it, raw tensor bytes), ``ping`` after ``heartbeat`` seconds of silence, then
   ``end {state}`` or ``error``; the client sends ``credit {n}`` frames.

Flow control: the server pulls the next batch from the rank's loader only when it holds a
credit, so a slow trainer throttles its pipeline and at most one batch per connection waits in
the server's write buffer. A client that stops reading (its batches stay unsent for
``send_timeout``), sends a malformed frame or fails authentication is disconnected with a logged
reason (logger ``aioloader.service``); the other connections go on.

Ranks: the server keeps one Loader per (rank, world_size), built from the spec with those
values, so each rank gets its disjoint share of every epoch and process pools live across
epochs. A new connection for a rank that is already streaming replaces the old one (a trainer
that reconnects after a network failure must not wait for the dead connection to time out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aioloader.service.protocol as protocol
from aioloader._run.bridge import LoopThread
from aioloader.loader import Loader
from aioloader.service.codec import encode
from aioloader.service.protocol import ProtocolError, error_header, expect, read_frame, write_frame
from aioloader.service.specs import (
    check_host_only,
    fresh_state,
    length_or_none,
    rank_loader,
    start_run,
    state_or_mark,
    validated_state,
)

log = logging.getLogger("aioloader.service")

HANDSHAKE_MAX_BYTES = 64 * 1024
MAX_UNAUTHENTICATED = 32  # connections not yet authenticated, at once (the oldest is dropped)
AUTH_TIMEOUT_S = 3.0  # a TLS handshake and one round trip; strangers hold a slot no longer
MAX_CREDITS = 1024  # credits a client may hold at once
LINGER_S = 5.0  # after ``end``, how long the client gets to close its side first
_START_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Session:
    """One streaming connection (a rank's epoch), as :meth:`Server.stats` reports it."""

    peer: str
    rank: int
    world_size: int
    epoch: int
    credits: int = 0
    granted: int = 0
    sent: int = 0
    bytes_sent: int = 0
    started: float = field(default_factory=time.monotonic)
    last_write: float = field(default_factory=time.monotonic)
    writer: asyncio.StreamWriter | None = None
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, n: int) -> None:
        self.credits += n
        self.granted += n
        self._event.set()

    async def take(self) -> None:
        while self.credits == 0:
            self._event.clear()
            await self._event.wait()
        self.credits -= 1

    def describe(self) -> dict[str, Any]:
        transport = self.writer.transport if self.writer is not None else None
        unsent = (
            transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0
        )
        return {
            "peer": self.peer,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "credits": self.credits,
            "granted": self.granted,
            "sent": self.sent,
            "bytes_sent": self.bytes_sent,
            "unsent_bytes": unsent,
            "seconds": time.monotonic() - self.started,
        }


class _Stalled(Exception):
    """The client stopped reading."""


class Server:
    """A running loader server. Close it with :meth:`close` (or use it as a context manager)."""

    def __init__(
        self,
        loader: Loader,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | bytes,
        send_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        heartbeat: float = 5.0,
        ssl: _ssl.SSLContext | None = None,
        max_connections: int = 256,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        auth_timeout: float = AUTH_TIMEOUT_S,
    ) -> None:
        if not isinstance(loader, Loader):
            raise TypeError(f"loader must be an aioloader.Loader, got {type(loader).__name__}")
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
        for name, value in (
            ("send_timeout", send_timeout),
            ("handshake_timeout", handshake_timeout),
            ("heartbeat", heartbeat),
            ("auth_timeout", auth_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        if (
            isinstance(max_unauthenticated, bool)
            or not isinstance(max_unauthenticated, int)
            or max_unauthenticated < 1
        ):
            raise ValueError(f"max_unauthenticated must be an int >= 1, got {max_unauthenticated!r}")
        check_host_only(loader, "serve()")
        self._max_connections = max_connections
        self._max_unauthenticated = max_unauthenticated
        self._auth_timeout = float(auth_timeout)
        self._spec = loader
        self._token = protocol.check_token(token)
        self._send_timeout = float(send_timeout)
        self._handshake_timeout = float(handshake_timeout)
        self._heartbeat = float(heartbeat)
        self._loaders: dict[tuple[int, int], Loader] = {}
        self._locks: dict[tuple[int, int], asyncio.Lock] = {}
        self._streaming: dict[tuple[int, int], asyncio.Task[Any]] = {}
        self._sessions: set[_Session] = set()
        self._connections: set[asyncio.Task[Any]] = set()  # authenticated
        # not yet authenticated, oldest first, with their writers (to say why one is dropped)
        self._strangers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._evicted: set[asyncio.Task[Any]] = set()
        self._counters = {"connections": 0, "rejected": 0, "dropped": 0, "evicted": 0, "full": 0}
        self._closed = False
        self._server: asyncio.Server | None = None
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "serving on %s: any host that can reach port %d and holds the token can read the data%s",
                host,
                port,
                "" if ssl is not None else " (unencrypted: use ssl= or a tunnel on untrusted networks)",
            )
        self._thread = LoopThread(loader.spec.options.event_loop)
        try:
            self.address: tuple[str, int] = self._thread.submit(self._start(host, port, ssl)).result(
                _START_TIMEOUT_S
            )
        except BaseException:
            self._thread.stop()
            raise

    # -- public ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Connections, refusals and, per streaming connection: rank, credits held, batches
        granted and sent, and the bytes still in its write buffer (``unsent_bytes``)."""
        if self._closed:
            return {"address": self.address, "sessions": [], **self._counters}

        async def collect() -> dict[str, Any]:
            sessions = sorted((s.describe() for s in self._sessions), key=lambda s: (s["rank"], s["peer"]))
            return {
                "address": self.address,
                "sessions": sessions,
                "authenticated": len(self._connections),
                "unauthenticated": len(self._strangers),
                **self._counters,
            }

        return self._thread.submit(collect()).result(_START_TIMEOUT_S)

    def close(self) -> None:
        """Stop listening, drop every connection, stop the loop thread, close the rank loaders.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread.alive:
                self._thread.submit(self._shutdown()).result(_CLOSE_TIMEOUT_S)
        except Exception as exc:  # pragma: no cover - a stuck shutdown must not hang close()
            log.warning("loader server shutdown: %r", exc)
        finally:
            self._thread.stop()
            loaders = list(self._loaders.values())
            self._loaders.clear()
            for loader in loaders:
                loader.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<aioloader.service.Server {state} on {self.address[0]}:{self.address[1]}>"

    # -- loop thread -------------------------------------------------------------------------
    async def _start(self, host: str, port: int, ssl: _ssl.SSLContext | None) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._on_connect, host, port, limit=protocol.READ_LIMIT, ssl=ssl, reuse_address=True
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel("the loader server is closing")
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: Any = asyncio.current_task()
        peer = _peer_name(writer)
        if self._closed:
            writer.transport.abort()
            return
        if len(self._strangers) >= self._max_unauthenticated:
            self._evict_oldest_stranger(peer)
        self._strangers[task] = writer
        self._counters["connections"] += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        clean = False
        try:
            clean = await self._serve_connection(reader, writer, peer)
        except asyncio.CancelledError as exc:
            reason = exc.args[0] if exc.args else "cancelled"
            log.info("closing connection from %s: %s", peer, reason)
            clean = task in self._evicted  # its "busy" frame may flush
        except Exception:  # a bug must not take the server down
            log.exception("closing connection from %s: internal error", peer)
        finally:
            self._strangers.pop(task, None)
            self._evicted.discard(task)
            self._connections.discard(task)
            await _close_writer(writer, abort=not clean)

    def _evict_oldest_stranger(self, newcomer: str) -> None:
        """Make room for ``newcomer`` among the unauthenticated connections: drop the oldest.
        Refusing the newcomer instead would let strangers who stay silent keep every client
        out; this way a client that answers the challenge within a round trip gets in."""
        oldest = next(iter(self._strangers))
        writer = self._strangers.pop(oldest)
        self._evicted.add(oldest)
        self._counters["evicted"] += 1
        log.warning(
            "dropped the oldest unauthenticated connection (from %s) for one from %s: "
            "%d unauthenticated connections open (max_unauthenticated)",
            _peer_name(writer),
            newcomer,
            self._max_unauthenticated,
        )
        with contextlib.suppress(Exception):
            write_frame(
                writer,
                error_header(
                    "busy",
                    f"too many unauthenticated connections ({self._max_unauthenticated}); try again",
                ),
            )
        oldest.cancel("too many unauthenticated connections")

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> bool:
        """Serve one connection; True when it ended cleanly (the writer may flush and close)."""
        try:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(min(self._auth_timeout, self._handshake_timeout)) as handshake:
                if not await self._authenticate(reader, writer, peer):
                    return True  # refused (wrong token, or full): the error frame may flush
                handshake.reschedule(loop.time() + self._handshake_timeout)
                request, _ = await read_frame(reader)
            kind = request["t"]
            if kind == "hello":
                await self._hello(request, writer, peer)
                return True
            if kind == "start":
                return await self._start_stream(request, reader, writer, peer)
            raise ProtocolError(f"expected a 'hello' or 'start' request, got {kind!r}")
        except ProtocolError as exc:
            self._counters["dropped"] += 1
            log.warning("closing connection from %s: malformed frame: %s", peer, exc)
            with contextlib.suppress(Exception):
                write_frame(writer, error_header("protocol", str(exc)))
            return False
        except TimeoutError:
            self._counters["dropped"] += 1
            log.warning(
                "closing connection from %s: no authenticated request in time "
                "(auth_timeout=%.1fs, handshake_timeout=%.1fs)",
                peer,
                self._auth_timeout,
                self._handshake_timeout,
            )
            return False
        except _Stalled as exc:
            self._counters["dropped"] += 1
            log.warning("closing connection from %s: %s", peer, exc)
            return False
        except (EOFError, ConnectionError, OSError) as exc:
            log.info("connection from %s closed by the client (%s)", peer, type(exc).__name__)
            return False

    def _admit(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Move an authenticated connection out of the strangers' budget, or tell the client
        the server is full (``max_connections`` authenticated connections open)."""
        task: Any = asyncio.current_task()
        self._strangers.pop(task, None)
        if len(self._connections) >= self._max_connections:
            self._counters["full"] += 1
            log.warning(
                "refused connection from %s: %d authenticated connections open already (max_connections)",
                peer,
                self._max_connections,
            )
            write_frame(
                writer,
                error_header(
                    "busy", f"{self._max_connections} connections are open (max_connections); try again later"
                ),
            )
            return False
        self._connections.add(task)
        return True

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> bool:
        server_nonce = protocol.nonce()
        write_frame(writer, {"t": "challenge", "nonce": server_nonce, "heartbeat": self._heartbeat})
        await writer.drain()
        header, _ = await read_frame(reader, max_header=HANDSHAKE_MAX_BYTES)
        expect(header, "auth")
        client_nonce = header.get("nonce")
        expected = protocol.client_proof(self._token, server_nonce, str(client_nonce))
        if not protocol.valid_nonce(client_nonce) or not protocol.proof_matches(
            expected, header.get("proof")
        ):
            self._counters["rejected"] += 1
            log.warning("refused connection from %s: authentication failed (wrong token)", peer)
            write_frame(writer, error_header("auth", "authentication failed"))
            return False
        if not self._admit(writer, peer):
            return False
        proof = protocol.server_proof(self._token, server_nonce, client_nonce)
        write_frame(writer, {"t": "welcome", "proof": proof})
        await writer.drain()
        return True

    def _rank_loader(self, request: dict[str, Any]) -> tuple[tuple[int, int], Loader]:
        """The request's (rank, world_size) and that rank's loader (made on first use)."""
        rank, world_size = request.get("rank"), request.get("world_size")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rank, world_size)):
            raise ValueError(f"rank and world_size must be ints, got {rank!r} and {world_size!r}")
        key = (int(rank), int(world_size))  # type: ignore[arg-type]
        loader = self._loaders.get(key)
        if loader is None:
            loader = rank_loader(self._spec, *key)
            self._loaders[key] = loader
        return key, loader

    async def _hello(self, request: dict[str, Any], writer: asyncio.StreamWriter, peer: str) -> None:
        try:
            _, loader = self._rank_loader(request)
            state = request.get("state")
            state = validated_state(loader, state) if state is not None else fresh_state(loader)
            write_frame(writer, {"t": "info", "len": length_or_none(loader), "state": state})
        except (ValueError, TypeError) as exc:
            log.info("refused a request from %s: %s", peer, exc)
            write_frame(writer, error_header("request", exc))
        await self._drain(writer)

    async def _start_stream(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> bool:
        credits, state = request.get("credits"), request.get("state")
        try:
            if isinstance(credits, bool) or not isinstance(credits, int) or not 1 <= credits <= MAX_CREDITS:
                raise ValueError(f"credits must be an int in [1, {MAX_CREDITS}], got {credits!r}")
            if not isinstance(state, dict):
                raise ValueError("start needs the state to run from")
            key, loader = self._rank_loader(request)
        except (ValueError, TypeError) as exc:
            log.info("refused a request from %s: %s", peer, exc)
            write_frame(writer, error_header("request", exc))
            await self._drain(writer)
            return True
        me: Any = asyncio.current_task()
        previous = self._streaming.get(key)
        self._streaming[key] = me
        if previous is not None and not previous.done():
            previous.cancel(f"rank {key[0]}/{key[1]} reconnected from {peer}")
        try:
            async with self._locks.setdefault(key, asyncio.Lock()):
                return await self._stream(loader, state, credits, key, reader, writer, peer)
        finally:
            if self._streaming.get(key) is me:
                del self._streaming[key]

    async def _stream(
        self,
        loader: Loader,
        state: dict[str, Any],
        credits: int,
        key: tuple[int, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> bool:
        try:
            start_run(loader, state)
        except Exception as exc:  # a state from the network: malformed is a refused request
            log.info("refused a request from %s: %s: %s", peer, type(exc).__name__, exc)
            write_frame(
                writer, error_header("request", exc if isinstance(exc, ValueError) else f"bad state: {exc!r}")
            )
            await self._drain(writer)
            return True
        session = _Session(peer, key[0], key[1], int(state["epoch"]), writer=writer)
        session.add(credits)
        self._sessions.add(session)
        write_frame(writer, {"t": "started", "epoch": session.epoch})
        tasks = [
            asyncio.create_task(self._send_epoch(loader, session, writer), name="aioloader-serve:send"),
            asyncio.create_task(self._read_credits(reader, session), name="aioloader-serve:read"),
        ]
        heartbeat = asyncio.create_task(self._beat(session, writer), name="aioloader-serve:heartbeat")
        send, read = tasks
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if send in done:
                clean = send.result()
                await asyncio.wait([read], timeout=LINGER_S)  # let the client close first
                if read.done():
                    read.result()
                return clean
            read.result()  # the client closed (or broke off) mid-epoch: stop sending
            log.info("rank %d/%d at %s stopped after %d batches", key[0], key[1], peer, session.sent)
            return False
        finally:
            self._sessions.discard(session)
            await _cancel_and_wait([*tasks, heartbeat])

    async def _send_epoch(self, loader: Loader, session: _Session, writer: asyncio.StreamWriter) -> bool:
        batches = loader.__aiter__()
        seq = 0
        try:
            while True:
                await session.take()
                try:
                    value = await anext(batches)
                except StopAsyncIteration:
                    end_state = state_or_mark(loader, session.epoch + 1)
                    write_frame(writer, {"t": "end", "state": end_state, "batches": seq})
                    await self._drain(writer)
                    return True
                except Exception as exc:
                    log.warning("rank %d/%d: the pipeline raised %s: %s", session.rank, session.world_size,
                                type(exc).__name__, exc)  # fmt: skip
                    write_frame(writer, error_header("pipeline", exc))
                    await self._drain(writer)
                    return True
                state = state_or_mark(loader, session.epoch)
                try:
                    tree, buffers, nbytes = encode(value)
                except TypeError as exc:
                    write_frame(writer, error_header("pipeline", exc))
                    await self._drain(writer)
                    return True
                header = {"t": "batch", "seq": seq, "state": state, "data": tree}
                write_frame(writer, header, buffers, nbytes)
                del value, buffers
                session.sent += 1
                session.bytes_sent += nbytes
                session.last_write = time.monotonic()
                seq += 1
                await self._drain(writer)
        finally:
            await batches.aclose()

    async def _read_credits(self, reader: asyncio.StreamReader, session: _Session) -> None:
        """Credits from the client until it closes; ProtocolError for anything else."""
        while True:
            try:
                header, _ = await read_frame(reader, max_header=HANDSHAKE_MAX_BYTES)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise ProtocolError("the client closed the connection mid-frame") from None
                return
            except ConnectionError:
                return
            kind = header["t"]
            if kind == "bye":
                return
            if kind != "credit":
                raise ProtocolError(f"unexpected {kind!r} frame while streaming")
            n = header.get("n")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1 or session.credits + n > MAX_CREDITS:
                raise ProtocolError(f"invalid credit {n!r} (at most {MAX_CREDITS} held)")
            session.add(n)

    async def _beat(self, session: _Session, writer: asyncio.StreamWriter) -> None:
        """A ``ping`` after each ``heartbeat`` seconds without a frame, so a client tells a
        slow pipeline from a dead server without waiting for TCP to notice."""
        while True:
            await asyncio.sleep(self._heartbeat)
            if time.monotonic() - session.last_write >= self._heartbeat and not writer.is_closing():
                write_frame(writer, {"t": "ping"})
                session.last_write = time.monotonic()

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._send_timeout):
                await writer.drain()
        except TimeoutError:
            unsent = writer.transport.get_write_buffer_size()
            raise _Stalled(
                f"the client stopped reading ({unsent:,} bytes unsent for {self._send_timeout:.1f}s)"
            ) from None


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, even if the caller is cancelled meanwhile
    (then re-raised after): the rank's lock must not pass on while its run is still closing."""
    for task in tasks:
        task.cancel()
    cancelled = False
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            cancelled = True
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: reported by the caller's result() or not at all
    if cancelled:
        raise asyncio.CancelledError


async def _close_writer(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    """Close a connection: flush and close when clean, else abort (a stalled peer never reads)."""
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, OSError, ConnectionError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def serve(
    loader: Loader,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | bytes,
    send_timeout: float = 30.0,
    handshake_timeout: float = 10.0,
    heartbeat: float = 5.0,
    ssl: _ssl.SSLContext | None = None,
    max_connections: int = 256,
    max_unauthenticated: int = MAX_UNAUTHENTICATED,
    auth_timeout: float = AUTH_TIMEOUT_S,
) -> Server:
    """Serve ``loader``'s batches to trainers (``al.connect``) and return the running server.

    Binds ``host`` (loopback unless told otherwise) on ``port`` (0: any free port; see
    ``server.address``). ``token``: the shared secret clients must prove they hold (at least
    16 bytes). ``send_timeout``: a client whose batches stay unsent that long is dropped.
    ``heartbeat``: seconds of silence after which the server pings a client. ``ssl``: a server
    ``SSLContext`` to encrypt the stream. ``max_connections``: authenticated connections at
    once; past it a client's error says the server is full. ``max_unauthenticated``:
    connections still authenticating at once; past it the oldest is dropped, so strangers
    cannot lock clients out. ``auth_timeout``: seconds a connection gets to authenticate;
    ``handshake_timeout``: to authenticate and send its request."""
    return Server(
        loader,
        host=host,
        port=port,
        token=token,
        send_timeout=send_timeout,
        handshake_timeout=handshake_timeout,
        heartbeat=heartbeat,
        ssl=ssl,
        max_connections=max_connections,
        max_unauthenticated=max_unauthenticated,
        auth_timeout=auth_timeout,
    )
