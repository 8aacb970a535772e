"""The body of a map stage's Ray actor: what runs on the cluster (see :mod:`aioloader.ray.pool`).

An actor is built with the stage's work and ``worker_init``, shipped once per pool through the
object store, so each chunk carries only its values. ``run`` takes a chunk as the process pool's
wire format (:mod:`aioloader.workers.wire`: a pickle and its out-of-band buffers) and answers as
a worker process does: ``("ok", (results, failures, busy_s, nbytes))`` (``nbytes``: the bytes
of the arrays and tensors in the results, by which the pool sizes the next chunks),
``("error", exc)`` when the work raised, or ``("undecodable", exc)`` when the values cannot be
unpickled here. Exceptions come back as values, not as Ray task errors, so the stage sees the
function's own exception types. ``run_parts`` does the same for work that sends parts of its
result early (a fused shard stream), as a Ray streaming call.

An actor with a memory limit (``max_worker_memory``) reads its own resident memory every
:data:`MEMORY_CHECK_S` while it runs a chunk, from a daemon thread of its own (the driver
cannot read a remote process's memory; the thread ends with the actor's process), and past the
limit leaves why in the cluster's key-value store (:func:`memory_note_key`: Ray reports only
that the process ended) and ends its process with exit code :data:`MEMORY_EXIT_CODE`. The pool
sees a dead actor, replaces it, and the executor redoes the chunk item by item, as when the
process pool kills a worker over the same limit.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aioloader.workers._child import _portable
from aioloader.workers.pool import WORKER_ENV

# Smaller arrays are copied: cheap, and they may sit in Ray's in-process memory store (results
# of up to 100 KB come back inline) rather than in the object store.
_VIEW_MIN_BYTES = 64 * 1024
MEMORY_CHECK_S = 0.2  # how often a busy actor reads its resident memory (the process pool's period)
MEMORY_EXIT_CODE = 87  # an actor that ended itself over its memory limit


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
        self,
        shipped: tuple[Callable[[list[Any]], Any], Callable[[int], None] | None],
        worker_id: int,
        max_memory: int | None = None,
    ) -> None:
        # one intra-op thread per actor, as worker processes (the actors are the parallelism)
        for name, value in WORKER_ENV.items():
            os.environ.setdefault(name, value)
        import torch
        from ray.util import register_serializer

        torch.set_num_threads(1)
        register_serializer(torch.Tensor, serializer=_tensor_out, deserializer=tensor_in)
        self._work, init = shipped
        self._busy = threading.Event()
        if max_memory is not None:
            threading.Thread(
                target=_watch_memory, args=(self._busy, max_memory), name="aioloader-memory", daemon=True
            ).start()
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
        self._busy.set()
        try:
            return self._run(head, buffers)
        finally:
            self._busy.clear()

    def run_parts(self, head: bytes, buffers: list[Any]) -> Iterator[tuple[str, Any]]:
        """``run`` for work that sends parts of its result as they are done (a fused shard
        stream's :class:`~aioloader.sources._stream_worker.ShardStreamWork`): called with
        ``num_returns="streaming"``, it yields ``("part", part)`` for each, then ``run``'s
        answer. The work runs in a thread of this call's own, ended before the answer."""
        parts: queue.SimpleQueue[Any] = queue.SimpleQueue()
        end = object()
        answer: list[tuple[str, Any]] = []
        send_parts = getattr(self._work, "send_parts", None)
        if send_parts is not None:
            send_parts(parts.put)

        def work() -> None:
            try:
                answer.append(self.run(head, buffers))
            finally:
                if send_parts is not None:
                    send_parts(None)  # this call's queue is done with
                parts.put(end)

        thread = threading.Thread(target=work, name="aioloader-parts", daemon=True)
        thread.start()
        while (part := parts.get()) is not end:
            yield "part", part
        thread.join()
        yield answer[0] if answer else ("error", RuntimeError("the work ended without an answer"))

    def _run(self, head: bytes, buffers: list[Any]) -> tuple[str, Any]:
        try:
            # writable copies, as a worker process's values are (Ray's own are read-only views)
            values = pickle.loads(head, buffers=[bytearray(buffer) for buffer in buffers])
        except Exception as exc:  # the driver sends the values again one by one to find which
            return "undecodable", _portable(exc)
        try:
            results, failures, busy = self._work(values)
        except Exception as exc:
            return "error", _portable(exc)
        return "ok", (results, [(i, _portable(e)) for i, e in failures], busy, result_bytes(results))


def memory_note_key(actor_name: str) -> bytes:
    """Where an actor that ended itself over its memory limit leaves why, in the cluster's
    key-value store (Ray reports only that its process ended)."""
    return f"aioloader-memory:{actor_name}".encode()


def result_bytes(value: Any, depth: int = 3) -> int:
    """The bytes of the arrays and tensors in ``value`` (looked for in lists, tuples and dicts,
    ``depth`` levels down): what a chunk's result puts in the object store."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if hasattr(value, "element_size") and hasattr(value, "numel"):  # a torch tensor
        return int(value.element_size() * value.numel())
    if depth == 0:
        return 0
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return sum(result_bytes(v, depth - 1) for v in value)
    return 0


def _watch_memory(busy: threading.Event, limit: int) -> None:
    """An actor's memory watch: while it runs a chunk, end the process once its resident memory
    is over ``limit`` bytes (its call cannot be interrupted otherwise)."""
    import psutil

    me = psutil.Process()
    while busy.wait():
        rss = me.memory_info().rss
        if busy.is_set() and rss > limit:
            why = (
                f"Ray actor pid {os.getpid()} used {rss / 2**20:.0f} MiB of memory, over "
                f"max_worker_memory={limit / 2**20:.0f} MiB; it was replaced"
            )
            print(f"aioloader: {why}", file=sys.stderr, flush=True)
            _leave_note(why)
            os._exit(MEMORY_EXIT_CODE)
        time.sleep(MEMORY_CHECK_S)


def _leave_note(why: str) -> None:
    try:
        import ray
        from ray.experimental.internal_kv import _internal_kv_put

        name = ray.get_runtime_context().get_actor_name()
        if name:
            _internal_kv_put(memory_note_key(name), why.encode(), overwrite=True)
    except Exception:  # the crash is reported without its reason
        pass
