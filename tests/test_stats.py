"""Loader.stats(), report(), the bottleneck, the timeline, progress and the performance monitor."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

import aioloader as al
from aioloader.monitor.stats import bottleneck
from aioloader.monitor.timeline import Timeline

STAGE_KEYS = {
    "name",
    "executor",
    "items_in",
    "items_out",
    "rate",
    "busy",
    "utilization",
    "wait_input_s",
    "wait_output_s",
    "queue_mean",
    "queue_max",
    "queue_capacity",
    "errors",
}


def spin(x: int) -> int:
    """Real CPU work per item (~1 ms of pure Python): a deterministically slow stage."""
    total = 0
    for i in range(30_000):
        total += i
    return x


def cheap(x: int) -> int:
    return x


def test_slow_stage_in_the_middle_is_the_bottleneck() -> None:
    loader = (
        al.Loader.from_source(list(range(240)))
        .map(cheap, executor="inline", name="before")
        .map(spin, executor="thread", concurrency=1, name="slow")
        .map(cheap, executor="inline", name="after")
        .batch(8)
    )
    with loader:
        assert sum(len(b) for b in loader) == 240
        stats = loader.stats()
    assert stats["bottleneck"] == "slow"
    slow = next(s for s in stats["stages"] if s["name"] == "slow")
    before = next(s for s in stats["stages"] if s["name"] == "before")
    after = next(s for s in stats["stages"] if s["name"] == "after")
    assert slow["utilization"] > 0.8
    assert before["wait_output_s"] > slow["wait_output_s"]  # blocked on the slow stage's queue
    assert after["wait_input_s"] > slow["wait_input_s"]  # starved by it


def test_slow_consumer_is_the_bottleneck() -> None:
    with al.Loader.from_source(list(range(128))).batch(4) as loader:
        for _ in loader:  # ~3 ms of work per batch: the start-up wait is amortised
            for _ in range(3):
                spin(0)
        stats = loader.stats()
    assert stats["bottleneck"] == "consumer"
    assert stats["consumer"]["utilization"] > 0.5


def test_bottleneck_rule() -> None:
    stages = [
        {"name": "a", "utilization": 0.2, "busy": 0.1},
        {"name": "b", "utilization": 0.97, "busy": 0.3},
        {"name": "c", "utilization": 0.95, "busy": 0.9},  # a near tie: the busier stage
    ]
    assert bottleneck(stages, None) == "c"
    assert bottleneck(stages, {"utilization": 0.99}) == "consumer"  # waits least, busiest
    assert bottleneck(stages[:1], {"utilization": 0.9}) == "consumer"
    assert bottleneck([], None) is None


def test_stats_keys_sane_and_json() -> None:
    loader = al.Loader.from_source(list(range(100))).map(cheap).batch(10)
    with loader:
        empty = loader.stats()
        assert empty["stages"] == [] and empty["bottleneck"] is None
        batches = list(loader)
        stats = loader.stats()
    json.dumps(stats)
    assert len(batches) == 10
    assert stats["samples"] == 100 and stats["batches"] == 10
    assert stats["samples_per_s"] > 0 and stats["batches_per_s"] > 0
    assert (
        stats["time_to_first_batch_s"] is not None
        and 0 <= stats["time_to_first_batch_s"] <= stats["elapsed_s"]
    )
    for stage in stats["stages"]:
        assert stage.keys() >= STAGE_KEYS
        assert 0 <= stage["busy"] <= 1 and 0 <= stage["utilization"] <= 1
        assert stage["queue_max"] <= stage["queue_capacity"]
        assert 0 <= stage["queue_mean"] <= stage["queue_max"]
    by_name = {s["name"]: s for s in stats["stages"]}
    assert by_name["map(cheap)"]["items_in"] == by_name["map(cheap)"]["items_out"] == 100
    assert by_name["batch"]["items_out"] == 10
    memory = stats["memory"]
    assert memory["rss_mb"] > 0 and 0 < memory["percent"] < 100 and memory["processes"] >= 1
    assert stats["cpu_percent"] >= 0
    assert {"period_s", "t", "rate", "queue"} <= stats["timeline"].keys()
    assert stats["error_count"] == 0 and stats["errors"] == []


def flaky(x: int) -> int:
    if x % 10 == 3:
        raise ValueError(f"bad {x}")
    return x


def test_errors_per_stage_and_report() -> None:
    loader = al.Loader.from_source(list(range(50))).map(flaky, on_error="skip", max_failures=10).batch(5)
    with loader:
        assert sum(len(b) for b in loader) == 45
        stats = loader.stats()
        text = loader.report()
    assert stats["error_count"] == 5
    assert next(s for s in stats["stages"] if s["name"] == "map(flaky)")["errors"] == 5
    assert isinstance(text, str)
    for word in ("map(flaky)", "bottleneck:", "samples/s", "errors: 5 skipped", "batch"):
        assert word in text


async def test_async_iteration_stats() -> None:
    async with al.Loader.from_source(list(range(40))).batch(8) as loader:
        assert len([b async for b in loader]) == 5
        stats = loader.stats()
    json.dumps(stats)
    assert stats["batches"] == 5 and stats["consumer"] is not None


async def test_timeline_samples_on_the_loop() -> None:
    class Stage:
        def __init__(self) -> None:
            self.name = "s"
            self.stats = al.monitor.StageStats("s")
            self.output = None

    stage = Stage()
    timeline = Timeline([stage], period=0.001)
    ticks: list[float] = []
    done = asyncio.Event()

    def hook(dt: float) -> None:
        stage.stats.items_out += 10
        ticks.append(dt)
        if len(ticks) == 3:
            done.set()

    timeline.on_tick(hook)
    timeline.start(asyncio.get_running_loop())
    await asyncio.wait_for(done.wait(), 5)
    timeline.stop()
    data = timeline.to_json()
    # a tick may land between done.set() and stop(): at least the three the hook saw
    assert len(data["t"]) >= 3 and data["rate"]["s"][0] == 0 and data["rate"]["s"][1] > 0
    with pytest.raises(ValueError, match="period"):
        Timeline([], period=0)


def test_timeline_stays_bounded() -> None:
    class Stage:
        name = "s"
        stats = al.monitor.StageStats("s")
        output = None

    timeline = Timeline([Stage()], period=0.25)
    for _ in range(2000):
        timeline.sample()
    assert len(timeline.t) < 600 and timeline.period > 0.25


def test_performance_monitor_keys() -> None:
    monitor = al.DataLoaderPerformanceMonitor(sample_every=0)
    with monitor:
        for _ in range(5):
            spin(0)
            monitor.record_batch(32)
    stats = monitor.get_stats()
    keys = {"total_time", "avg_batch_time", "batches_per_second", "avg_memory_usage", "avg_cpu_usage"}
    assert keys <= stats.keys()
    assert stats["total_batches"] == 5 and stats["total_samples"] == 160
    assert stats["total_time"] > 0 and stats["batches_per_second"] > 0
    assert stats["avg_batch_time"] == pytest.approx(stats["total_time"] / 5)
    assert 0 < stats["avg_memory_usage"] < 100 and stats["avg_cpu_usage"] >= 0
    json.dumps(stats)
    with pytest.raises(TypeError, match="batch_size"):
        monitor.record_batch(1.5)
    with pytest.raises(ValueError, match="sample_every"):
        al.DataLoaderPerformanceMonitor(sample_every=-1)


def test_loader_feeds_the_monitor_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    monitor = al.DataLoaderPerformanceMonitor()
    loader = al.Loader.from_source(list(range(96))).batch(8).options(progress=0, monitor=monitor)
    with loader:
        assert len(list(loader)) == 12
    stats = monitor.stop()
    assert stats["total_batches"] == 12 and stats["total_samples"] == 96
    err = capsys.readouterr().err
    assert "/12 [" in err  # a bar was shown; its total came from len(loader)
    with pytest.raises(ValueError, match="progress"):
        al.Loader.from_source([1]).options(progress=-1)
    with pytest.raises(TypeError, match="monitor"):
        al.Loader.from_source([1]).options(monitor=object())


def test_stats_from_another_thread_while_running() -> None:
    gate = threading.Event()
    loader = al.Loader.from_source(list(range(64))).batch(4)
    with loader:
        iterator = iter(loader)
        next(iterator)
        stats = loader.stats()  # mid-epoch, from the consumer thread
        gate.set()
        rest = list(iterator)
    json.dumps(stats)
    assert len(rest) == 15 and stats["batches"] >= 1
