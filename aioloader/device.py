"""The device end of a pipeline: ``Loader.to_device`` options and the copy engines behind them.

``to_device(device, non_blocking=True, ...)`` adds a stage that moves every batch's tensors to
``device``. On CUDA, each batch is packed (in a thread, off the event loop) into one of a ring of
reused pinned staging buffers, copied on a dedicated CUDA stream, optionally turned from uint8
into normalized floats there (so the CPU sends a quarter of the bytes), and followed by a CUDA
event. Handing the batch to the consumer makes the consumer's *current* stream wait on that event
and records the batch's tensors on that stream (``record_stream``), so the training step is
ordered after the copy without any host-side synchronize, and the caching allocator never reuses
their memory while the consumer's queued kernels may still read it. The CPU-side orchestration
(the staging ring, ordering, lifetimes, stop) and the stage's spec and argument checks live in
:mod:`aioloader._run.stages.device`, which works over the small :class:`CopyEngine` interface implemented here three times:

- :class:`CudaCopyEngine`: pinned staging, a copy stream, events.
- :class:`HostCopyEngine`: its CPU twin with the same asynchronous semantics (a "copy stream"
  thread executing copies in order, ``threading.Event`` fences); the tests run the ring on it.
- :class:`PassThroughEngine`: ``to_device("cpu")``: no copy; the float/normalize work (if asked)
  is done on the CPU with the same code, so results mean the same everywhere.

Normalization (``normalize=True``, or ``dtype``/``mean``/``std``) applies to uint8 tensors only
(images); other tensors (labels, float features) are copied unchanged. A uint8 tensor ``x`` becomes
``(x / 255 - mean) / std`` in ``dtype`` (default float32), ``mean``/``std`` per channel along
``channel_dim`` (default -3: ``N, C, H, W`` batches; use -1 for channels-last ``N, H, W, C``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CopyEngine",
    "CudaCopyEngine",
    "HostCopyEngine",
    "Normalization",
    "PassThroughEngine",
    "Transfer",
    "pack",
    "staged_nbytes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALIGN = 256  # bytes: every leaf starts aligned in the staging buffer (any dtype view is valid)


# -- normalization -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Normalization:
    """uint8 -> ``dtype``, scaled to [0, 1], then ``(x - mean) / std`` along ``channel_dim``.

    Computed as ``x * scale + shift`` with per-channel ``scale = 1 / (255 std)`` and
    ``shift = -mean / std`` (in float32 for 16-bit targets, then cast), the same code on the
    CPU and on the GPU.
    """

    dtype: torch.dtype = torch.float32
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_dim: int = -3

    def constants(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scale, shift)`` as 1-D CPU tensors in the working dtype (``shift`` None: no mean)."""
        work = self.work_dtype
        if self.mean is None or self.std is None:
            return torch.tensor([1.0 / 255.0], dtype=work), None
        scale = [1.0 / (255.0 * s) for s in self.std]
        shift = [-m / s for m, s in zip(self.mean, self.std, strict=True)]
        return torch.tensor(scale, dtype=work), torch.tensor(shift, dtype=work)

    @property
    def work_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype.itemsize < 4 else self.dtype

    def _shape(self, x: torch.Tensor, channels: int) -> list[int]:
        shape = [1] * x.dim()
        if channels == 1:
            return shape
        dim = self.channel_dim
        if not -x.dim() <= dim < x.dim():
            raise ValueError(
                f"normalize: a uint8 tensor of shape {tuple(x.shape)} has no dimension channel_dim={dim}"
            )
        if x.shape[dim] != channels:
            raise ValueError(
                f"normalize: mean/std have {channels} values but the uint8 tensor of shape "
                f"{tuple(x.shape)} has {x.shape[dim]} along channel_dim={dim}"
            )
        shape[dim] = channels
        return shape

    def apply(
        self,
        x: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor | None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalize uint8 ``x`` with constants on ``x``'s device (into ``out`` when given)."""
        shape = self._shape(x, scale.numel())
        y = x.to(self.work_dtype)
        y.mul_(scale.view(shape))
        if shift is not None:
            y.add_(shift.view(shape))
        if out is not None:
            return out.copy_(y)
        return y if y.dtype == self.dtype else y.to(self.dtype)


def _applies(norm: Normalization | None, leaf: torch.Tensor) -> bool:
    return norm is not None and leaf.dtype == torch.uint8


# -- staging layout ----------------------------------------------------------------------------
def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def staged_nbytes(leaves: Sequence[torch.Tensor]) -> int:
    """Bytes a staging buffer needs to hold ``leaves`` packed at aligned offsets."""
    return sum(_aligned(leaf.numel() * leaf.element_size()) for leaf in leaves)


def pack(leaves: Sequence[torch.Tensor], staging: torch.Tensor) -> list[torch.Tensor]:
    """Copy ``leaves`` into the 1-D uint8 ``staging`` buffer; return their (contiguous) views."""
    if staging.numel() < staged_nbytes(leaves):
        raise ValueError(f"staging buffer of {staging.numel()} bytes is too small")
    views = []
    offset = 0
    for leaf in leaves:
        nbytes = leaf.numel() * leaf.element_size()
        view = staging[offset : offset + nbytes].view(leaf.dtype).view(leaf.shape)
        view.copy_(leaf)
        views.append(view)
        offset += _aligned(nbytes)
    return views


# -- copy engines ------------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class Transfer:
    """One block's copy: its leaves on the target device, the fence that completes it, and the
    tensors made for the consumer (recorded on the consumer's stream at hand-over)."""

    outputs: list[torch.Tensor]
    fence: Any = None
    owned: list[torch.Tensor] | None = None
    staging: int | None = None  # id of the staging buffer it read (bookkeeping, tests)


class CopyEngine(Protocol):
    """What the staging ring needs from a device. ``allocate``/``copy``/``wait`` run in the
    stage's worker thread; ``done`` on the loop; ``hand_over`` on the consumer's thread."""

    staged: bool  # copies read from a staging buffer the ring provides

    def allocate(self, nbytes: int) -> torch.Tensor: ...

    def copy(self, leaves: list[torch.Tensor], staging: torch.Tensor | None) -> Transfer: ...

    def done(self, fence: Any) -> bool: ...

    def wait(self, fence: Any) -> None: ...

    def hand_over(self, transfer: Transfer) -> None: ...

    def close(self) -> None: ...


class PassThroughEngine:
    """``to_device("cpu")``: tensors stay where they are; normalization runs on the CPU."""

    staged = False

    def __init__(self, normalization: Normalization | None = None) -> None:
        self._norm = normalization
        self._constants = normalization.constants() if normalization is not None else None
        self.inline = normalization is None  # nothing to compute: no thread hop

    def allocate(self, nbytes: int) -> torch.Tensor:
        raise RuntimeError("PassThroughEngine has no staging buffers")

    def copy(self, leaves: list[torch.Tensor], staging: torch.Tensor | None) -> Transfer:
        norm, outputs = self._norm, list(leaves)
        if norm is not None and self._constants is not None:
            scale, shift = self._constants
            outputs = [norm.apply(x, scale, shift) if _applies(norm, x) else x for x in leaves]
        return Transfer(outputs)

    def done(self, fence: Any) -> bool:
        return True

    def wait(self, fence: Any) -> None:
        return None

    def hand_over(self, transfer: Transfer) -> None:
        return None

    def close(self) -> None:
        return None


_STOP: Any = object()


class HostCopyEngine:
    """The CPU twin of :class:`CudaCopyEngine`, with the same asynchronous semantics.

    Staging buffers are ordinary memory; ``copy`` packs the leaves and enqueues the copies on a
    "copy stream" (a thread running jobs in order) and returns at once with the outputs still
    unwritten and a ``threading.Event`` fence. ``hand_over`` waits on the fence on the host (the
    CPU has no streams: the consumer's thread is its stream). Subclasses can override
    :meth:`_execute` to hold the stream, as a busy GPU would.
    """

    staged = True

    def __init__(self, normalization: Normalization | None = None, *, non_blocking: bool = True) -> None:
        self._norm = normalization
        self._constants = normalization.constants() if normalization is not None else None
        self._non_blocking = non_blocking
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.allocations = 0

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._stream, name="aioloader-device-stream", daemon=True
                )
                self._thread.start()

    def _stream(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            self._execute(job)

    def _execute(self, job: tuple[list[tuple[torch.Tensor, torch.Tensor]], threading.Event]) -> None:
        pairs, fence = job
        norm, constants = self._norm, self._constants
        for source, out in pairs:
            if constants is not None and norm is not None and _applies(norm, source):
                norm.apply(source, *constants, out=out)
            else:
                out.copy_(source)
        fence.set()

    def allocate(self, nbytes: int) -> torch.Tensor:
        self.allocations += 1
        return torch.empty(nbytes, dtype=torch.uint8)

    def copy(self, leaves: list[torch.Tensor], staging: torch.Tensor | None) -> Transfer:
        if staging is None:
            raise ValueError("HostCopyEngine.copy needs a staging buffer")
        self._start()
        views = pack(leaves, staging)
        norm = self._norm
        outputs = [
            torch.empty(v.shape, dtype=norm.dtype if norm is not None and _applies(norm, v) else v.dtype)
            for v in views
        ]
        fence = threading.Event()
        self._jobs.put((list(zip(views, outputs, strict=True)), fence))
        if not self._non_blocking:
            fence.wait()
        return Transfer(outputs, fence, outputs, id(staging))

    def done(self, fence: threading.Event) -> bool:
        return fence.is_set()

    def wait(self, fence: threading.Event) -> None:
        fence.wait()

    def hand_over(self, transfer: Transfer) -> None:
        transfer.fence.wait()

    def close(self) -> None:
        """End the stream thread once the queued copies are done (it never blocks the caller)."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(_STOP)


class CudaCopyEngine:
    """Pinned staging buffers, copies and normalization on a dedicated CUDA stream, events.

    Runs its CUDA work from the stage's worker thread, under ``torch.cuda.stream(copy_stream)``:
    the device tensors are allocated on the copy stream; ``hand_over`` (the consumer's thread)
    makes the consumer's current stream wait on the batch's event and calls ``record_stream`` on
    every tensor it hands over. Pinned buffers are only rewritten once the ring has seen their
    event complete; dropping one early is safe too (torch's caching host allocator records an
    event for every non-blocking copy out of a pinned block and recycles it only after).
    """

    staged = True

    def __init__(
        self, index: int | None, normalization: Normalization | None = None, *, non_blocking: bool = True
    ) -> None:
        if not torch.cuda.is_available():
            device = "cuda" if index is None else f"cuda:{index}"
            raise RuntimeError(
                f"to_device({device!r}): CUDA is not available (torch.cuda.is_available() is False: "
                "a CPU-only torch build or no visible GPU); use to_device('cpu') on this machine"
            )
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise RuntimeError(f"to_device('cuda:{index}'): this machine has {count} CUDA device(s)")
        self._index = index
        self._norm = normalization
        self._non_blocking = non_blocking
        self._stream: torch.cuda.Stream | None = None
        self._constants: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.allocations = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self._index)

    def _start(self) -> torch.cuda.Stream:
        """Create the copy stream (and normalization constants) in the worker thread."""
        if self._stream is None:
            if self._index is None:
                self._index = torch.cuda.current_device()
            stream = torch.cuda.Stream(self._index)
            if self._norm is not None:
                with torch.cuda.stream(stream):
                    scale, shift = self._norm.constants()
                    self._constants = (
                        scale.pin_memory().to(self.device, non_blocking=True),
                        shift.pin_memory().to(self.device, non_blocking=True) if shift is not None else None,
                    )
            self._stream = stream
        return self._stream

    def allocate(self, nbytes: int) -> torch.Tensor:
        self.allocations += 1
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def copy(self, leaves: list[torch.Tensor], staging: torch.Tensor | None) -> Transfer:
        if staging is None:
            raise ValueError("CudaCopyEngine.copy needs a staging buffer")
        stream = self._start()
        views = pack(leaves, staging)  # host memcpy into pinned memory, in this worker thread
        outputs: list[torch.Tensor] = []
        norm, constants = self._norm, self._constants
        with torch.cuda.stream(stream):
            for view in views:
                out = torch.empty(view.shape, dtype=view.dtype, device=self.device)
                out.copy_(view, non_blocking=True)
                if norm is not None and constants is not None and _applies(norm, out):
                    out = norm.apply(out, *constants)  # the uint8 copy is freed on this stream
                outputs.append(out)
            fence = torch.cuda.Event()
            fence.record(stream)
        if not self._non_blocking:
            fence.synchronize()
        return Transfer(outputs, fence, outputs, id(staging))

    def done(self, fence: torch.cuda.Event) -> bool:
        return fence.query()

    def wait(self, fence: torch.cuda.Event) -> None:
        fence.synchronize()

    def hand_over(self, transfer: Transfer) -> None:
        consumer = torch.cuda.current_stream(self._index)
        consumer.wait_event(transfer.fence)
        for tensor in transfer.owned or ():
            tensor.record_stream(consumer)

    def close(self) -> None:
        self._stream = None
        self._constants = None
