"""Wire protocol of the loader service: frames, their limits, and token authentication.

A frame is a 16-byte prefix, a JSON header, then a raw body::

    b"AL" | version (u8) | 0 (u8) | header length (u32, big endian) | body length (u64)
    header: a UTF-8 JSON object with a "t" (type) field
    body:   raw bytes (the tensor data of a batch; empty for every other frame)

Nothing read from the network is unpickled: headers are JSON, and bodies are bytes that
:mod:`aioloader.service.codec` turns into arrays after checking dtypes, shapes and spans. Both
lengths are checked against the reader's limits before anything else is read, so an oversized
or garbage frame costs 16 bytes of reading, never an allocation of the size it claims.

Authentication comes first on every connection. The server sends ``challenge`` with a random
nonce; the client answers ``auth`` with ``HMAC-SHA256(token, "client" | server nonce | client
nonce)`` and its own nonce; the server checks it with ``hmac.compare_digest`` and answers
``welcome`` with ``HMAC-SHA256(token, "server" | client nonce | server nonce)``, which the client
checks in turn. Neither side talks to a peer without the token, and the token never travels.

Resume states travel in ``info``, ``start``, ``batch`` and ``end`` headers. Where the served
pipeline cannot be resumed exactly, a state is a mark, ``{"epoch": e, "unresumable": why}``
(:mod:`aioloader.service.cursor`). Marks are still version 1: they appear only for pipelines
that earlier servers refused to serve, and an earlier client takes them as opaque states (it
runs the epochs; only its ``state_dict()`` returns the mark instead of raising).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aioloader.errors import DataLoadingError

VERSION = 1
MAGIC = b"AL"
PREFIX = struct.Struct("!2sBBIQ")
MAX_HEADER_BYTES = 16 * 2**20  # a header holds a resume state: keys and counters, never payloads
MAX_BODY_BYTES = 2**30  # one batch's tensor bytes (a client's default; see connect(max_frame_bytes))
MIN_TOKEN_BYTES = 16
NONCE_BYTES = 32
READ_LIMIT = 8 * 2**20  # StreamReader buffer: big frames arrive without pausing every 128 KiB


class ProtocolError(Exception):
    """A peer sent something that is not a valid frame of this protocol (or not in order)."""


class FrameTooLarge(ProtocolError):
    """A frame's header or body is over the reader's limit (``part``: "header" or "body")."""

    def __init__(self, part: str, size: int, limit: int) -> None:
        super().__init__(f"frame {part} of {size:,} bytes is over the limit of {limit:,}")
        self.part, self.size, self.limit = part, size, limit


class AuthenticationError(PermissionError):
    """The peer does not hold the same token (or refused ours)."""


class ServerBusyError(ConnectionError):
    """The server is full: it refused this connection for now (try again later)."""


class RemoteError(DataLoadingError):
    """The server's pipeline raised; ``remote_type`` names the exception type over there."""

    def __init__(self, message: str, *, remote_type: str, stage: str | None = None, key: Any = None):
        super().__init__(message, stage=stage, key=key)
        self.remote_type = remote_type


# -- frames --------------------------------------------------------------------------------------
def frame_prefix(header: dict[str, Any], body_bytes: int = 0) -> bytes:
    """The prefix and JSON header of a frame whose body (``body_bytes`` long) follows."""
    data = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, VERSION, 0, len(data), body_bytes) + data


def write_frame(
    writer: asyncio.StreamWriter, header: dict[str, Any], buffers: Iterable[Any] = (), body_bytes: int = 0
) -> None:
    """Queue a frame on ``writer`` (the caller drains): header, then ``buffers`` in order, whose
    lengths must add up to ``body_bytes``. No await between the writes, so frames written by
    several tasks of one connection never interleave."""
    writer.write(frame_prefix(header, body_bytes))
    for buffer in buffers:
        writer.write(buffer)


async def read_frame(
    reader: asyncio.StreamReader, *, max_header: int = MAX_HEADER_BYTES, max_body: int = 0
) -> tuple[dict[str, Any], bytes]:
    """The next frame's header and body. ``EOFError`` (``asyncio.IncompleteReadError``) when the
    peer closed; :class:`ProtocolError` for anything malformed or over the limits."""
    magic, version, _, header_len, body_len = PREFIX.unpack(await reader.readexactly(PREFIX.size))
    if magic != MAGIC:
        raise ProtocolError(f"not an aioloader frame (starts with {magic!r})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {VERSION}")
    if header_len > max_header:
        raise FrameTooLarge("header", header_len, max_header)
    if body_len > max_body:
        raise FrameTooLarge("body", body_len, max_body)
    raw = await reader.readexactly(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("frame header must be a JSON object with a string 't'")
    body = await reader.readexactly(body_len) if body_len else b""
    return header, body


def expect(header: dict[str, Any], kind: str) -> dict[str, Any]:
    """``header`` when it is a ``kind`` frame; a peer's ``error`` frame raised as its error."""
    if header["t"] == "error":
        raise error_from(header)
    if header["t"] != kind:
        raise ProtocolError(f"expected a {kind!r} frame, got {header['t']!r}")
    return header


def error_header(kind: str, exc: BaseException | str) -> dict[str, Any]:
    """An ``error`` frame: ``kind`` is "auth", "busy" (the server is full), "request" (a bad
    argument or state), "pipeline" (the loader raised) or "protocol"; the exception travels as its type name and text."""
    if isinstance(exc, BaseException):
        text = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
        header = {"t": "error", "kind": kind, "type": type(exc).__name__, "message": text}
        return {**header, **_where(exc)}
    return {"t": "error", "kind": kind, "type": "", "message": exc}


def _where(exc: BaseException) -> dict[str, Any]:
    """The stage and sample key :func:`~aioloader.errors.annotate` named on ``exc``, those of
    them that JSON can carry (a key is an int, a str or a tuple of them: a list on arrival)."""
    where = {}
    for name in ("stage", "key"):
        value = getattr(exc, name, None)
        if value is None:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        where[name] = value
    return where


def _key_from_json(key: Any) -> Any:
    """A sample key as it was sent: JSON turned its tuples into lists."""
    return tuple(_key_from_json(k) for k in key) if isinstance(key, list) else key


def error_from(header: dict[str, Any]) -> Exception:
    """The exception a client raises for an ``error`` frame (built, never unpickled)."""
    kind, message = header.get("kind"), str(header.get("message", ""))
    remote_type = str(header.get("type", ""))
    if kind == "auth":
        return AuthenticationError(f"the loader server refused the connection: {message}")
    if kind == "busy":
        return ServerBusyError(f"the loader server is full: {message}")
    if kind == "request":
        if remote_type == "TypeError":
            return TypeError(message)
        return ValueError(message)
    if kind == "pipeline":
        stage = header.get("stage")
        return RemoteError(
            f"{remote_type}: {message}" if remote_type else message,
            remote_type=remote_type,
            stage=stage if isinstance(stage, str) else None,
            key=_key_from_json(header.get("key")),
        )
    return ConnectionError(f"the loader server closed the connection: {message}")


# -- authentication ------------------------------------------------------------------------------
def check_token(token: Any, argument: str = "token") -> bytes:
    """A shared secret as bytes: a str or bytes of at least :data:`MIN_TOKEN_BYTES`."""
    if isinstance(token, str):
        token = token.encode()
    if not isinstance(token, (bytes, bytearray)):
        raise TypeError(f"{argument} must be a str or bytes secret, got {type(token).__name__}")
    token = bytes(token).strip()
    if len(token) < MIN_TOKEN_BYTES:
        raise ValueError(
            f"{argument} must be at least {MIN_TOKEN_BYTES} bytes (e.g. secrets.token_hex(16)), "
            f"got {len(token)}"
        )
    return token


def read_token_file(path: str | os.PathLike[str]) -> bytes:
    """The token stored in ``path`` (surrounding whitespace ignored)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"token_file {str(path)!r} does not exist or is not a file")
    return check_token(file.read_bytes(), "the token file's content")


def nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def client_proof(token: bytes, server_nonce: str, client_nonce: str) -> str:
    return _mac(token, "client", server_nonce, client_nonce)


def server_proof(token: bytes, server_nonce: str, client_nonce: str) -> str:
    return _mac(token, "server", client_nonce, server_nonce)


def proof_matches(expected: str, received: Any) -> bool:
    """Constant-time comparison of a proof with what the peer sent (any JSON value)."""
    if not isinstance(received, str):
        return False
    return hmac.compare_digest(expected.encode(), received.encode("utf-8", "replace"))


def _mac(token: bytes, role: str, first: str, second: str) -> str:
    message = f"aioloader/{VERSION}|{role}|{first}|{second}".encode()
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def valid_nonce(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 2 * NONCE_BYTES
        and all(c in "0123456789abcdef" for c in value)
    )
