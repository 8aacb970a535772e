"""An indexed WebDataset under a global shuffle reads ahead of the consumer along the run's
order (:mod:`aioloader.io.read_ahead`): several requests in flight, neighbours joined into one
request with no byte read twice, the read-ahead bounded by its byte budget, exact and resumable
as any indexed source, and stopped with every task and connection at close."""

from __future__ import annotations

import asyncio
import itertools
import os

import psutil
import pytest

import aioloader as al
from aioloader.errors import DataNotFoundError
from aioloader.io import Retry
from aioloader.io.read_ahead import ReadAhead
from aioloader.io.store import ObjectStore
from tests.object_server import ObjectServer

SHARDS, PER_SHARD, SAMPLE = 4, 8, 2048  # each sample: a 512-byte header and 1536 bytes of data
FAST_RETRY = Retry(attempts=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=5.0)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ahead")
    samples = [{"__key__": f"k{i:04d}", "bin": os.urandom(1000 + i), "cls": i} for i in range(SHARDS * PER_SHARD)]
    al.sources.write_shards(samples, str(folder / "part-%04d.tar"), max_count=PER_SHARD)
    return folder


@pytest.fixture
def server(shard_dir):
    with ObjectServer() as srv:
        for name in os.listdir(shard_dir):
            srv.objects[name] = (shard_dir / name).read_bytes()
        yield srv


def _ids(samples) -> list[int]:
    return [int(s["cls"]) for s in samples]


def _shard_bytes(server: ObjectServer) -> int:
    return sum(len(data) for name, data in server.objects.items() if name.endswith(".tar"))


def _sample_bytes(server: ObjectServer) -> int:
    ds = al.sources.WebDataset(index=server.url("index.json"))
    return max(int(b - a) for offsets in ds.offsets for a, b in itertools.pairwise(offsets))


def test_shuffled_indexed_reads_keep_several_requests_in_flight(server):
    server.latency_s = 0.05
    one = _sample_bytes(server)  # requests of one sample each: none joined
    ds = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY, part_size=one, max_requests=8)
    with al.Loader.from_source(ds, shuffle=True, seed=1) as loader:
        got = _ids(loader)
    assert sorted(got) == list(range(SHARDS * PER_SHARD)) and got != sorted(got)
    assert 6 <= server.max_in_flight <= 8  # counted at the server, bounded by max_requests


def test_shuffled_indexed_reads_join_neighbours_along_the_order(server):
    # two requests at a time: the read stage alone would read one sample per request; read
    # ahead along the order, every sample of a shard is admitted before its turn, and joined
    ds = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY, max_requests=2)
    server.bytes_sent = 0
    server.requests.clear()  # the index's read
    with al.Loader.from_source(ds, shuffle=True, seed=2) as loader:
        got = _ids(loader)
    assert sorted(got) == list(range(SHARDS * PER_SHARD))
    assert sum(server.requests.values()) <= 2 * SHARDS  # 32 samples, one request each without
    data = sum(int(o[-1] - o[0]) for o in ds.offsets)
    assert server.bytes_sent == data  # no byte read twice, none between two samples


def test_shuffled_indexed_run_is_deterministic_padded_and_resumes_exactly(server):
    ds = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY, read_budget=3 * SAMPLE)

    def make(rank: int = 0, world: int = 1, policy: str = "uneven") -> al.Loader:
        loader = al.Loader.from_source(ds, shuffle=True, seed=4, rank=rank, world_size=world, shard_policy=policy)
        return loader.shuffle(5).batch(3, collate=al.collate.as_list)

    with make() as loader:
        whole = [_ids(b) for b in loader]
    assert sorted(k for b in whole for k in b) == list(range(SHARDS * PER_SHARD))
    with make() as loader:
        it = iter(loader)
        head = [_ids(next(it)) for _ in range(4)]
        state = loader.state_dict()
    server.bytes_sent = 0
    with make() as loader:
        loader.load_state_dict(state)
        assert head + [_ids(b) for b in loader] == whole
    assert server.bytes_sent < _shard_bytes(server)  # not the epoch again
    padded = []
    for rank in range(3):  # 32 keys over 3 ranks: one key read twice, by a padded rank
        with make(rank, 3, "pad") as loader:
            padded.append([k for b in loader for k in _ids(b)])
    assert len({len(r) for r in padded}) == 1 and set().union(*padded) == set(range(SHARDS * PER_SHARD))


async def test_read_ahead_stays_within_its_byte_budget(server):
    ds = al.sources.WebDataset(index=server.url("index.json"))
    spans = []
    for url, offsets in zip(ds.urls, ds.offsets, strict=True):
        spans += [(len(spans), url, int(offsets[j]), int(offsets[j + 1])) for j in range(PER_SHARD)]
    biggest = max(end - start for _, _, start, end in spans)
    store = ObjectStore(retry=FAST_RETRY)
    server.latency_s = 0.02
    ahead = ReadAhead(store, iter(spans), budget=3 * biggest, max_requests=64, max_request_bytes=biggest)
    most = 0
    try:
        for key, url, start, end in spans:
            data = await ahead.take(key)
            most = max(most, ahead.held)
            assert data == server.objects[url.rsplit("/", 1)[1]][start:end]
            assert ahead.held <= 3 * biggest
    finally:
        await ahead.aclose()
        await store.aclose()
    assert server.max_in_flight <= 3  # three samples' bytes: three requests at most
    assert most > biggest  # it did read ahead


def _client_sockets(port: int) -> list:
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]


async def test_read_ahead_stops_at_close_without_tasks_or_connections(server):
    server.latency_s = 0.05
    one = _sample_bytes(server)
    ds = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY, part_size=one, read_budget=8 * one)
    loader = al.Loader.from_source(ds, shuffle=True, seed=3).batch(4)
    async with loader:
        async for _ in loader:
            assert sum(server.requests.values()) > 4  # it read ahead of this batch
            break
    for _ in range(20):  # the async generator's finaliser runs on the loop
        await asyncio.sleep(0)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not [n for n in names if n.startswith(("aioloader-read", "aioloader:"))]
    assert not _client_sockets(server.port)  # the read-ahead's connections were closed
    assert sum(server.requests.values()) < SHARDS * PER_SHARD  # and it read no further


async def test_a_key_outside_the_plan_is_left_to_the_caller(server):
    ds = al.sources.WebDataset(index=server.url("index.json"))
    url, offsets = ds.urls[0], ds.offsets[0]
    spans = [(key, url, int(offsets[key]), int(offsets[key + 1])) for key in (0, 1)]
    store = ObjectStore(retry=FAST_RETRY)
    ahead = ReadAhead(store, iter(spans), budget=1 << 20, max_requests=4, max_request_bytes=1 << 20)
    try:
        assert await ahead.take(0) == server.objects[url.rsplit("/", 1)[1]][spans[0][2] : spans[0][3]]
        assert await ahead.take(7) is None  # the plan is over: the source reads it itself
    finally:
        await ahead.aclose()
        await store.aclose()
    assert sum(server.requests.values()) - server.requests["index.json"] == 1  # 0 and 1: one request


def test_a_missing_shard_read_ahead_is_named_or_its_samples_skipped(server):
    del server.objects["part-0002.tar"]
    ds = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY)
    with al.Loader.from_source(ds, shuffle=True, seed=6) as loader, pytest.raises(DataNotFoundError, match="part-0002"):
        list(loader)
    skipping = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY, on_error="skip")
    with al.Loader.from_source(skipping, shuffle=True, seed=6) as loader:
        got = _ids(loader)
        errors = loader.stats()["errors"]
    assert sorted(got) == [i for i in range(SHARDS * PER_SHARD) if i // PER_SHARD != 2]
    assert len(errors) == PER_SHARD  # each of its samples reported by its key


@pytest.fixture
def parquet_server(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with ObjectServer() as srv:
        for shard in range(4):  # 4 files of 4 row groups of 8 rows
            ids = list(range(shard * 32, shard * 32 + 32))
            table = pa.table({"id": ids, "x": [bytes([i % 256]) * 2000 for i in ids]})
            path = tmp_path / f"p{shard}.parquet"
            pq.write_table(table, path, row_group_size=8, compression="none")
            srv.objects[path.name] = path.read_bytes()
        yield srv


def test_shuffled_indexed_parquet_reads_each_row_group_once_ahead_with_requests_in_flight(parquet_server):
    srv = parquet_server
    urls = [srv.url(f"p{i}.parquet") for i in range(4)]
    ds = al.sources.ParquetShards(urls, indexed=True, retry=FAST_RETRY, max_requests=4)
    srv.latency_s = 0.05
    srv.requests.clear()
    srv.max_in_flight = 0
    with al.Loader.from_source(ds, shuffle=True, seed=1).batch(4, collate=al.collate.as_list) as loader:
        got = [row["id"] for batch in loader for row in batch]
    assert sorted(got) == list(range(128)) and got != sorted(got)
    # along the order, every row of a row group is admitted before its turn: each of the 16 row
    # groups read once (one GET each: pyarrow joins the columns' ranges), and each file's footer
    # once or twice (the run's loop reads it again); read a block of keys at a time, the 4-row-
    # group cache read each one again and again (103 GETs in a run like this one)
    assert sum(srv.requests.values()) <= 16 + 2 * 4
    assert 2 <= srv.max_in_flight <= 4  # counted at the server, bounded by max_requests


@pytest.mark.parametrize("budget", [40, 30])
async def test_unit_read_ahead_holds_units_within_its_budget_and_reads_one_again_only_after_it_left(budget):
    from aioloader.io.read_ahead import UnitReadAhead

    reads: list[int] = []
    in_flight = [0, 0]  # now, most

    async def read(unit: int) -> str:
        reads.append(unit)
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0.001)
        in_flight[0] -= 1
        return f"unit {unit}"

    order = [0, 1, 0, 2, 1, 3, 0, 3, 2, 4, 5, 4]  # key k is in unit order[k]
    keys = ((key, unit, 10) for key, unit in enumerate(order))
    ahead = UnitReadAhead(keys, read, budget=budget, max_requests=2)
    most = 0
    try:
        for key, unit in enumerate(order):
            assert await ahead.take(key) == f"unit {unit}"
            most = max(most, ahead.held)
            assert ahead.held <= budget
        assert await ahead.take(99) is None  # outside the plan: the caller reads it
    finally:
        await ahead.aclose()
    assert most == budget and in_flight[1] <= 2
    if budget == 40:  # units 0-3 and all their keys fit: each is held until its last key, read once
        assert reads[:4] == [0, 1, 2, 3] and sorted(set(reads[4:])) == [4, 5]
    else:  # unit 0 leaves at key 2 (unit 3 needs the room) and is read again for key 6
        assert reads[:5] == [0, 1, 2, 3, 0] and sorted(set(reads)) == [0, 1, 2, 3, 4, 5]
