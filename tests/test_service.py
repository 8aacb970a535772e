"""The loader service over real sockets on loopback: exact epochs for one and several ranks,
resume, async iteration, flow control and the server's answers to bad peers."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading

import numpy as np
import pytest
import torch

import aioloader as al
from aioloader.service import AuthenticationError, RemoteError, protocol

TOKEN = secrets.token_hex(16)
N = 103


def sample(i: int) -> dict:
    return {"x": torch.full((4,), float(i)), "key": i, "name": f"s{i}"}


def spec(n: int = N, **source) -> al.Loader:
    source.setdefault("shuffle", True)
    return al.Loader.from_source(list(range(n)), seed=3, **source).map(sample).batch(5)


def keys(batches) -> list[list[int]]:
    return [b["key"].tolist() for b in batches]


@pytest.fixture
def server():
    loader = spec()
    with al.serve(loader, token=TOKEN) as srv:
        yield srv
    loader.close()


def test_one_client_two_epochs_equal_in_process(server):
    reference = spec(rank=0, world_size=1)
    with reference, al.connect(server.address, token=TOKEN, rank=0, world_size=1) as client:
        assert len(client) == len(reference) == 21
        for _ in range(2):
            got = list(client)
            expected = list(reference)
            assert keys(got) == keys(expected)
            assert [b["name"] for b in got] == [b["name"] for b in expected]
            assert torch.equal(got[0]["x"], expected[0]["x"])
        assert client.state_dict() == reference.state_dict()


async def test_async_iteration(server):
    reference = spec(rank=0, world_size=1)
    with reference, al.connect(server.address, token=TOKEN, rank=0, world_size=1) as client:
        got = [b async for b in client]
        assert keys(got) == keys(reference)


@pytest.mark.parametrize("policy", ["drop", "uneven"])
def test_three_clients_share_an_epoch_exactly_once(policy):
    loader = spec(shard_policy=policy)
    results: dict[int, list[list[int]]] = {}
    errors: list[BaseException] = []

    def trainer(rank: int, address) -> None:
        try:
            with al.connect(address, token=TOKEN, rank=rank, world_size=3) as client:
                results[rank] = keys(client)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with loader, al.serve(loader, token=TOKEN) as srv:
        threads = [threading.Thread(target=trainer, args=(r, srv.address)) for r in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors, errors
    flat = [k for r in range(3) for batch in results[r] for k in batch]
    assert len(flat) == len(set(flat)), "a key was delivered twice"
    if policy == "uneven":
        assert sorted(flat) == list(range(N))
    else:
        assert len({len(results[r]) for r in range(3)}) == 1, "ranks got different step counts"
        assert N - len(flat) <= 2
    for r in range(3):  # each rank's share is the in-process rank loader's
        with spec(shard_policy=policy, rank=r, world_size=3) as ref:
            assert results[r] == keys(ref)


def test_resume_after_break_exactly(server):
    reference = keys(spec(rank=0, world_size=1))
    with al.connect(server.address, token=TOKEN) as client:
        head = []
        for batch in client:
            head.append(batch["key"].tolist())
            if len(head) == 7:
                break
        state = client.state_dict()
    assert state["position"] == 35
    with al.connect(server.address, token=TOKEN) as fresh:
        fresh.load_state_dict(state)
        tail = keys(fresh)
        assert head + tail == reference
        assert fresh.state_dict()["epoch"] == 1


def test_state_of_another_spec_is_refused(server):
    with spec(n=50) as other:
        for _ in other:
            break
        state = other.state_dict()
    with (
        al.connect(server.address, token=TOKEN) as client,
        pytest.raises(ValueError, match="different loader"),
    ):
        client.load_state_dict(state)


def test_wrong_token_is_refused_and_others_are_served(server, caplog):
    with caplog.at_level(logging.WARNING, "aioloader.service"), pytest.raises(AuthenticationError):
        al.connect(server.address, token="x" * 32)
    assert "authentication failed" in caplog.text
    assert server.stats()["rejected"] == 1
    with al.connect(server.address, token=TOKEN) as client:
        assert len(keys(client)) == 21


def test_client_refuses_a_server_without_the_token(server):
    # A server with another token: the client's proof fails there, never accepted.
    with spec() as loader, al.serve(loader, token="y" * 32) as other, pytest.raises(AuthenticationError):
        al.connect(other.address, token=TOKEN)


def _raw(address) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _recv_frame(sock: socket.socket) -> tuple[dict, bytes]:
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            assert chunk, "closed"
            out += chunk
        return out

    _, _, _, header_len, body_len = protocol.PREFIX.unpack(exactly(protocol.PREFIX.size))
    return json.loads(exactly(header_len)), exactly(body_len)


def _authenticate(sock: socket.socket) -> None:
    challenge, _ = _recv_frame(sock)
    client_nonce = protocol.nonce()
    proof = protocol.client_proof(TOKEN.encode(), challenge["nonce"], client_nonce)
    sock.sendall(protocol.frame_prefix({"t": "auth", "nonce": client_nonce, "proof": proof}))
    assert _recv_frame(sock)[0]["t"] == "welcome"


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3,
        protocol.PREFIX.pack(b"AL", 1, 0, 2**31, 0),  # a 2 GiB header before authentication
        protocol.PREFIX.pack(b"AL", 1, 0, 10, 0) + b"{not json}",
    ],
    ids=["garbage", "oversized", "not-json"],
)
def test_bad_bytes_close_that_connection_only(server, caplog, payload):
    with caplog.at_level(logging.WARNING, "aioloader.service"), _raw(server.address) as bad:
        bad.sendall(payload)
        _read_until_closed(bad)  # the server closes it (after its challenge)
    assert "malformed frame" in caplog.text
    with al.connect(server.address, token=TOKEN) as client:
        assert len(keys(client)) == 21


def test_oversized_and_unexpected_frames_after_authentication(server, caplog):
    with caplog.at_level(logging.WARNING, "aioloader.service"):
        with _raw(server.address) as bad:
            _authenticate(bad)
            bad.sendall(protocol.PREFIX.pack(b"AL", 1, 0, 2**31, 0))
            _read_until_closed(bad)
        with _raw(server.address) as bad:
            _authenticate(bad)
            request = {"t": "start", "rank": 0, "world_size": 1, "credits": 1, "state": None}
            bad.sendall(protocol.frame_prefix(request))
            assert _recv_frame(bad)[0]["kind"] == "request"
        with _raw(server.address) as bad:
            _authenticate(bad)
            bad.sendall(protocol.frame_prefix({"t": "credit", "n": 1}))
            _read_until_closed(bad)
    assert "over the limit" in caplog.text
    assert "expected a 'hello' or 'start'" in caplog.text
    with al.connect(server.address, token=TOKEN) as client:
        assert len(keys(client)) == 21


def _start_raw(address, credits: int, rank: int = 0) -> socket.socket:
    with al.connect(address, token=TOKEN, rank=rank, world_size=1) as client:
        state = client.state_dict()
    sock = _raw(address)
    _authenticate(sock)
    request = {"t": "start", "rank": rank, "world_size": 1, "credits": credits, "state": state}
    sock.sendall(protocol.frame_prefix(request))
    assert _recv_frame(sock)[0]["t"] == "started"
    return sock


def test_a_stalled_client_holds_the_server_to_its_credits(server):
    with _start_raw(server.address, credits=3) as sock:
        frames = [_recv_frame(sock)[0] for _ in range(3)]
        assert [f["seq"] for f in frames] == [0, 1, 2]
        (session,) = server.stats()["sessions"]
        assert session["sent"] == session["granted"] == 3  # nothing more until a credit comes
        assert session["credits"] == 0
        assert session["unsent_bytes"] == 0
        sock.sendall(protocol.frame_prefix({"t": "credit", "n": 1}))
        assert _recv_frame(sock)[0]["seq"] == 3
        (session,) = server.stats()["sessions"]
        assert session["sent"] == session["granted"] == 4


def big(i: int) -> np.ndarray:
    return np.full((1 << 18,), i, dtype=np.float32)  # 1 MiB


def test_a_client_that_stops_reading_is_dropped(caplog):
    loader = al.Loader.from_source(list(range(400))).map(big).batch(1)
    with (
        caplog.at_level(logging.WARNING, "aioloader.service"),
        loader,
        al.serve(loader, token=TOKEN, send_timeout=0.3) as srv,
    ):
        with _start_raw(srv.address, credits=200) as sock:
            with al.connect(srv.address, token=TOKEN, rank=0, world_size=2) as other:
                assert len(list(other)) == 200  # served meanwhile
            _read_until_closed(sock)  # ends when the server drops the connection
        assert srv.stats()["dropped"] == 1
    assert "stopped reading" in caplog.text


def test_a_closed_server_gives_connection_error_and_the_retry_resumes():
    expected = keys(spec(rank=0, world_size=1))
    loader = spec()
    srv = al.serve(loader, token=TOKEN)
    received = []
    try:
        with al.connect(srv.address, token=TOKEN, credits=1) as client:
            with pytest.raises(ConnectionError):
                for batch in client:
                    received.append(batch["key"].tolist())
                    if len(received) == 2:
                        srv.close()
            with pytest.raises(ConnectionError):  # still down: refused, not a hang
                list(client)
            assert client.state_dict()["position"] == 5 * len(received)
            # the server comes back on the same port: iterating again continues the epoch
            srv = al.serve(loader, token=TOKEN, port=srv.address[1])
            rest = keys(client)
        assert received + rest == expected
    finally:
        srv.close()
        loader.close()


def test_a_new_connection_for_a_rank_replaces_the_old(server, caplog):
    with (
        caplog.at_level(logging.INFO, "aioloader.service"),
        al.connect(server.address, token=TOKEN, credits=1) as first,
    ):
        stale = iter(first)
        next(stale)
        with al.connect(server.address, token=TOKEN) as second:
            assert len(keys(second)) == 21
        with pytest.raises(ConnectionError):
            list(stale)
    assert "reconnected" in caplog.text


def unsendable(i: int) -> object:
    return object()


def failing(i: int) -> int:
    if i == 4:
        raise KeyError("sample 4 is missing")
    return i


@pytest.mark.parametrize(("fn", "match"), [(unsendable, "cannot be sent"), (failing, "sample 4 is missing")])
def test_pipeline_errors_reach_the_client(fn, match):
    loader = al.Loader.from_source(list(range(10))).map(fn).batch(2, collate=al.collate.as_list)
    with loader, al.serve(loader, token=TOKEN) as srv, al.connect(srv.address, token=TOKEN) as client:
        for _ in range(2):  # the connection ends cleanly: the next epoch is served (and fails alike)
            with pytest.raises(RemoteError, match=match) as info:
                list(client)
            assert info.value.remote_type in ("TypeError", "KeyError")
        assert srv.stats()["dropped"] == 0


class Stream:
    """An iterable with no length: the client's len() is unknown too."""

    def __iter__(self):
        return iter(range(23))


def test_stream_source_and_unknown_length():
    loader = al.Loader.from_source(Stream()).batch(4)
    with loader, al.serve(loader, token=TOKEN) as srv, al.connect(srv.address, token=TOKEN) as client:
        got = [b.tolist() for b in client]
        assert got == [b.tolist() for b in loader]
        with pytest.raises(TypeError, match="len"):
            len(client)


def test_arguments_are_checked():
    with spec() as loader:
        with pytest.raises(ValueError, match="token"):
            al.serve(loader, token="short")
        with pytest.raises(TypeError, match="loader"):
            al.serve(object(), token=TOKEN)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="address"):
            al.connect("nowhere", token=TOKEN)
        with pytest.raises(ValueError, match="credits"):
            al.connect("127.0.0.1:1", token=TOKEN, credits=0)
    on_gpu = al.Loader.from_source(list(range(4))).batch(2).to_device("cuda")
    with pytest.raises(ValueError, match="to_device"):
        al.serve(on_gpu, token=TOKEN)
    with pytest.raises(ValueError, match="to_device"):
        on_gpu.in_subprocess()


def test_concurrent_async_clients_two_ranks(server):
    async def run(rank: int) -> list[list[int]]:
        with al.connect(server.address, token=TOKEN, rank=rank, world_size=2) as client:
            return [b["key"].tolist() async for b in client]

    async def both():
        return await asyncio.gather(run(0), run(1))

    a, b = asyncio.run(both())
    assert not set(np.concatenate(a).tolist()) & set(np.concatenate(b).tolist())
    assert len(a) == len(b)
