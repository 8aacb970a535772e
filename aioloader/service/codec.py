"""Batches as a JSON tree plus raw bytes: what travels in a service ``batch`` frame.

A batch may be any nesting of lists, tuples and dicts (keys: str, int, float, bool or None) whose
leaves are CPU tensors, numpy arrays, Python or numpy scalars, strings, bytes or None. The tree
goes in the frame's JSON header with each array replaced by ``{"$a": [dtype, shape, offset,
kind]}`` (kind "t" for a torch tensor, "n" for a numpy array) and each bytes object by
``{"$b": [offset, length]}``; containers are ``{"$l": [...]}``, ``{"$u": [...]}`` (tuple) and
``{"$d": [[key, value], ...]}``. The arrays' bytes follow as the frame body, each at an offset
aligned to :data:`ALIGN`.

Decoding trusts nothing: dtypes come from a fixed table, shapes and spans are checked against
the body, nesting depth and leaf count are bounded. Decoded arrays are views of one writable
copy of the body (no further copies). Other types (dataclasses, custom objects) are refused
with a ``TypeError`` on the sending side; a named tuple arrives as a plain tuple.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ALIGN = 64
MAX_DEPTH = 64
MAX_DIMS = 32
MAX_LEAVES = 1 << 20
_DTYPES = {
    name: np.dtype(name)
    for name in (
        "bool",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "uint64",
        "int64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
}
_PAD = bytes(ALIGN)


class DecodeError(ValueError):
    """The tree or the body of a batch frame is not valid."""


class _Writer:
    def __init__(self) -> None:
        self.buffers: list[Any] = []
        self.nbytes = 0

    def add(self, buffer: memoryview) -> int:
        pad = -self.nbytes % ALIGN
        if pad:
            self.buffers.append(_PAD[:pad])
            self.nbytes += pad
        offset = self.nbytes
        if buffer.nbytes:
            self.buffers.append(buffer)
            self.nbytes += buffer.nbytes
        return offset


def encode(value: Any) -> tuple[Any, list[Any], int]:
    """``value`` as ``(tree, buffers, nbytes)``: the JSON-able tree, the body's buffers in order
    and their total length. ``TypeError`` names what cannot be sent."""
    writer = _Writer()
    tree = _encode(value, writer, 0)
    return tree, writer.buffers, writer.nbytes


def _encode(value: Any, writer: _Writer, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise TypeError(f"a batch nested deeper than {MAX_DEPTH} levels cannot be sent")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, writer)
    if isinstance(value, np.ndarray):
        return {"$a": _encode_array(value, writer, "n")}
    if isinstance(value, np.generic):
        return value.item() if value.dtype.name in _DTYPES else _refuse(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = memoryview(value).cast("B")
        return {"$b": [writer.add(raw), raw.nbytes]}
    if isinstance(value, list):
        return {"$l": [_encode(v, writer, depth + 1) for v in value]}
    if isinstance(value, tuple):
        return {"$u": [_encode(v, writer, depth + 1) for v in value]}
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if key is not None and not isinstance(key, (str, int, float, bool)):
                raise TypeError(f"a batch dict key must be a str, int, float, bool or None, got {key!r}")
            items.append([key, _encode(item, writer, depth + 1)])
        return {"$d": items}
    return _refuse(value)


def _refuse(value: Any) -> Any:
    raise TypeError(
        f"a {type(value).__module__}.{type(value).__qualname__} cannot be sent by the loader "
        "service: batches must be nested lists, tuples and dicts of tensors, arrays, numbers, "
        "strings or bytes"
    )


def _encode_tensor(tensor: torch.Tensor, writer: _Writer) -> dict[str, Any]:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.is_sparse or tensor.is_quantized:
        raise TypeError("sparse and quantized tensors cannot be sent by the loader service")
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        spec = _encode_array(tensor.view(torch.int16).numpy(), writer, "t")
        spec[0] = "bfloat16"
        return {"$a": spec}
    try:
        array = tensor.numpy()
    except TypeError:
        _refuse_dtype(str(tensor.dtype))
    return {"$a": _encode_array(array, writer, "t")}


def _encode_array(array: np.ndarray, writer: _Writer, kind: str) -> list[Any]:
    name = array.dtype.name
    if name not in _DTYPES or array.dtype.byteorder == ">":
        _refuse_dtype(str(array.dtype))
    shape = list(array.shape)  # before the copy: ascontiguousarray makes a 0-d array 1-d
    array = np.ascontiguousarray(array)
    raw = memoryview(array).cast("B") if array.size else memoryview(b"")
    return [name, shape, writer.add(raw), kind]


def _refuse_dtype(dtype: str) -> None:
    raise TypeError(
        f"dtype {dtype} cannot be sent by the loader service (supported: {', '.join(_DTYPES)}, bfloat16)"
    )


def decode(tree: Any, body: bytes | bytearray) -> Any:
    """The batch described by ``tree`` over ``body``; :class:`DecodeError` when invalid."""
    buffer = body if isinstance(body, bytearray) else bytearray(body)
    leaves = [0]
    return _decode(tree, buffer, 0, leaves)


def _decode(node: Any, body: bytearray, depth: int, leaves: list[int]) -> Any:
    if depth > MAX_DEPTH:
        raise DecodeError(f"batch nested deeper than {MAX_DEPTH} levels")
    leaves[0] += 1
    if leaves[0] > MAX_LEAVES:
        raise DecodeError(f"batch has more than {MAX_LEAVES} entries")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        ((tag, content),) = node.items()
        if tag == "$a":
            return _decode_array(content, body)
        if tag == "$b":
            offset, length = _span(content, body)
            return bytes(body[offset : offset + length])
        if tag in ("$l", "$u") and isinstance(content, list):
            items = [_decode(v, body, depth + 1, leaves) for v in content]
            return items if tag == "$l" else tuple(items)
        if tag == "$d" and isinstance(content, list):
            out = {}
            for pair in content:
                if not (isinstance(pair, list) and len(pair) == 2) or isinstance(pair[0], (list, dict)):
                    raise DecodeError("a dict entry must be [key, value] with a scalar key")
                out[pair[0]] = _decode(pair[1], body, depth + 1, leaves)
            return out
    raise DecodeError(f"unknown batch node {str(node)[:80]!r}")


def _span(content: Any, body: bytearray) -> tuple[int, int]:
    if not (isinstance(content, list) and len(content) == 2 and all(_is_count(v) for v in content)):
        raise DecodeError("a bytes leaf must be [offset, length]")
    offset, length = content
    if offset + length > len(body):
        raise DecodeError(f"a bytes leaf [{offset}, {length}] runs past the body ({len(body)} bytes)")
    return offset, length


def _decode_array(content: Any, body: bytearray) -> Any:
    if not (isinstance(content, list) and len(content) == 4):
        raise DecodeError("an array leaf must be [dtype, shape, offset, kind]")
    name, shape, offset, kind = content
    bfloat16 = name == "bfloat16" and kind == "t"
    dtype = np.dtype("int16") if bfloat16 else _DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise DecodeError(f"unsupported dtype {name!r}")
    if kind not in ("t", "n"):
        raise DecodeError(f"unknown array kind {kind!r}")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_count(d) for d in shape)):
        raise DecodeError(f"invalid shape {shape!r}")
    if not _is_count(offset):
        raise DecodeError(f"invalid offset {offset!r}")
    count = 1
    for dim in shape:
        count *= dim
    if offset + count * dtype.itemsize > len(body):
        raise DecodeError(
            f"an array of {count} x {dtype} at offset {offset} runs past the body ({len(body)} bytes)"
        )
    if count:
        array = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
    else:
        array = np.empty(shape, dtype=dtype)
    if kind == "n":
        return array
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if bfloat16 else tensor


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
