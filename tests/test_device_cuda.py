"""to_device("cuda") on a GPU: values, stream ordering without host synchronize, staging buffer
reuse, allocator lifetimes and on-device normalization. Skipped where CUDA is not available.

The copy engine is slowed down with ``torch.cuda._sleep`` on its copy stream, so a batch reaches
the consumer while its copy is still running: a consumer stream that did not wait on the batch's
event would read unwritten memory.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from dataclasses import replace

import pytest
import torch

import aioloader as al
from aioloader._run.stages.device import device_spec
from aioloader.device import CudaCopyEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

Pair = namedtuple("Pair", "image label")
SLOW_CYCLES = 20_000_000  # ~10 ms of GPU time before each copy


def _images(n: int, shape: tuple[int, ...] = (3, 64, 64)) -> list[Pair]:
    g = torch.Generator().manual_seed(0)
    return [Pair(torch.randint(0, 256, shape, dtype=torch.uint8, generator=g), i) for i in range(n)]


class SlowCudaEngine(CudaCopyEngine):
    """Holds the copy stream busy before each copy; records transfers and rule violations."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.transfers: list = []
        self.violations: list[str] = []
        self.lock = threading.Lock()

    def copy(self, leaves, staging):
        ptr = staging.data_ptr()
        with self.lock:
            if any(t.staging == ptr and not t.fence.query() for t in self.transfers):
                self.violations.append(f"staging {ptr:#x} rewritten while its copy runs")
        with torch.cuda.stream(self._start()):
            torch.cuda._sleep(SLOW_CYCLES)
        transfer = super().copy(leaves, staging)
        transfer.staging = ptr
        with self.lock:
            self.transfers.append(transfer)
        return transfer


def _slow(base: al.Loader, **options) -> tuple[al.Loader, list[SlowCudaEngine]]:
    engines: list[SlowCudaEngine] = []

    def factory(spec):
        engines.append(SlowCudaEngine(spec.index, spec.normalization, non_blocking=spec.non_blocking))
        return engines[-1]

    return base._then(replace(device_spec("cuda", **options), engine=factory)), engines


def test_values_equal_the_cpu_batch() -> None:
    data = [{"x": torch.rand(3, 5), "y": torch.tensor(i), "name": str(i)} for i in range(10)]
    base = al.Loader.from_source(data).batch(4)
    with base, base.to_device("cuda") as loader:
        expected, got = list(base), list(loader)
    for a, b in zip(got, expected, strict=True):
        assert a["x"].is_cuda and a["y"].is_cuda and a["name"] == b["name"]
        assert torch.equal(a["x"].cpu(), b["x"]) and torch.equal(a["y"].cpu(), b["y"])


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_consumer_stream_waits_on_the_event_without_host_sync(mode: str) -> None:
    data = _images(16)
    expected = torch.stack([p.image for p in data]).view(4, 4, *data[0].image.shape)
    loader, engines = _slow(al.Loader.from_source(data).batch(4))
    consumer = torch.cuda.Stream()
    pending_at_hand_off: list[bool] = []
    sums: list[torch.Tensor] = []

    def check(i: int, batch: Pair) -> None:
        pending_at_hand_off.append(not engines[0].transfers[i].fence.query())
        sums.append(batch.image.long().sum())  # queued on the consumer stream

    with loader, torch.cuda.stream(consumer):
        if mode == "sync":
            for i, batch in enumerate(loader):
                check(i, batch)
        else:
            i = 0
            async for batch in loader:
                check(i, batch)
                i += 1
    consumer.synchronize()
    assert [int(s) for s in sums] == [int(b.long().sum()) for b in expected]
    assert any(pending_at_hand_off)  # batches reached the consumer before their copy ended
    assert not engines[0].violations


def test_staging_buffers_are_not_reused_while_in_flight() -> None:
    base = al.Loader.from_source(_images(64)).batch(4)
    loader, engines = _slow(base)
    with base, loader.prefetch(3) as loader:
        got = list(loader)
    assert len(got) == 16 and not engines[0].violations
    assert engines[0].allocations <= 3


def test_memory_handed_over_is_not_reused_while_the_consumer_reads_it() -> None:
    """record_stream: a batch dropped by Python while the consumer stream still has queued reads
    of it must not be handed to the next copies."""
    data = _images(32, shape=(3, 128, 128))
    expected = [int(p.image.long().sum()) for p in data]
    loader, _ = _slow(al.Loader.from_source(data).batch(1))
    consumer = torch.cuda.Stream()
    sums = []
    with loader, torch.cuda.stream(consumer):
        for batch in loader:
            torch.cuda._sleep(SLOW_CYCLES)  # the read below runs late
            sums.append(batch.image.long().sum())
            del batch
    consumer.synchronize()
    assert [int(s) for s in sums] == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_normalization_on_the_gpu_matches_the_cpu(dtype: torch.dtype) -> None:
    base = al.Loader.from_source(_images(12)).batch(4)
    with (
        base,
        base.to_device("cuda", normalize=True, dtype=dtype) as gpu,
        base.to_device("cpu", normalize=True, dtype=dtype) as cpu,
    ):
        for a, b in zip(gpu, cpu, strict=True):
            assert a.image.dtype == dtype and a.image.is_cuda
            tol = 1e-5 if dtype == torch.float32 else 2e-3
            torch.testing.assert_close(a.image.cpu(), b.image, atol=tol, rtol=tol)
            assert torch.equal(a.label.cpu(), b.label)


def test_blocking_copy_is_complete_when_handed_over() -> None:
    loader, engines = _slow(al.Loader.from_source(_images(8)).batch(4), non_blocking=False)
    with loader:
        for i, _batch in enumerate(loader):
            assert engines[0].transfers[i].fence.query()
