"""Frames, batch encoding and the token handshake of the loader service, without sockets."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aioloader.service import codec, protocol
from aioloader.service.cursor import Cursor
from aioloader.service.protocol import ProtocolError


def roundtrip(value):
    tree, buffers, nbytes = codec.encode(value)
    body = b"".join(bytes(b) for b in buffers)
    assert len(body) == nbytes
    return codec.decode(tree, body)


def test_nested_batches_round_trip():
    value = {
        "image": torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4),
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "mask": np.array([[True, False]]),
        "empty": torch.zeros((0, 3)),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
        "scalars": (1, 2.5, None, True, "text", np.int64(7), np.float32(0.5)),
        "raw": b"\x00\x01bytes",
        3: ["a", [torch.tensor(1)]],
    }
    out = roundtrip(value)
    assert out.keys() == value.keys()
    assert torch.equal(out["image"], value["image"])
    assert out["bf16"].dtype == torch.bfloat16 and torch.equal(out["bf16"], value["bf16"])
    assert isinstance(out["mask"], np.ndarray) and np.array_equal(out["mask"], value["mask"])
    assert out["empty"].shape == (0, 3)
    assert torch.equal(out["strided"], value["strided"])
    assert out["scalars"] == (1, 2.5, None, True, "text", 7, 0.5)
    assert out["raw"] == value["raw"]
    assert out[3][0] == "a" and out[3][1][0].item() == 1
    out["image"][0, 0, 0] = 9  # writable, like a freshly collated batch


@pytest.mark.parametrize(
    "value",
    [object(), {(1, 2): 1}, np.array(["a"], dtype=object), torch.tensor([1 + 2j]).to_sparse()],
    ids=["object", "tuple-key", "object-array", "sparse"],
)
def test_unsendable_values_are_refused(value):
    with pytest.raises(TypeError):
        codec.encode(value)


@pytest.mark.parametrize(
    "tree",
    [
        {"$a": ["float32", [4], 0, "t"]},  # runs past the body
        {"$a": ["object", [1], 0, "n"]},
        {"$a": ["uint8", [-1], 0, "n"]},
        {"$a": ["uint8", [1], 0, "x"]},
        {"$b": [0, 100]},
        {"$d": [[["list"], 1]]},
        {"$x": 1},
        {"plain": "dict"},
        [1, 2],
    ],
)
def test_invalid_trees_are_decode_errors(tree):
    with pytest.raises(codec.DecodeError):
        codec.decode(tree, b"\0" * 8)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.dictionaries(st.text(), st.integers()),
    lambda children: (
        st.lists(children) | st.dictionaries(st.sampled_from(["$a", "$b", "$d", "$l", "$u"]), children)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(tree=json_values, body=st.binary(max_size=64))
def test_decoding_any_json_never_fails_otherwise(tree, body):
    try:
        codec.decode(tree, body)
    except codec.DecodeError:
        pass


def read(data: bytes, **limits):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await protocol.read_frame(reader, **limits)

    return asyncio.run(go())


def test_frames_and_their_limits():
    frame = protocol.frame_prefix({"t": "batch", "n": 1}, 3) + b"abc"
    assert read(frame, max_body=3) == ({"t": "batch", "n": 1}, b"abc")
    with pytest.raises(ProtocolError, match="body"):
        read(frame, max_body=2)
    with pytest.raises(ProtocolError, match="header"):
        read(frame, max_header=4, max_body=3)
    with pytest.raises(ProtocolError, match="not an aioloader frame"):
        read(b"XX" + frame[2:], max_body=3)
    with pytest.raises(ProtocolError, match="version"):
        read(frame[:2] + b"\x09" + frame[3:], max_body=3)
    with pytest.raises(ProtocolError, match="JSON object"):
        read(protocol.frame_prefix([1]), max_body=3)  # type: ignore[arg-type]
    with pytest.raises(EOFError):
        read(frame[:-1], max_body=3)


def test_proofs_need_the_same_token():
    server_nonce, client_nonce = protocol.nonce(), protocol.nonce()
    token = protocol.check_token("a" * 32)
    proof = protocol.client_proof(token, server_nonce, client_nonce)
    assert protocol.proof_matches(protocol.client_proof(token, server_nonce, client_nonce), proof)
    assert not protocol.proof_matches(protocol.client_proof(b"b" * 32, server_nonce, client_nonce), proof)
    assert not protocol.proof_matches(protocol.server_proof(token, server_nonce, client_nonce), proof)
    assert not protocol.proof_matches(proof, None)
    assert protocol.valid_nonce(server_nonce) and not protocol.valid_nonce("zz")
    with pytest.raises(ValueError, match="at least 16"):
        protocol.check_token("short")
    with pytest.raises(TypeError):
        protocol.check_token(123)


def test_cursor_follows_the_loaders_epoch_rules():
    initial = {
        "format": "f",
        "rank": 0,
        "epoch": 0,
        "position": 0,
        "prefix": [],
        "reservoir": None,
        "elastic": [],
    }
    cursor = Cursor(initial)
    assert cursor.begin()["epoch"] == 0
    cursor.delivered({**initial, "position": 5})
    assert cursor.state_dict()["position"] == 5  # broken off mid-epoch: where it stopped
    assert cursor.begin() == {**initial, "epoch": 1}  # a new iteration is the next epoch
    cursor.finished({**initial, "epoch": 2})
    assert cursor.state_dict()["epoch"] == 2
    cursor.next_epoch = 7
    assert cursor.begin()["epoch"] == 7
    cursor.load({**initial, "epoch": 3, "position": 9})
    assert cursor.state_dict()["position"] == 9
    assert cursor.begin()["position"] == 9 and cursor.next_epoch == 4
