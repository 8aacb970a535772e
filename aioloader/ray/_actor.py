"""The body of a map stage's Ray actor: what runs on the cluster (see :mod:`aioloader.ray.pool`).

An actor is built with the stage's work and ``worker_init``, shipped once per pool through the
object store, so each chunk carries only its values. ``run`` takes a chunk as the process pool's
wire format (:mod:`aioloader.workers.wire`: a pickle and its out-of-band buffers) and answers as
a worker process does: ``("ok", (results, failures, busy_s))``, ``("error", exc)`` when the work
raised, or ``("undecodable", exc)`` when the values cannot be unpickled here. Exceptions come back
as values, not as Ray task errors, so the stage sees the function's own exception types.
"""

from __future__ import annotations

import ctypes
import os
import pickle
from collections.abc import Callable
from typing import Any

from aioloader.workers._child import _portable
from aioloader.workers.pool import WORKER_ENV

# Smaller arrays are copied: cheap, and they may sit in Ray's in-process memory store (results
# of up to 100 KB come back inline) rather than in the object store.
_VIEW_MIN_BYTES = 64 * 1024


def _tensor_out(tensor: Any) -> tuple[str, Any]:
    """How an actor sends a torch tensor: as a numpy array, which Ray writes to the object store
    out of band (a tensor's own pickle goes through ``torch.save`` into bytes, a copy and an
    archive on each side); anything numpy cannot hold keeps torch's pickle."""
    import torch

    try:
        if tensor.layout is torch.strided and not tensor.requires_grad and tensor.device.type == "cpu":
            return "array", tensor.numpy()
    except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks
        pass
    return "pickle", pickle.dumps(tensor, protocol=5)


def tensor_in(sent: tuple[str, Any]) -> Any:
    """The driver's side of :func:`_tensor_out`: a tensor viewing the array where Ray put it
    (the driver node's object store), as a process stage's batch views shared memory: a copy
    would cost the driver a fresh allocation, its page faults and a memmove per batch. The view
    keeps the object alive until the tensor is gone; writing into it changes only this copy,
    which nothing else reads (the driver owns the object)."""
    import torch

    kind, value = sent
    if kind != "array":
        return pickle.loads(value)
    if value.flags.writeable:
        return torch.from_numpy(value)
    if not value.flags.c_contiguous or value.nbytes < _VIEW_MIN_BYTES:
        return torch.from_numpy(value.copy())
    return torch.from_numpy(_writable_view(value))


def _writable_view(array: Any) -> Any:
    """``array`` (C-contiguous, read-only because Ray marks object-store memory so) as a
    writable array of the same memory, which keeps ``array`` (and so the object) alive."""
    import numpy as np

    memory = (ctypes.c_char * array.nbytes).from_address(array.ctypes.data)
    memory._keep = array  # type: ignore[attr-defined]
    return np.frombuffer(memory, dtype=array.dtype).reshape(array.shape)


class MapActor:
    """One actor of a map stage's pool; Ray runs its calls one at a time."""

    def __init__(
        self, shipped: tuple[Callable[[list[Any]], Any], Callable[[int], None] | None], worker_id: int
    ) -> None:
        # one intra-op thread per actor, as worker processes (the actors are the parallelism)
        for name, value in WORKER_ENV.items():
            os.environ.setdefault(name, value)
        import torch
        from ray.util import register_serializer

        torch.set_num_threads(1)
        register_serializer(torch.Tensor, serializer=_tensor_out, deserializer=tensor_in)
        self._work, init = shipped
        self._init_error: BaseException | None = None
        if init is not None:
            try:
                init(worker_id)
            except Exception as exc:  # reported by ready(), so the pool fails with it at once
                self._init_error = _portable(exc)

    def ready(self) -> tuple[str, Any]:
        """``("ready", (node_id, pid))`` once started, or ``("init_error", exc)``."""
        if self._init_error is not None:
            return "init_error", self._init_error
        import ray

        return "ready", (ray.get_runtime_context().get_node_id(), os.getpid())

    def run(self, head: bytes, buffers: list[Any]) -> tuple[str, Any]:
        try:
            # writable copies, as a worker process's values are (Ray's own are read-only views)
            values = pickle.loads(head, buffers=[bytearray(buffer) for buffer in buffers])
        except Exception as exc:  # the driver sends the values again one by one to find which
            return "undecodable", _portable(exc)
        try:
            results, failures, busy = self._work(values)
        except Exception as exc:
            return "error", _portable(exc)
        return "ok", (results, [(i, _portable(e)) for i, e in failures], busy)
