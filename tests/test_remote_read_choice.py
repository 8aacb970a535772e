"""Who reads a streamed WebDataset for a process map by default (``read_in_workers=None``,
aioloader._run.stream_reads): the run's first shard, read by the parent, measures the bytes a
sample carries and fn's CPU per sample; the workers read the other shards for large samples
and a cheap fn, the parent for small samples and a costly fn. The data (order, keys, values,
resume states, errors) is the same whichever mode reads. A real object server on 127.0.0.1."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import aioloader as al
from aioloader.errors import DataNotFoundError
from aioloader.io import Retry
from tests.object_server import ObjectServer

SHARDS = 5
PER_SHARD = 6
FAST_RETRY = Retry(attempts=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=5.0)
STALL = {"stall_after": 60.0, "on_stall": "raise"}  # a hang fails with the workers' stacks


def cheap(sample: dict) -> tuple[str, int, int]:
    return sample["__key__"], len(sample["bin"]), int(sample["cls"])


def costly(sample: dict) -> tuple[str, int, int]:
    """``cheap`` after 3 ms of CPU (CPU time: a loaded machine does not make it cheaper)."""
    until = time.thread_time() + 0.003
    while time.thread_time() < until:
        pass
    return cheap(sample)


class CostlyDieOnce:
    """``costly`` that kills its worker the first time it sees sample ``cls``."""

    def __init__(self, marker: Path, cls: int) -> None:
        self.marker, self.cls = str(marker), cls

    def __call__(self, sample: dict) -> tuple[str, int, int]:
        if int(sample["cls"]) == self.cls:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(3)
            except FileExistsError:
                pass
        return costly(sample)


def _shards(folder: Path, size: int) -> Path:
    samples = [{"__key__": f"k{i:05d}", "bin": os.urandom(size + i), "cls": i} for i in range(SHARDS * PER_SHARD)]
    al.sources.write_shards(samples, str(folder / "train-%06d.tar"), max_count=PER_SHARD)
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _shards(tmp_path_factory.mktemp("small"), 300)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return _shards(tmp_path_factory.mktemp("large"), 256 * 1024)


def _serve(folder: Path) -> ObjectServer:
    server = ObjectServer()
    for name in os.listdir(folder):
        if name.endswith(".tar"):
            server.objects[name] = (folder / name).read_bytes()
    return server


def _loader(server: ObjectServer, fn, *, executor="process", shuffle=True, **options) -> al.Loader:
    urls = server.url(f"train-{{000000..{SHARDS - 1:06d}}}.tar")
    source = al.sources.WebDataset(urls, retry=FAST_RETRY, **options)
    return (
        al.Loader.from_source(source, shuffle=shuffle, seed=3)
        .map(fn, executor=executor, concurrency=2, **STALL)
        .batch(4, collate=al.collate.as_list)
    )


CASES = [("large", cheap, True), ("small", costly, False)]


@pytest.mark.parametrize(("data", "fn", "workers_read"), CASES, ids=["large-cheap", "small-costly"])
def test_the_first_shard_decides_who_reads_and_later_runs_keep_it(request, data, fn, workers_read):
    with _serve(request.getfixturevalue(data)) as server, _loader(server, fn) as loader:
        first = list(loader)
        stage = loader.stats()["stages"][0]
        choice = stage["read_choice"]
        assert choice["workers_read"] is workers_read, choice
        assert choice["workers"] == 2 and choice["sample_bytes"] > 0 and choice["fn_s"] >= 0
        second = list(loader)  # the next run is built for the mode chosen, without measuring
        stages = loader.stats()["stages"]
        pools = sorted(name.split(":")[0] for name in loader._runtime.resources)
    names = [s["name"] for s in stages]
    if workers_read:
        assert names == [f"map({fn.__name__})", "batch"] and stages[0]["reads"] == "source", stages
        assert "read_choice" not in stages[0] and pools == ["shard-stream-pool"], pools
    else:
        assert names == ["source", f"map({fn.__name__})", "batch"], names
        assert pools == ["process-pool"], pools  # the measuring run's pool was closed after it
    keys = sorted(key for batch in first for key, _, _ in batch)
    assert keys == sorted(key for batch in second for key, _, _ in batch) == [f"k{i:05d}" for i in range(30)]


@pytest.mark.parametrize(("data", "fn", "workers_read"), CASES, ids=["large-cheap", "small-costly"])
def test_the_data_and_resume_states_are_the_same_whichever_mode_reads(request, data, fn, workers_read):
    with _serve(request.getfixturevalue(data)) as server:
        with _loader(server, fn, executor="thread") as plain:
            expected = [list(plain), list(plain)]  # two epochs: two shard orders
        states = {}
        for mode in (None, True, False):
            with _loader(server, fn, read_in_workers=mode) as loader:
                it = iter(loader)
                head = [next(it) for _ in range(3)]  # 12 samples: inside the second shard
                states[mode] = loader.state_dict()
                assert head + list(it) == expected[0], mode
                assert list(loader) == expected[1], mode
        assert states[None] == states[True] == states[False]
        for mode in (None, True, False):  # a fresh default run measures again from the open shard
            with _loader(server, fn, read_in_workers=mode) as resumed:
                resumed.load_state_dict(states[None])
                assert list(resumed) == expected[0][3:], mode


@pytest.mark.parametrize("missing", [0, 3], ids=["the-measured-shard", "a-later-shard"])
@pytest.mark.parametrize(("data", "fn", "workers_read"), CASES, ids=["large-cheap", "small-costly"])
def test_a_missing_shard_raises_data_not_found_naming_its_url(request, data, fn, workers_read, missing):
    name = f"train-{missing:06d}.tar"
    with _serve(request.getfixturevalue(data)) as server:
        del server.objects[name]
        with _loader(server, fn, shuffle=False) as loader:
            got: list = []
            with pytest.raises(DataNotFoundError, match=name.replace(".", r"\.")):
                for batch in loader:
                    got.extend(key for key, _, _ in batch)
    # the shards before it were handed on whole, and nothing of it or after it
    assert set(got) <= {f"k{i:05d}" for i in range(missing * PER_SHARD)}


def test_a_worker_killed_on_a_chunk_the_parent_read_loses_and_doubles_nothing(small, tmp_path):
    with _serve(small) as server:
        with _loader(server, costly, executor="thread") as plain:
            expected = list(plain)
        killer = CostlyDieOnce(tmp_path / "died", cls=3 * PER_SHARD + 2)
        with _loader(server, killer) as loader:
            got = list(loader)
            assert loader.stats()["stages"][0]["read_choice"]["workers_read"] is False
    assert (tmp_path / "died").exists()
    assert got == expected


def test_a_corrupt_member_is_skipped_and_reported_by_the_source_when_the_parent_reads(small):
    name = "train-000002.tar"
    with _serve(small) as server:
        data = bytearray(server.objects[name])
        data[2048 + 10] ^= 0xFF  # in a member header of the second sample: a bad checksum
        server.objects[name] = bytes(data)
        runs = {}
        for mode in (False, None):
            with _loader(server, costly, read_in_workers=mode, on_error="skip") as loader:
                batches = list(loader)
                errors = [(e["stage"], str(e["key"]), e["type"]) for e in loader.stats()["errors"]]
            runs[mode] = (batches, errors)
    assert runs[None] == runs[False]
    batches, errors = runs[None]
    assert len(errors) == 1 and errors[0][0] == "source" and name in errors[0][1], errors
    assert errors[0][2] == "DataCorruptionError"
