"""The device stage: CPU-side orchestration of ``to_device`` over a copy engine.

For each input block the stage flattens the values (nested tuples, lists, dicts, named tuples)
into their CPU tensor leaves, takes a staging buffer from the :class:`StagingRing`, and has the
engine pack and copy the leaves in the stage's worker thread (pinning and packing never run on
the event loop). The ring lends a buffer again only once the engine's fence for the copy out of
it has completed: checked with a non-blocking query, else awaited in the worker thread. The ring
grows lazily up to ``depth`` buffers (the larger of the capacities of the channels around the
stage, so it follows ``prefetch``): a copy engine that keeps up only ever allocates two.

The block goes downstream as a :class:`DeviceBlock`, which carries the engine's transfer; the
consumer calls :meth:`DeviceBlock.before_consumer` on its own thread before it sees the values
(``Loader`` iteration does, sync or async), so the wait lands on the consumer's current stream.
When another stage follows ``to_device``, the hand-over is done here, on the loop thread.
"""

from __future__ import annotations

import asyncio
import numbers
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import torch

from aioloader._run.block import Block
from aioloader._run.channel import Channel
from aioloader._run.stages.base import BuildContext, Stage, StageSpec
from aioloader.device import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CopyEngine,
    CudaCopyEngine,
    Normalization,
    PassThroughEngine,
    Transfer,
    staged_nbytes,
)
from aioloader.errors import annotate
from aioloader.monitor.stats import StageStats

MIN_RING = 2
_GROWTH = 1.5  # a buffer too small for a batch is reallocated this much larger (variable sizes)
_PAGE = 4096


# -- nested structures -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Leaf:
    index: int


def flatten(obj: Any, leaves: list[torch.Tensor]) -> Any:
    """A skeleton of ``obj`` with each CPU tensor replaced by a ``_Leaf`` (appended to ``leaves``).

    Tuples, lists, dicts and named tuples are walked; anything else (numbers, strings, tensors
    already on another device, other objects) stays in the skeleton as it is.
    """
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            return obj
        if obj.layout != torch.strided:
            raise TypeError(
                f"to_device: only dense tensors are staged, got a tensor with layout {obj.layout}"
            )
        leaves.append(obj)
        return _Leaf(len(leaves) - 1)
    if isinstance(obj, tuple):
        items = [flatten(item, leaves) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [flatten(item, leaves) for item in obj]
    if isinstance(obj, dict):
        return _rebuild_dict(obj, {key: flatten(value, leaves) for key, value in obj.items()})
    return obj


def unflatten(skeleton: Any, outputs: list[Any]) -> Any:
    """The structure of :func:`flatten` with its leaves taken from ``outputs``."""
    if isinstance(skeleton, _Leaf):
        return outputs[skeleton.index]
    if isinstance(skeleton, torch.Tensor):
        return skeleton
    if isinstance(skeleton, tuple):
        items = [unflatten(item, outputs) for item in skeleton]
        return type(skeleton)(*items) if hasattr(skeleton, "_fields") else tuple(items)
    if isinstance(skeleton, list):
        return [unflatten(item, outputs) for item in skeleton]
    if isinstance(skeleton, dict):
        return _rebuild_dict(skeleton, {key: unflatten(value, outputs) for key, value in skeleton.items()})
    return skeleton


def _rebuild_dict(original: dict[Any, Any], values: dict[Any, Any]) -> dict[Any, Any]:
    if type(original) is dict:
        return values
    import copy

    rebuilt = copy.copy(original)  # a dict subclass (OrderedDict, defaultdict) keeps its type
    rebuilt.update(values)
    return rebuilt


# -- the staging ring --------------------------------------------------------------------------
@dataclass(slots=True)
class Slot:
    """One staging buffer, and the fence of the last copy out of it (None: free)."""

    buffer: torch.Tensor | None = None
    fence: Any = None


Blocking = Callable[..., Awaitable[Any]]  # runs a blocking function in the worker thread


class StagingRing:
    """Up to ``depth`` reused staging buffers, lent in turn, each lent again only after the
    copy out of it has completed. Used from one task; grows lazily."""

    def __init__(self, engine: CopyEngine, depth: int, blocking: Blocking) -> None:
        if depth < 1:
            raise ValueError(f"ring depth must be >= 1, got {depth}")
        self.depth = depth
        self._engine = engine
        self._blocking = blocking
        self._free: deque[Slot] = deque()
        self._busy: deque[Slot] = deque()  # in release order: the oldest copy first
        self.size = 0
        self.waits = 0  # acquisitions that had to wait for a copy to complete

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def _reclaim(self) -> None:
        busy, done = self._busy, self._engine.done
        while busy and done(busy[0].fence):
            slot = busy.popleft()
            slot.fence = None
            self._free.append(slot)

    async def acquire(self) -> Slot:
        """A buffer no copy is reading: a free one, a new one, or the oldest once its copy ends."""
        self._reclaim()
        if self._free:
            return self._free.popleft()
        if self.size < self.depth:
            self.size += 1
            return Slot()
        slot = self._busy.popleft()
        if not self._engine.done(slot.fence):
            self.waits += 1
            try:
                await self._blocking(self._engine.wait, slot.fence)
            except BaseException:
                self._busy.appendleft(slot)  # still in flight as far as we know
                raise
        slot.fence = None
        return slot

    def release(self, slot: Slot, fence: Any) -> None:
        """Give ``slot`` back: busy until ``fence`` completes (free at once when None)."""
        slot.fence = fence
        if fence is None:
            self._free.appendleft(slot)
        else:
            self._busy.append(slot)

    def close(self) -> None:
        """Drop every buffer. In-flight copies keep their memory alive (torch's host allocator
        records an event per copy; the CPU twin holds references), so nothing waits here."""
        for slot in (*self._free, *self._busy):
            slot.buffer = None
        self._free.clear()
        self._busy.clear()


def fill(engine: CopyEngine, slot: Slot, leaves: list[torch.Tensor], nbytes: int) -> Transfer:
    """Worker thread: (re)allocate the slot's buffer if too small, pack and copy ``leaves``."""
    buffer = slot.buffer
    if buffer is None or buffer.numel() < nbytes:
        size = nbytes if buffer is None else max(nbytes, int(buffer.numel() * _GROWTH))
        slot.buffer = None  # free (its copy has completed) before the new one is allocated
        slot.buffer = buffer = engine.allocate(-(-size // _PAGE) * _PAGE)
    return engine.copy(leaves, buffer)


# -- the stage ---------------------------------------------------------------------------------
@dataclass(slots=True)
class DeviceBlock(Block):
    """A block whose values may still be in the copy; see :meth:`before_consumer`."""

    engine: Any = None
    transfer: Transfer | None = None

    def before_consumer(self) -> None:
        """Order the consumer (this thread's current stream) after the copy. Once per block."""
        transfer, self.transfer = self.transfer, None
        if transfer is not None and transfer.fence is not None:
            self.engine.hand_over(transfer)


class DeviceStage(Stage):
    def __init__(self, spec: DeviceSpec, engine: CopyEngine, *, feeds_consumer: bool) -> None:
        self.name = spec.name
        self.engine = engine
        self._feeds_consumer = feeds_consumer  # the consumer's thread hands the blocks over
        self.input: Channel
        self.output: Channel
        self.stats = StageStats(spec.name, executor="thread")
        self.ring: StagingRing | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._pool = pool = ThreadPoolExecutor(1, thread_name_prefix="aioloader-device")

        def blocking(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
            return loop.run_in_executor(pool, fn, *args)

        depth = max(MIN_RING, self.input.capacity, self.output.capacity)
        self.ring = ring = StagingRing(self.engine, depth, blocking)
        last = self._feeds_consumer
        try:
            async for block in self.input:
                self.stats.items_in += len(block)
                out = await self._transfer(block, ring, blocking)
                if not last:  # a later stage reads the values on this (loop) thread
                    out.before_consumer()
                self.stats.items_out += len(block)
                await self.output.put(out)
        finally:
            ring.close()
        self.output.close()

    async def _transfer(self, block: Block, ring: StagingRing, blocking: Blocking) -> DeviceBlock:
        leaves: list[torch.Tensor] = []
        try:
            skeleton = flatten(block.values, leaves)
            started = perf_counter()
            if not leaves:
                transfer = Transfer([])
            elif not self.engine.staged:  # to_device("cpu"): inline unless there is work to do
                if getattr(self.engine, "inline", False):
                    transfer = self.engine.copy(leaves, None)
                else:
                    transfer = await blocking(self.engine.copy, leaves, None)
            else:
                slot = await ring.acquire()
                fence = None
                try:
                    transfer = await blocking(fill, self.engine, slot, leaves, staged_nbytes(leaves))
                    fence = transfer.fence
                finally:
                    ring.release(slot, fence)
            self.stats.busy_s += perf_counter() - started
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise annotate(exc, self.name, block.keys) from None
        values = unflatten(skeleton, transfer.outputs)
        return DeviceBlock(block.keys, block.seqs, values, self.engine, transfer)

    def close(self) -> None:
        """After the run's tasks ended: stop the worker thread and the engine (no waiting)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()


# -- the spec ----------------------------------------------------------------------------------
EngineFactory = Callable[["DeviceSpec"], CopyEngine]


@dataclass(frozen=True, slots=True)
class DeviceSpec(StageSpec):
    """``to_device``: target device, copy mode, optional normalization (validated at build)."""

    device_type: str = "cpu"
    index: int | None = None
    non_blocking: bool = True
    normalization: Normalization | None = None
    engine: EngineFactory | None = None  # another copy engine (tests run the ring on HostCopyEngine)

    def make_engine(self) -> CopyEngine:
        if self.engine is not None:
            return self.engine(self)
        if self.device_type == "cpu":
            return PassThroughEngine(self.normalization)
        return CudaCopyEngine(self.index, self.normalization, non_blocking=self.non_blocking)

    def build(self, ctx: BuildContext) -> DeviceStage:
        return DeviceStage(self, self.make_engine(), feeds_consumer=ctx.feeds_consumer)

    def one_to_one(self) -> bool:
        return True

    def step_problem(self) -> str | None:
        return None


def _parse_device(device: Any) -> tuple[str, int | None]:
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"device must be a str, torch.device or int, got {type(device).__name__}: {device!r}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device must be a CUDA device index >= 0, got {device}")
        return "cuda", device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if parsed.type == "cpu":
        return "cpu", None
    index = parsed.index
    if index is None and torch.cuda.is_initialized():
        index = torch.cuda.current_device()  # the builder's device (torch.cuda.set_device)
    return "cuda", index


def _check_stats(value: Any, argument: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            value = value.tolist()
        else:
            raise TypeError(f"{argument} must be a sequence of numbers, got {value!r}")
    if not value:
        raise ValueError(f"{argument} must have one value per channel, got an empty sequence")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{argument} must be a sequence of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _normalization(normalize: Any, dtype: Any, mean: Any, std: Any, channel_dim: Any) -> Normalization | None:
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {normalize!r}")
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise TypeError(f"channel_dim must be an int, got {channel_dim!r}")
    if (mean is None) != (std is None) and not normalize:
        given = "mean" if mean is not None else "std"
        raise ValueError(f"{given} was given without {'std' if given == 'mean' else 'mean'}: give both")
    if normalize:
        mean = IMAGENET_MEAN if mean is None else mean
        std = IMAGENET_STD if std is None else std
    if mean is None and dtype is None:
        return None
    if mean is not None:
        mean = _check_stats(mean, "mean")
        std = _check_stats(std, "std")
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std must be > 0, got {std}")
    return Normalization(dtype or torch.float32, mean, std, channel_dim)


def device_spec(
    device: Any,
    *,
    non_blocking: bool = True,
    normalize: bool = False,
    dtype: torch.dtype | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channel_dim: int = -3,
    name: str = "to_device",
) -> DeviceSpec:
    """Validate ``to_device`` arguments (build time; CUDA is neither needed nor initialised)."""
    device_type, index = _parse_device(device)
    if not isinstance(non_blocking, bool):
        raise TypeError(f"non_blocking must be a bool, got {non_blocking!r}")
    normalization = _normalization(normalize, dtype, mean, std, channel_dim)
    return DeviceSpec(name, device_type, index, non_blocking, normalization)
