"""The loader service against strangers who connect and never authenticate (issue 21, item 7):
they have their own small budget and a short deadline, a client that holds the token is never
refused because of them, and a server full of authenticated clients says so in the error."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import time

import pytest
import torch

import aioloader as al
from aioloader.service import ServerBusyError

TOKEN = secrets.token_hex(16)
N = 23


def sample(i: int) -> dict:
    return {"x": torch.full((2,), float(i)), "key": i}


def spec() -> al.Loader:
    return al.Loader.from_source(list(range(N)), shuffle=True, seed=5).map(sample).batch(4)


def keys(batches) -> list[int]:
    return [k for b in batches for k in b["key"].tolist()]


def _expected() -> list[int]:
    with spec() as reference:
        return keys(reference)


def _silent(address, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte (they do not read the challenge either)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        socks.append(sock)
    return socks


def _wait_closed_by_server(sock: socket.socket, limit_s: float) -> None:
    """Until the server closes ``sock`` (its challenge and any error frame read)."""
    sock.settimeout(limit_s)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(1 << 16):
            pass


def test_260_silent_connections_do_not_lock_out_a_client_with_the_token(caplog):
    """Before: the 256-connection limit was full of strangers and the client got "the loader
    server closed the connection" for as long as they stayed."""
    expected = _expected()
    loader = spec()
    socks: list[socket.socket] = []
    with (
        caplog.at_level(logging.WARNING, "aioloader.service"),
        loader,
        al.serve(loader, token=TOKEN, auth_timeout=30.0, handshake_timeout=30.0) as server,
    ):
        try:
            socks = _silent(server.address, 260)
            with al.connect(server.address, token=TOKEN, timeout=10) as client:
                got = keys(client)
            stats = server.stats()
        finally:
            for sock in socks:
                sock.close()
    assert got == expected  # the exact epoch, every key once
    # served while every stranger was still in time (none reached its 30 s deadline): the client
    # did not wait for one to go (counted, not timed: a full accept queue costs 1 s SYN retries)
    assert stats["dropped"] == 0
    assert stats["unauthenticated"] <= 32
    assert stats["evicted"] >= 260 - 32
    assert stats["full"] == 0
    assert "dropped the oldest unauthenticated connection" in caplog.text


def test_an_unauthenticated_connection_is_closed_after_auth_timeout(caplog):
    loader = spec()
    with (
        caplog.at_level(logging.WARNING, "aioloader.service"),
        loader,
        al.serve(loader, token=TOKEN, auth_timeout=0.3) as server,
    ):
        connecting = time.monotonic()  # the server's timer starts after this: took >= 0.3 s
        (sock,) = _silent(server.address, 1)
        with sock:
            _wait_closed_by_server(sock, 10.0)
        took = time.monotonic() - connecting
        assert server.stats()["dropped"] == 1
    assert 0.25 <= took < 2.0
    assert "auth_timeout=0.3s" in caplog.text


def test_a_full_server_says_so_and_serves_once_a_slot_is_free():
    expected = _expected()
    loader = spec()
    with loader, al.serve(loader, token=TOKEN, max_connections=1) as server:
        with al.connect(server.address, token=TOKEN, timeout=10) as first:
            batches = iter(first)
            head = next(batches)  # the first client's stream holds the one slot
            with pytest.raises(ServerBusyError, match=r"full: 1 connections are open \(max_connections\)"):
                al.connect(server.address, token=TOKEN, timeout=10)
            rest = list(batches)
        assert keys([head, *rest]) == expected
        assert server.stats()["full"] == 1
        with al.connect(server.address, token=TOKEN, timeout=10) as second:
            assert keys(second) == expected


def test_budget_arguments_are_checked():
    with spec() as loader:
        with pytest.raises(ValueError, match="max_unauthenticated must be an int >= 1"):
            al.serve(loader, token=TOKEN, max_unauthenticated=0)
        with pytest.raises(ValueError, match="auth_timeout must be a number of seconds > 0"):
            al.serve(loader, token=TOKEN, auth_timeout=0)
