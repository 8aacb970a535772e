"""WebDataset shards over HTTP from a real object server on 127.0.0.1: streaming in a seeded
shard order, rank sharding by shard, exact resume without replaying the epoch, retries on
injected faults, corrupt and missing shards, and the indexable mode (an index's byte ranges)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

import aioloader as al
from aioloader.errors import DataCorruptionError, DataNotFoundError
from aioloader.io import Retry, expand_braces
from tests.object_server import ObjectServer

SHARDS = 6
PER_SHARD = 10
FAST_RETRY = Retry(attempts=4, backoff_s=0.01, max_backoff_s=0.05, timeout_s=2.0)


def _samples(count: int = SHARDS * PER_SHARD) -> list[dict]:
    return [{"__key__": f"k{i:05d}", "bin": os.urandom(300 + i), "cls": i} for i in range(count)]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    al.sources.write_shards(_samples(), str(folder / "train-%06d.tar"), max_count=PER_SHARD)
    return folder


@pytest.fixture
def server(shard_dir):
    with ObjectServer() as srv:
        for name in os.listdir(shard_dir):
            srv.objects[name] = (shard_dir / name).read_bytes()
        yield srv


def _urls(server: ObjectServer) -> str:
    return server.url(f"train-{{000000..{SHARDS - 1:06d}}}.tar")


def _ids(samples) -> list[int]:
    return [int(s["cls"]) for s in samples]


def test_braces_expand_ranges_with_padding_and_lists():
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    assert expand_braces("plain{}") == ["plain{}"]


def test_http_stream_reads_every_sample_once_in_a_seeded_shard_order(server):
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY)
    loader = al.Loader.from_source(ds, shuffle=True, seed=3)
    with loader:
        first = list(loader)
        second = list(loader)
    assert sorted(_ids(first)) == list(range(SHARDS * PER_SHARD))
    assert sorted(_ids(second)) == sorted(_ids(first)) and _ids(second) != _ids(first)
    assert first[0]["__url__"].startswith("http://127.0.0.1")
    with al.Loader.from_source(ds, shuffle=True, seed=3) as again:
        assert _ids(list(again)) == _ids(first)  # deterministic: same seed and epoch
    # whole shards in order: samples of one shard stay together, in shard order
    assert _ids(first)[:PER_SHARD] == sorted(_ids(first)[:PER_SHARD])


def test_each_rank_reads_only_its_own_shards(server):
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY)
    seen, read_by = [], {}
    for rank in range(3):
        server.requests.clear()
        loader = al.Loader.from_source(ds, shuffle=True, rank=rank, world_size=3, shard_policy="uneven")
        with loader:
            seen += _ids(loader)
        read_by[rank] = set(server.requests)
    assert sorted(seen) == list(range(SHARDS * PER_SHARD))  # exactly once over the ranks
    assert all(len(names) == SHARDS // 3 for names in read_by.values())
    assert not read_by[0] & read_by[1] and not read_by[1] & read_by[2]


def test_equal_count_policies_need_an_index_on_a_stream(server):
    ds = al.sources.WebDataset(_urls(server))
    loader = al.Loader.from_source(ds, rank=0, world_size=2)  # shard_policy="drop"
    with loader, pytest.raises(ValueError, match="shard_policy='uneven'"):
        list(loader)


@pytest.mark.parametrize("buffer", [0, 16])
def test_resume_reads_only_from_the_open_shard_on(server, buffer):
    def make():
        loader = al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=FAST_RETRY), shuffle=True, seed=1)
        if buffer:
            loader = loader.shuffle(buffer)
        return loader.batch(4, collate=al.collate.as_list)

    with make() as full:
        expected = [_ids(b) for b in full]
    with make() as first:
        it = iter(first)
        head = [_ids(next(it)) for _ in range(7)]  # 28 samples: inside the third shard
        state = first.state_dict()
    assert head == expected[:7]
    assert state["position"] >= 1 << 32  # the seq names the shard place and the index
    server.requests.clear()
    server.bytes_sent = 0
    with make() as resumed:
        resumed.load_state_dict(state)
        rest = [_ids(b) for b in resumed]
    assert rest == expected[7:]
    if not buffer:  # nothing before the open shard is read again
        total = sum(len(server.objects[n]) for n in server.objects if n.endswith(".tar"))
        assert len(server.requests) <= SHARDS - 2
        assert server.bytes_sent < total * (SHARDS - 1) / SHARDS


def test_retries_500s_resets_truncated_transfers_and_trickles(server):
    names = [f"train-{i:06d}.tar" for i in range(SHARDS)]
    server.faults[names[0]] += ["500", "500"]
    server.faults[names[1]] += ["reset"]
    server.faults[names[2]] += ["truncate"]
    server.faults[names[3]] += ["trickle"]
    retry = Retry(attempts=4, backoff_s=0.01, max_backoff_s=0.05, timeout_s=0.3, min_bytes_per_s=1e6)
    loader = al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=retry))
    with loader:
        got = _ids(loader)
    assert got == list(range(SHARDS * PER_SHARD))
    assert server.requests[names[0]] == 3 and server.requests[names[3]] == 2


def test_persistent_5xx_fails_after_the_retries(server):
    name = "train-000001.tar"
    server.faults[name] += ["500"] * 10
    loader = al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=FAST_RETRY))
    with loader, pytest.raises(Exception, match="500") as info:
        list(loader)
    assert any(name in note for note in getattr(info.value, "__notes__", []))
    assert server.requests[name] == FAST_RETRY.attempts


def test_missing_shard_raises_data_not_found_naming_the_url(server):
    del server.objects["train-000002.tar"]
    loader = al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=FAST_RETRY))
    with loader, pytest.raises(DataNotFoundError, match=r"train-000002\.tar"):
        list(loader)


def test_truncated_shard_raises_corruption_naming_url_and_member(server):
    name = "train-000001.tar"
    server.objects[name] = server.objects[name][:2000]
    loader = al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=FAST_RETRY))
    with loader, pytest.raises(DataCorruptionError, match=r"truncated shard .*train-000001\.tar") as info:
        list(loader)
    url, member = info.value.key
    assert url.endswith(name) and member.startswith("k000")


def test_corrupt_header_is_skipped_and_reported_under_skip(server):
    name = "train-000002.tar"
    data = bytearray(server.objects[name])
    data[2048 + 10] ^= 0xFF  # in the third member's header (members are 1 KiB): a bad checksum
    server.objects[name] = bytes(data)
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, on_error="skip")
    loader = al.Loader.from_source(ds)
    with loader:
        got = _ids(loader)
        errors = loader.stats()["errors"]
    assert len(got) < SHARDS * PER_SHARD and set(range(30, 60)) <= set(got)
    assert len(errors) == 1 and errors[0]["type"] == "DataCorruptionError"
    url, member = errors[0]["key"]
    assert url.endswith(name) and member is not None
    strict = al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=FAST_RETRY))
    with strict, pytest.raises(DataCorruptionError, match="corrupt tar header"):
        list(strict)


def test_indexed_http_shards_global_shuffle_chunks_and_rank_policies(server, shard_dir):
    index = server.url("index.json")
    ds = al.sources.WebDataset(index=index, retry=FAST_RETRY)
    with al.Loader.from_source(ds, shuffle=True, seed=5) as loader:
        got = _ids(loader)
    assert sorted(got) == list(range(SHARDS * PER_SHARD)) and got != sorted(got)
    with al.Loader.from_source(ds, shuffle="chunks", seed=5, chunk_window=2) as loader:
        chunks = _ids(loader)
    assert sorted(chunks) == list(range(SHARDS * PER_SHARD))
    for policy in ("drop", "pad", "uneven"):
        per_rank = []
        for rank in range(4):
            with al.Loader.from_source(ds, shuffle=True, rank=rank, world_size=4, shard_policy=policy) as loader:
                per_rank.append(_ids(loader))
        flat = [k for r in per_rank for k in r]
        if policy == "uneven":
            assert sorted(flat) == list(range(SHARDS * PER_SHARD))
        else:
            assert len({len(r) for r in per_rank}) == 1
            assert set(flat) == set(range(SHARDS * PER_SHARD))  # 60 % 4 == 0: nothing left out


def test_indexed_reads_coalesce_neighbours(server):
    ds = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY)
    with al.Loader.from_source(ds) as loader:  # in order: neighbours read together
        assert _ids(loader) == list(range(SHARDS * PER_SHARD))
    assert sum(server.requests[f"train-{i:06d}.tar"] for i in range(SHARDS)) < SHARDS * PER_SHARD / 2


def test_glob_and_local_paths_and_file_urls(shard_dir):
    for spec in (str(shard_dir / "train-*.tar"), f"file://{shard_dir}/train-{{000000..000005}}.tar"):
        with al.Loader.from_source(al.sources.WebDataset(spec)) as loader:
            assert _ids(loader) == list(range(SHARDS * PER_SHARD))
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        al.sources.WebDataset(str(shard_dir / "nothing-*.tar"))


@pytest.mark.parametrize("form", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_group_as_webdataset_does(tmp_path, form):
    path = tmp_path / "long.tar"
    long_dir = "d" * 120  # past ustar's 100 bytes: a pax header, or a GNU long-name member
    with tarfile.open(path, "w", format=form) as tar:
        for i in range(3):
            for ext, data in (("txt", f"t{i}".encode()), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"{long_dir}/s{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with al.Loader.from_source(al.sources.WebDataset(str(path))) as loader:
        got = list(loader)
    assert [g["__key__"] for g in got] == [f"{long_dir}/s{i}" for i in range(3)]
    assert [g["txt"] for g in got] == [b"t0", b"t1", b"t2"]


def test_local_cache_serves_later_epochs_and_stays_within_its_bytes(server, tmp_path):
    sizes = [len(server.objects[f"train-{i:06d}.tar"]) for i in range(SHARDS)]
    small = int(max(sizes) * 2.5)
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, cache=tmp_path / "small", cache_bytes=small)
    with al.Loader.from_source(ds) as loader:
        assert _ids(loader) == list(range(SHARDS * PER_SHARD))
        assert 0 < ds.cache.used_bytes() <= small  # least recently used shards evicted
        assert _ids(loader) == list(range(SHARDS * PER_SHARD))
    assert ds.cache.used_bytes() <= small
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, cache=tmp_path / "c", cache_bytes=sum(sizes))
    with al.Loader.from_source(ds) as loader:
        first = _ids(loader)
        server.requests.clear()
        again = _ids(loader)
    assert first == again == list(range(SHARDS * PER_SHARD))
    assert sum(server.requests.values()) == 0  # the second epoch came from the cache
    assert not [n for n in os.listdir(tmp_path / "c") if n.startswith(".partial-")]
    # a fresh source (a restart) reuses the same directory
    ds2 = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, cache=tmp_path / "c", cache_bytes=sum(sizes))
    with al.Loader.from_source(ds2) as loader:
        assert _ids(loader) == first
    assert sum(server.requests.values()) == 0


def test_cache_smaller_than_a_shard_is_a_build_time_error(server, tmp_path):
    with pytest.raises(ValueError, match="smaller than shard"):
        al.sources.WebDataset(_urls(server), cache=tmp_path / "c", cache_bytes=1000)
    with pytest.raises(ValueError, match="cache_bytes"):
        al.sources.WebDataset(_urls(server), cache=tmp_path / "c")


def test_obstore_client_streams_retries_and_names_missing_shards(server):
    pytest.importorskip("obstore")
    names = [f"train-{i:06d}.tar" for i in range(SHARDS)]
    server.faults[names[0]] += ["500"]
    server.faults[names[1]] += ["reset"]
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, client="obstore")
    with al.Loader.from_source(ds, shuffle=True, seed=3) as loader:
        got = _ids(loader)
    with al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=FAST_RETRY), shuffle=True, seed=3) as loader:
        assert _ids(loader) == got  # the same order whatever the client
    indexed = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY, client="obstore")
    with al.Loader.from_source(indexed, shuffle=True) as loader:
        assert sorted(_ids(loader)) == list(range(SHARDS * PER_SHARD))
    del server.objects[names[4]]
    loader = al.Loader.from_source(al.sources.WebDataset(_urls(server), retry=FAST_RETRY, client="obstore"))
    with loader, pytest.raises(DataNotFoundError, match=names[4]):
        list(loader)


@pytest.mark.parametrize(("budget_parts", "most"), [(2, 2), (64, None)])
def test_reads_in_flight_are_bounded_by_the_byte_budget(server, budget_parts, most):
    server.latency_s = 0.02
    part = 1024
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, part_size=part, read_budget=budget_parts * part)
    with al.Loader.from_source(ds) as loader:
        assert _ids(loader) == list(range(SHARDS * PER_SHARD))
    if most is not None:
        assert server.max_in_flight <= most
    else:  # many reads in flight on the one event loop, no thread or process per read
        assert server.max_in_flight >= 8


def test_indexed_bad_sample_is_named_or_skipped_alone(server):
    name = "train-000001.tar"
    data = bytearray(server.objects[name])
    data[2 * 2048 + 10] ^= 0xFF  # the header of sample 2 of shard 1 (key 12)
    server.objects[name] = bytes(data)
    strict = al.Loader.from_source(al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY))
    with strict, pytest.raises(DataCorruptionError, match=r"corrupt tar header .*train-000001\.tar"):
        list(strict)
    ds = al.sources.WebDataset(index=server.url("index.json"), retry=FAST_RETRY, on_error="skip")
    with al.Loader.from_source(ds) as loader:
        got = _ids(loader)
        errors = loader.stats()["errors"]
    assert got == [i for i in range(SHARDS * PER_SHARD) if i != 12]  # its neighbours are kept
    assert len(errors) == 1 and errors[0]["key"] == 12


def test_scan_index_makes_the_stream_indexable_on_the_next_run(server, shard_dir, tmp_path):
    scan = tmp_path / "scan" / "index.json"
    everything = list(range(SHARDS * PER_SHARD))
    seen = []
    for rank in range(2):  # each rank scans its own shards into the one file
        ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, scan_index=scan)
        assert ds.offsets is None and ds.__aioloader_source__() is ds  # not every shard scanned yet
        loader = al.Loader.from_source(ds, shuffle=True, seed=1, rank=rank, world_size=2, shard_policy="uneven")
        with loader:
            seen += list(loader)
    assert sorted(_ids(seen)) == everything
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY, scan_index=scan)
    assert ds.offsets is not None and ds.__aioloader_source__() is not ds  # indexable
    written = json.loads((shard_dir / "index.json").read_text())["shards"]
    assert [list(o) for o in ds.offsets] == [s["offsets"] for s in written]  # as write_shards wrote them
    assert ds.sizes == [s["bytes"] for s in written]
    with al.Loader.from_source(ds, shuffle=True, seed=1) as loader:
        again = list(loader)
    assert sorted(_ids(again)) == everything
    assert len({i // PER_SHARD for i in _ids(again)[:PER_SHARD]}) > 1  # a global shuffle, by ranged reads
    content = {int(s["cls"]): s["bin"] for s in seen}
    assert all(content[int(s["cls"])] == s["bin"] for s in again)


def test_scan_index_must_be_a_local_file(server):
    with pytest.raises(ValueError, match="scan_index must be a local path"):
        al.sources.WebDataset(_urls(server), scan_index="s3://bucket/index.json")


def test_indexed_reads_use_the_cache_and_fill_it_with_whole_shards(server, tmp_path):
    sizes = [len(server.objects[f"train-{i:06d}.tar"]) for i in range(SHARDS)]
    cache = {"cache": tmp_path / "c", "cache_bytes": sum(sizes)}
    index = server.url("index.json")

    def shard_requests() -> int:
        return sum(n for name, n in server.requests.items() if name.endswith(".tar"))

    chunks = al.sources.WebDataset(index=index, retry=FAST_RETRY, **cache)
    with al.Loader.from_source(chunks, shuffle="chunks", chunk_window=1, seed=2) as loader:
        first = list(loader)  # each shard's samples read together: the whole shard, then kept
        server.requests.clear()
        again = _ids(loader)
    assert sorted(_ids(first)) == sorted(again) == list(range(SHARDS * PER_SHARD))
    assert chunks.cache.used_bytes() == sum(sizes)
    assert shard_requests() == 0  # the second epoch came from the cache
    # a global shuffle of single-sample reads after a restart: every read from the cache
    shuffled = al.sources.WebDataset(index=index, retry=FAST_RETRY, **cache)
    with al.Loader.from_source(shuffled, shuffle=True, seed=2) as loader:
        samples = list(loader)
    assert shard_requests() == 0
    content = {int(s["cls"]): s["bin"] for s in first}
    assert sorted(_ids(samples)) == list(range(SHARDS * PER_SHARD))
    assert all(content[int(s["cls"])] == s["bin"] for s in samples)


def test_shard_sizes_are_looked_up_ahead_together(server):
    server.latency_s = 0.05  # each HEAD a round trip, as in object storage
    ds = al.sources.WebDataset(_urls(server), retry=FAST_RETRY)
    with al.Loader.from_source(ds) as loader:
        assert _ids(loader) == list(range(SHARDS * PER_SHARD))
    assert server.max_heads_in_flight > 1  # not one HEAD per shard, each waiting for the last


async def test_the_runs_first_part_is_short(server):
    from aioloader.io.prefetch import ShardPrefetcher
    from aioloader.io.store import ObjectStore

    part, first = 8192, 1024
    names = [f"train-{i:06d}.tar" for i in range(2)]
    store = ObjectStore(retry=FAST_RETRY)
    try:
        async with ShardPrefetcher(
            store, [server.url(n) for n in names], part_size=part, budget=1 << 20, max_requests=8, first_part=first
        ) as prefetcher:
            lengths = []
            while (entry := await prefetcher.next_part()) is not None:
                if entry[1] is not None:
                    lengths.append((entry[0], len(entry[1])))
                    await prefetcher.release(len(entry[1]))
    finally:
        await store.aclose()
    sizes = [len(server.objects[n]) for n in names]
    assert sizes[0] > part
    assert [n for s, n in lengths if s == 0][:2] == [first, part - first]  # 1 KiB, then the part's rest
    assert next(n for s, n in lengths if s == 1) == part  # later shards: whole parts
    assert sum(n for s, n in lengths if s == 0) == sizes[0]
