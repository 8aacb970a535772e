"""Stream-shard read fusion: a process map after a streamed WebDataset reads the shards in its
workers (aioloader._run.stages.shard_map), from a real object server on 127.0.0.1. The output
is the unfused run's (keys, values, order, with shuffle and resume), the parent reads no
sample bytes, a worker killed mid-shard loses and doubles nothing, and read errors are named
and skipped as when the parent streams."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aioloader as al
from aioloader.errors import DataNotFoundError
from aioloader.io import Retry
from tests.object_server import ObjectServer

SHARDS = 5
PER_SHARD = 8
FAST_RETRY = Retry(attempts=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=5.0)


def describe(sample: dict) -> tuple[str, int, int]:
    return sample["__key__"], len(sample["bin"]), int(sample["cls"])


def fail_on_seven(sample: dict) -> tuple[str, int, int]:
    if int(sample["cls"]) % 10 == 7:
        raise ValueError(f"no sevens: {sample['__key__']}")
    return describe(sample)


class DieOnce:
    """``describe`` that kills its worker the first time it sees sample ``cls``."""

    def __init__(self, marker: Path, cls: int) -> None:
        self.marker, self.cls = str(marker), cls

    def __call__(self, sample: dict) -> tuple[str, int, int]:
        if int(sample["cls"]) == self.cls:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(3)
            except FileExistsError:
                pass
        return describe(sample)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream-shards")
    samples = [{"__key__": f"k{i:05d}", "bin": os.urandom(200 + 7 * i), "cls": i} for i in range(SHARDS * PER_SHARD)]
    al.sources.write_shards(samples, str(folder / "train-%06d.tar"), max_count=PER_SHARD)
    return folder


@pytest.fixture
def server(shard_dir):
    with ObjectServer() as srv:
        for name in os.listdir(shard_dir):
            if name.endswith(".tar"):
                srv.objects[name] = (shard_dir / name).read_bytes()
        yield srv


def _loader(server: ObjectServer, executor: str, fn=describe, *, on_error="raise", source_errors="raise", **options):
    urls = server.url(f"train-{{000000..{SHARDS - 1:06d}}}.tar")
    options.setdefault("read_in_workers", True)
    source = al.sources.WebDataset(urls, retry=FAST_RETRY, on_error=source_errors, **options)
    return (
        al.Loader.from_source(source, shuffle=True, seed=5)
        .map(fn, executor=executor, concurrency=2, on_error=on_error, max_failures=100)
        .batch(3, collate=al.collate.as_list)
    )


def _fused_stage(loader) -> dict:
    stages = loader.stats()["stages"]
    assert [s["name"] for s in stages][-1] == "batch" and len(stages) == 2, stages
    assert stages[0]["reads"] == "source" and stages[0]["executor"] == "process"
    return stages[0]


def test_fused_run_gives_the_unfused_batches_and_the_parent_reads_no_sample_bytes(server):
    with _loader(server, "thread") as plain:
        expected = list(plain) + list(plain)  # two epochs: two shard orders
        assert "bytes_read" not in plain.stats()["stages"][1]
    total = sum(len(data) for data in server.objects.values())
    with _loader(server, "process") as fused:
        server.bytes_sent = 0
        got = list(fused)
        stage = _fused_stage(fused)
        sent = server.bytes_sent
        got += list(fused)
    assert got == expected
    assert sorted(k for batch in got[: len(got) // 2] for k, _, _ in batch) == sorted(
        f"k{i:05d}" for i in range(SHARDS * PER_SHARD)
    )
    # every byte the server sent went to the workers: one epoch's shards, once
    assert stage["bytes_read"] == sent == total
    workers = stage["by_worker"]  # what each worker did (how many shards each: timing)
    assert sum(w["shards"] for w in workers) == SHARDS and sum(w["samples"] for w in workers) == 40, workers


def test_fused_resume_reads_from_the_open_shard_on_and_gives_the_rest(server):
    with _loader(server, "thread") as plain:
        expected = list(plain)
    with _loader(server, "process") as first:
        it = iter(first)
        head = [next(it) for _ in range(5)]  # 15 samples: inside the second shard
        state = first.state_dict()
    assert head == expected[:5]
    server.requests.clear()
    with _loader(server, "process") as resumed:
        resumed.load_state_dict(state)
        rest = list(resumed)
        _fused_stage(resumed)
    assert rest == expected[5:]
    assert sum(server.requests.values()) <= 2 * (SHARDS - 1)  # a HEAD and a GET per shard read


def test_a_worker_killed_mid_shard_loses_and_doubles_nothing(server, tmp_path):
    with _loader(server, "thread") as plain:
        expected = list(plain)
    killer = DieOnce(tmp_path / "died", cls=PER_SHARD + 3)  # the fourth sample of shard 1
    with _loader(server, "process", killer) as fused:
        got = list(fused)
        _fused_stage(fused)
    assert (tmp_path / "died").exists()
    assert got == expected


def test_a_corrupt_member_and_fn_failures_are_skipped_and_reported_as_unfused(server):
    name = "train-000002.tar"
    data = bytearray(server.objects[name])
    data[2048 + 10] ^= 0xFF  # in a member header of the second sample: a bad checksum
    server.objects[name] = bytes(data)
    runs = {}
    for executor in ("thread", "process"):
        with _loader(server, executor, fail_on_seven, on_error="skip", source_errors="skip") as loader:
            batches = list(loader)
            errors = sorted((e["stage"], str(e["key"]), e["type"]) for e in loader.stats()["errors"])
        runs[executor] = (batches, errors)
    assert runs["process"] == runs["thread"]
    batches, errors = runs["process"]
    source = [key for stage, key, kind in errors if stage == "source" and kind == "DataCorruptionError"]
    assert len(source) == 1 and name in source[0]  # (url, member), as the unfused stream names it
    # sample 17 is in the cut part of shard 2: 7, 27 and 37 reach fn and fail
    assert sum(stage == "map(fail_on_seven)" for stage, _, _ in errors) == 3
    assert all(cls % 10 != 7 for batch in batches for _, _, cls in batch)


def test_a_missing_shard_raises_data_not_found_naming_its_url(server):
    del server.objects["train-000003.tar"]
    with _loader(server, "process") as fused, pytest.raises(DataNotFoundError, match=r"train-000003\.tar"):
        list(fused)


def test_workers_share_the_shard_cache_and_the_parent_can_read_instead(server, tmp_path):
    with _loader(server, "process", read_in_workers=False) as parent_reads:
        expected = list(parent_reads)
        assert [st["name"] for st in parent_reads.stats()["stages"]] == ["source", "map(describe)", "batch"]
    urls = server.url(f"train-{{000000..{SHARDS - 1:06d}}}.tar")
    source = al.sources.WebDataset(urls, retry=FAST_RETRY)
    # by default Ray's actors read their shards (they may be on other machines); for processes
    # the first shard measures who reads the others (aioloader._run.stream_reads)
    assert source.reads_in_workers("ray") and source.reads_in_workers("process") is None
    default = al.Loader.from_source(source, shuffle=True, seed=5)
    with default.map(describe, executor="process", concurrency=2).batch(3, collate=al.collate.as_list) as loader:
        assert list(loader) == expected
        assert loader.stats()["stages"][0]["read_choice"]["workers"] == 2
    cache = {"cache": str(tmp_path / "cache"), "cache_bytes": 1 << 20}
    with _loader(server, "process", **cache) as fused:
        server.bytes_sent = 0
        first = list(fused)  # the workers fill the cache, one whole shard each
        sent = server.bytes_sent
        server.bytes_sent = 0
        second = list(fused)
        stage = _fused_stage(fused)
    assert first == expected
    assert sorted(x for batch in second for x in batch) == sorted(x for batch in first for x in batch)
    assert sent == sum(len(data) for data in server.objects.values()) and server.bytes_sent == 0
    assert stage["bytes_read"] == 0  # the second epoch's shards came from the cache
    assert len([n for n in os.listdir(tmp_path / "cache") if n.endswith(".shard")]) == SHARDS



class SlowFirstShard:
    """A 64 KiB array per sample; each sample of shard 0 (the head) takes ``delay_s`` more."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def __call__(self, sample: dict):
        import time

        import numpy as np

        if sample["__url__"].endswith("train-000000.tar"):
            time.sleep(self.delay_s)
        return np.full(8192, int(sample["cls"]), dtype=np.float64)


@pytest.mark.parametrize("limit", [128 * 1024, 1 << 30])
def test_results_held_for_reordering_stay_within_reorder_bytes(tmp_path, limit):
    """Shard 0 is slow: the other worker's shards (4 of the first 8) would arrive whole while
    it is mapped; bounded, that worker waits and the parent holds at most twice the bound (the
    shards behind the head, and the head's) plus a part per worker."""
    samples = [{"__key__": f"k{i:05d}", "cls": i} for i in range(12 * 4)]
    al.sources.write_shards(samples, str(tmp_path / "train-%06d.tar"), max_count=4)
    with ObjectServer() as server:
        for path in tmp_path.glob("*.tar"):
            server.objects[path.name] = path.read_bytes()
        urls = server.url("train-{000000..000011}.tar")
        source = al.sources.WebDataset(urls, retry=FAST_RETRY, read_in_workers=True, reorder_bytes=limit)
        loader = (
            al.Loader.from_source(source)
            .map(SlowFirstShard(0.1), executor="process", concurrency=2)
            .batch(4, collate=al.collate.as_list)
            .options(block_size=2)
        )
        with loader:
            got = [int(x[0]) for batch in loader for x in batch]
            held = _fused_stage(loader)["reorder_bytes"]
    assert got == list(range(12 * 4))  # in order, each once
    part = 2 * 8192 * 8  # a part: a block of 2 results
    assert held["limit"] == limit
    if limit < 1 << 30:
        assert held["peak"] <= 2 * limit + 2 * part, held
    else:  # unbounded: 4 shards of 4 results arrive while shard 0 is mapped
        assert held["peak"] >= 16 * part // 2, held


def test_a_shard_whose_size_is_looked_up_last_is_not_queued_behind_shards_the_bound_holds(tmp_path):
    """Shard 1's HEAD answers a second after the others'. Its task still enters the pool
    before shard 2's: queued behind shards that wait for it to be handed on, it was never run
    and the run hung."""
    samples = [{"__key__": f"k{i:05d}", "cls": i} for i in range(12 * 4)]
    al.sources.write_shards(samples, str(tmp_path / "train-%06d.tar"), max_count=4)
    with ObjectServer() as server:
        for path in tmp_path.glob("*.tar"):
            server.objects[path.name] = path.read_bytes()
        server.head_latency_s["train-000001.tar"] = 1.0
        urls = server.url("train-{000000..000011}.tar")
        source = al.sources.WebDataset(urls, retry=FAST_RETRY, read_in_workers=True, reorder_bytes=128 * 1024)
        loader = (
            al.Loader.from_source(source)
            # a hang fails within a minute, naming the waiting workers
            .map(SlowFirstShard(0.1), executor="process", concurrency=2, stall_after=10, on_stall="raise")
            .batch(4, collate=al.collate.as_list)
            .options(block_size=2)
        )
        with loader:
            got = [int(x[0]) for batch in loader for x in batch]
    assert got == list(range(12 * 4))
