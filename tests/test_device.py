"""to_device on the CPU: argument checks, pass-through and normalization, nested structures, and
the staging ring run over HostCopyEngine (the CPU twin of the CUDA copy engine, with a real
asynchronous "copy stream" thread and fences)."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, namedtuple
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

import aioloader as al
from aioloader._run.stages.device import StagingRing, device_spec, flatten, unflatten
from aioloader.device import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HostCopyEngine,
    Normalization,
    pack,
    staged_nbytes,
)

Pair = namedtuple("Pair", "image label")


def _images(n: int, shape: tuple[int, ...] = (3, 8, 8), seed: int = 0) -> list[Pair]:
    g = torch.Generator().manual_seed(seed)
    return [Pair(torch.randint(0, 256, shape, dtype=torch.uint8, generator=g), i) for i in range(n)]


def _reference(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, dim: int = -3) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[dim] = len(mean)
    m = torch.tensor(mean, dtype=torch.float64).view(shape)
    s = torch.tensor(std, dtype=torch.float64).view(shape)
    return ((x.double() / 255.0 - m) / s).float()


class RecordingEngine(HostCopyEngine):
    """HostCopyEngine that checks the ring's promises and records where hand-overs happen.

    With ``gated=True`` its copy stream holds every copy until the ring has to wait for one
    (all staging buffers in flight), as a busy GPU would; then it lets them run.
    """

    def __init__(self, *args, gated: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.transfers: list = []
        self.violations: list[str] = []
        self.in_flight_when_full: int | None = None
        self.handed: list[tuple[str, int]] = []

    def _execute(self, job) -> None:
        self.gate.wait()
        super()._execute(job)

    def _pending(self) -> set[int]:
        return {t.staging for t in self.transfers if not t.fence.is_set()}

    def copy(self, leaves, staging):
        if staging.data_ptr() in self._pending():
            self.violations.append(f"staging buffer {staging.data_ptr():#x} rewritten while a copy reads it")
        transfer = super().copy(leaves, staging)
        transfer.staging = staging.data_ptr()
        self.transfers.append(transfer)
        return transfer

    def wait(self, fence) -> None:
        if self.in_flight_when_full is None:
            self.in_flight_when_full = len(self._pending())
        self.gate.set()
        super().wait(fence)

    def hand_over(self, transfer) -> None:
        self.handed.append((threading.current_thread().name, self.transfers.index(transfer)))
        super().hand_over(transfer)


def _with_engine(loader: al.Loader, engine: HostCopyEngine, **options) -> al.Loader:
    spec = replace(device_spec("cpu", **options), engine=lambda _spec: engine)
    return loader._then(spec)


# -- build-time checks -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"device": "tpu"}, ValueError, "device"),
        ({"device": "cuda:x"}, ValueError, "device"),
        ({"device": "mps"}, ValueError, "device"),
        ({"device": 1.5}, TypeError, "device"),
        ({"device": -1}, ValueError, "device"),
        ({"device": "cpu", "non_blocking": "yes"}, TypeError, "non_blocking"),
        ({"device": "cpu", "non_blocking": 1}, TypeError, "non_blocking"),
        ({"device": "cpu", "normalize": "yes"}, TypeError, "normalize"),
        ({"device": "cpu", "mean": (0.5, 0.5), "std": (0.2, 0.2, 0.2)}, ValueError, "mean and std"),
        ({"device": "cpu", "normalize": True, "mean": (0.5, 0.5)}, ValueError, "mean and std"),
        ({"device": "cpu", "mean": (0.5,)}, ValueError, "std"),
        ({"device": "cpu", "std": (0.5,)}, ValueError, "mean"),
        ({"device": "cpu", "mean": (), "std": ()}, ValueError, "mean"),
        ({"device": "cpu", "mean": "abc", "std": (1.0,)}, TypeError, "mean"),
        ({"device": "cpu", "mean": (0.1,), "std": (0.0,)}, ValueError, "std"),
        ({"device": "cpu", "dtype": torch.int32}, ValueError, "dtype"),
        ({"device": "cpu", "dtype": "float32"}, TypeError, "dtype"),
        ({"device": "cpu", "normalize": True, "channel_dim": 1.0}, TypeError, "channel_dim"),
    ],
)
def test_bad_arguments_fail_at_build_time_naming_the_argument(kwargs, error, names) -> None:
    kwargs = dict(kwargs)  # the case's own dict stays whole: the test can run again (a rerun)
    device = kwargs.pop("device")
    with al.Loader.from_source(range(4)) as loader, pytest.raises(error, match=names):
        loader.to_device(device, **kwargs)


def test_cuda_pipeline_builds_on_any_machine_and_keeps_len() -> None:
    base = al.Loader.from_source(list(range(10))).batch(4)
    with base, base.to_device("cuda") as loader, base.to_device("cuda:0", normalize=True) as other:
        assert len(loader) == len(base) == 3
        assert len(other) == 3
        assert "to_device" in repr(loader)


def test_normalize_defaults_are_imagenet() -> None:
    spec = device_spec("cpu", normalize=True)
    assert spec.normalization == Normalization(torch.float32, IMAGENET_MEAN, IMAGENET_STD, -3)
    assert device_spec("cpu").normalization is None
    assert device_spec("cpu", dtype=torch.float16).normalization == Normalization(torch.float16)
    assert device_spec(torch.device("cuda", 1)).index == 1
    assert device_spec(2).device_type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_raises_when_iteration_starts() -> None:
    loader = al.Loader.from_source(_images(8)).batch(4).to_device("cuda")
    with loader, pytest.raises(RuntimeError, match=r"to_device\('cuda'\): CUDA is not available"):
        next(iter(loader))
    by_index = al.Loader.from_source(_images(8)).batch(4).to_device(5)  # named as it was given
    with by_index, pytest.raises(RuntimeError, match=r"to_device\('cuda:5'\): CUDA is not available"):
        next(iter(by_index))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
async def test_cuda_without_cuda_raises_when_async_iteration_starts() -> None:
    async with al.Loader.from_source(_images(8)).batch(4).to_device("cuda") as loader:
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            async for _ in loader:
                pass


# -- to_device("cpu") --------------------------------------------------------------------------
def test_cpu_passes_batches_through_unchanged() -> None:
    data = _images(10)
    with al.Loader.from_source(data).batch(4) as base, base.to_device("cpu") as loader:
        expected = list(base)
        got = list(loader)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected, strict=True):
        assert isinstance(a, Pair)
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)


def test_cpu_normalize_matches_the_reference_formula() -> None:
    data = _images(10)
    with al.Loader.from_source(data).batch(4).to_device("cpu", normalize=True) as loader:
        batches = list(loader)
    images = torch.stack([p.image for p in data])
    got = torch.cat([b.image for b in batches])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(images), atol=1e-6, rtol=1e-5)
    assert torch.cat([b.label for b in batches]).tolist() == list(range(10))  # labels untouched


def test_dtype_only_scales_to_unit_range_and_channels_last_mean_std() -> None:
    data = [torch.randint(0, 256, (5, 5, 2), dtype=torch.uint8) for _ in range(4)]
    with al.Loader.from_source(data).batch(4) as base:
        with base.to_device("cpu", dtype=torch.float64) as loader:
            (scaled,) = list(loader)
        with base.to_device("cpu", mean=(0.1, 0.9), std=(0.5, 2.0), channel_dim=-1) as loader:
            (normed,) = list(loader)
        with base.to_device("cpu", normalize=True, dtype=torch.float16, mean=(0.5,), std=(0.25,)) as loader:
            (half,) = list(loader)
    images = torch.stack(data)
    assert scaled.dtype == torch.float64
    torch.testing.assert_close(scaled, images.double() / 255.0)
    torch.testing.assert_close(
        normed, _reference(images, (0.1, 0.9), (0.5, 2.0), dim=-1), atol=1e-6, rtol=1e-5
    )
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, ((images.float() / 255 - 0.5) / 0.25).half(), atol=2e-3, rtol=1e-3)


def test_channel_mismatch_raises_in_the_stage_naming_it() -> None:
    data = [torch.zeros(4, 8, 8, dtype=torch.uint8)] * 4  # 4 channels, ImageNet has 3
    loader = al.Loader.from_source(data).batch(2).to_device("cpu", normalize=True)
    with loader, pytest.raises(ValueError, match="channel_dim=-3") as info:
        list(loader)
    assert info.value.stage == "to_device"


def test_nested_structures_keep_their_shape_and_non_tensors_pass_through() -> None:
    arr = np.arange(3)
    value = {
        "pair": Pair(torch.arange(4), "label"),
        "list": [torch.ones(2, 2), (torch.zeros(3, dtype=torch.uint8), None)],
        "ordered": OrderedDict(a=torch.tensor(1.5), b=7),
        "array": arr,
    }
    leaves: list[torch.Tensor] = []
    skeleton = flatten(value, leaves)
    assert len(leaves) == 4
    rebuilt = unflatten(skeleton, [t.clone() for t in leaves])
    assert isinstance(rebuilt["pair"], Pair) and rebuilt["pair"].label == "label"
    assert torch.equal(rebuilt["pair"].image, torch.arange(4))
    assert isinstance(rebuilt["list"][1], tuple) and rebuilt["list"][1][1] is None
    assert type(rebuilt["ordered"]) is OrderedDict and rebuilt["ordered"]["b"] == 7
    assert rebuilt["array"] is arr
    with pytest.raises(TypeError, match="dense"):
        flatten([torch.eye(2).to_sparse()], [])


def test_pack_aligns_every_leaf_and_round_trips() -> None:
    leaves = [torch.arange(3, dtype=torch.int8), torch.rand(5, 3).t(), torch.tensor([True, False])]
    nbytes = staged_nbytes(leaves)
    assert nbytes == 3 * 256
    staging = torch.empty(nbytes, dtype=torch.uint8)
    views = pack(leaves, staging)
    for leaf, view in zip(leaves, views, strict=True):
        assert torch.equal(leaf, view) and view.is_contiguous()
        assert (view.data_ptr() - staging.data_ptr()) % 256 == 0
    with pytest.raises(ValueError, match="too small"):
        pack(leaves, staging[:10])


# -- the staging ring --------------------------------------------------------------------------
async def test_ring_grows_lazily_reuses_in_order_and_awaits_without_blocking_the_loop() -> None:
    loop = asyncio.get_running_loop()
    engine = HostCopyEngine()
    with ThreadPoolExecutor(1, thread_name_prefix="aioloader-test") as pool:
        ring = StagingRing(engine, 2, lambda fn, *a: loop.run_in_executor(pool, fn, *a))
        a, b = await ring.acquire(), await ring.acquire()
        assert ring.size == 2 and a is not b
        fa, fb = threading.Event(), threading.Event()
        ring.release(a, fa)
        ring.release(b, fb)
        assert ring.in_flight == 2
        waiting = asyncio.ensure_future(ring.acquire())
        await asyncio.sleep(0)  # let it reach the wait (no timing involved: it must block)
        assert not waiting.done()
        loop.call_soon(fa.set)  # the loop still runs: the wait happens in the worker thread
        assert await waiting is a and ring.waits == 1
        fb.set()
        ring.release(a, None)  # free at once
        assert await ring.acquire() is a
        assert await ring.acquire() is b  # its fence is done: reclaimed without waiting
        assert ring.waits == 1 and ring.size == 2
        ring.close()


async def test_ring_cancelled_wait_keeps_the_buffer_in_flight() -> None:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="aioloader-test") as pool:
        ring = StagingRing(HostCopyEngine(), 1, lambda fn, *a: loop.run_in_executor(pool, fn, *a))
        slot = await ring.acquire()
        fence = threading.Event()
        ring.release(slot, fence)
        waiting = asyncio.ensure_future(ring.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert ring.in_flight == 1  # never lent while its copy may still read it
        fence.set()
        assert await ring.acquire() is slot
        ring.close()


@pytest.mark.parametrize("non_blocking", [True, False])
def test_host_engine_values_equal_the_cpu_batch(non_blocking: bool) -> None:
    data = [{"x": torch.rand(3, 4), "y": torch.tensor(i), "tag": f"s{i}"} for i in range(9)]
    engine = RecordingEngine(non_blocking=non_blocking)
    with al.Loader.from_source(data).batch(2) as base, _with_engine(base, engine) as loader:
        expected = list(base)
        got = list(loader)
    assert len(got) == 5
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) and a["tag"] == b["tag"]
        assert a["x"].data_ptr() != b["x"].data_ptr()  # a copy, not the input
    assert not engine.violations


def test_staging_buffer_is_not_reused_while_its_copy_is_in_flight() -> None:
    data = _images(40)
    engine = RecordingEngine(gated=True)
    base = al.Loader.from_source(data).batch(4)
    with base, _with_engine(base, engine).prefetch(3) as loader:
        got = list(loader)
        ring = loader.stats()
    assert engine.in_flight_when_full == 3  # the ring filled (depth follows prefetch(3)) ...
    assert engine.allocations == 3  # ... never grew past it ...
    assert not engine.violations  # ... and never rewrote a buffer a copy was reading
    assert torch.equal(torch.cat([b.image for b in got]), torch.stack([p.image for p in data]))
    stage = next(s for s in ring["stages"] if s["name"] == "to_device")
    assert stage["items_out"] == 10


def test_buffers_regrow_for_larger_batches() -> None:
    sizes = [10, 3000, 5, 70_000, 64, 70_001, 1]
    data = [torch.arange(n, dtype=torch.int32) for n in sizes]
    engine = RecordingEngine()
    base = al.Loader.from_source(data).options(block_size=1)
    with base, _with_engine(base, engine) as loader:
        got = list(loader)
    assert [g.tolist() for g in got] == [d.tolist() for d in data]
    assert not engine.violations


def test_host_engine_normalization_equals_the_cpu_pass_through() -> None:
    data = _images(10)
    engine = RecordingEngine(device_spec("cpu", normalize=True).normalization)
    base = al.Loader.from_source(data).batch(4)
    with (
        base,
        base.to_device("cpu", normalize=True) as cpu,
        _with_engine(base, engine, normalize=True) as staged,
    ):
        expected = list(cpu)
        got = list(staged)
    for a, b in zip(got, expected, strict=True):
        assert a.image.dtype == torch.float32
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)


def test_sync_consumer_thread_does_the_hand_over_before_seeing_each_batch() -> None:
    engine = RecordingEngine()
    base = al.Loader.from_source(_images(12)).batch(3)
    with base, _with_engine(base, engine) as loader:
        for i, _batch in enumerate(loader):
            assert len(engine.handed) == i + 1  # handed over before this batch was yielded
    assert engine.handed == [("MainThread", i) for i in range(4)]  # not the loop thread


async def test_async_consumer_does_the_hand_over_before_seeing_each_batch() -> None:
    engine = RecordingEngine()
    base = al.Loader.from_source(_images(12)).batch(3)
    async with base, _with_engine(base, engine) as loader:
        i = 0
        async for _batch in loader:
            assert len(engine.handed) == i + 1
            i += 1
    assert engine.handed == [(threading.current_thread().name, i) for i in range(4)]


def test_a_stage_after_to_device_gets_the_hand_over_on_the_loop_thread() -> None:
    engine = RecordingEngine()
    base = al.Loader.from_source(_images(8)).batch(4)
    with base, _with_engine(base, engine).map(lambda b: b.image.sum().item(), executor="inline") as loader:
        sums = list(loader)
    assert sums == [int(torch.stack([p.image for p in _images(8)[i : i + 4]]).sum()) for i in (0, 4)]
    assert [name for name, _ in engine.handed] == ["aioloader-loop"] * 2


def test_breaking_out_early_stops_the_stage_and_its_threads() -> None:
    engine = RecordingEngine()
    base = al.Loader.from_source(_images(64)).batch(2)
    with base, _with_engine(base, engine) as loader:
        for i, _batch in enumerate(loader):
            if i == 2:
                break
    # the conftest fixture checks that aioloader-device* threads are gone


def test_epochs_each_build_a_fresh_engine() -> None:
    engines: list[RecordingEngine] = []

    def factory(_spec):
        engines.append(RecordingEngine())
        return engines[-1]

    base = al.Loader.from_source(_images(6)).batch(3)
    spec = replace(device_spec("cpu"), engine=factory)
    with base, base._then(spec) as loader:
        first, second = list(loader), list(loader)
    assert len(engines) == 2 and len(first) == len(second) == 2
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.image, b.image)
