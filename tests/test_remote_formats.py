"""JSONL/text shards (plain, gzip, zstd) and Parquet shards over HTTP from the test object
server: every row once in a seeded shard order, selected columns, exact resume, corrupt data
named by URL and line."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest

import aioloader as al
from aioloader.errors import DataCorruptionError
from aioloader.io import Retry
from tests.object_server import ObjectServer

RETRY = Retry(attempts=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=2.0)
ROWS = 12


def _jsonl(shard: int) -> bytes:
    return b"".join(json.dumps({"id": shard * ROWS + i, "text": f"row {i}"}).encode() + b"\n" for i in range(ROWS))


@pytest.fixture
def server():
    zstd = pytest.importorskip("zstandard")
    with ObjectServer() as srv:
        srv.objects["part-0.jsonl"] = _jsonl(0)
        srv.objects["part-1.jsonl.gz"] = gzip.compress(_jsonl(1))
        srv.objects["part-2.jsonl.zst"] = zstd.ZstdCompressor().compress(_jsonl(2))
        srv.objects["part-3.jsonl"] = _jsonl(3)[:-1]  # no newline after the last line
        yield srv


def _urls(srv: ObjectServer) -> list[str]:
    return [srv.url(n) for n in ("part-0.jsonl", "part-1.jsonl.gz", "part-2.jsonl.zst", "part-3.jsonl")]


def test_jsonl_plain_gzip_zstd_every_row_once_and_resume(server):
    def make():
        ds = al.sources.JsonLinesShards(_urls(server), retry=RETRY, part_size=100)
        return al.Loader.from_source(ds, shuffle=True, seed=4).batch(5, collate=al.collate.as_list)

    with make() as loader:
        full = [[r["id"] for r in b] for b in loader]
    assert sorted(i for b in full for i in b) == list(range(4 * ROWS))
    with make() as loader:
        it = iter(loader)
        head = [[r["id"] for r in next(it)] for _ in range(4)]
        state = loader.state_dict()
    with make() as loader:
        loader.load_state_dict(state)
        assert head + [[r["id"] for r in b] for b in loader] == full


def test_text_shards_and_a_bad_json_line_named_by_url_and_line(server):
    with al.Loader.from_source(al.sources.TextShards(_urls(server)[:1], retry=RETRY)) as loader:
        assert list(loader)[2] == json.dumps({"id": 2, "text": "row 2"})
    server.objects["part-0.jsonl"] = _jsonl(0).replace(b'{"id": 5,', b'{"id": 5')
    loader = al.Loader.from_source(al.sources.JsonLinesShards(_urls(server), retry=RETRY))
    with loader, pytest.raises(DataCorruptionError, match=r"part-0\.jsonl: line 6 is not JSON") as info:
        list(loader)
    assert info.value.key[1] == 6
    skipping = al.Loader.from_source(al.sources.JsonLinesShards(_urls(server), retry=RETRY, on_error="skip"))
    with skipping:
        got = [r["id"] for r in skipping]
        assert len(skipping.stats()["errors"]) == 1
    assert got[:5] == [0, 1, 2, 3, 4] and set(range(ROWS, 4 * ROWS)) <= set(got)


def test_parquet_row_groups_and_selected_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with ObjectServer() as srv:
        for shard in range(3):
            table = pa.table(
                {
                    "id": list(range(shard * 10, shard * 10 + 10)),
                    "x": [float(i) for i in range(10)],
                    "big": [bytes([i]) * 60_000 for i in range(10)],  # weighs; pyarrow reads 64 KiB of footer
                }
            )
            path = tmp_path / f"p{shard}.parquet"
            pq.write_table(table, path, row_group_size=4, compression="none")
            srv.objects[path.name] = path.read_bytes()
        srv.objects["broken.parquet"] = b"PAR1 not really a parquet file PAR1"
        urls = [srv.url(f"p{i}.parquet") for i in range(3)]
        ds = al.sources.ParquetShards(urls, columns=["id", "x"], retry=RETRY)
        with al.Loader.from_source(ds, rank=1, world_size=2, shard_policy="uneven") as loader:
            rank1 = list(loader)
        with al.Loader.from_source(ds, rank=0, world_size=2, shard_policy="uneven") as loader:
            rank0 = list(loader)
        assert sorted(r["id"] for r in rank0 + rank1) == list(range(30))
        assert set(rank0[0]) == {"id", "x"}
        total = sum(len(srv.objects[f"p{i}.parquet"]) for i in range(3))
        assert srv.bytes_sent < total / 4  # the "big" column was never fetched
        with al.Loader.from_source(al.sources.ParquetShards(urls, retry=RETRY), shuffle=True) as loader:
            rows = list(loader)
        assert len(rows) == 30 and rows[0]["big"] == bytes([int(rows[0]["x"])]) * 60_000
        broken = al.Loader.from_source(al.sources.ParquetShards(srv.url("broken.parquet"), retry=RETRY))
        with broken, pytest.raises(DataCorruptionError, match=r"broken\.parquet"):
            list(broken)
        missing = al.Loader.from_source(al.sources.ParquetShards(srv.url("nope.parquet"), retry=RETRY))
        with missing, pytest.raises(al.DataNotFoundError, match=r"nope\.parquet"):
            list(missing)


@pytest.fixture
def parquet_server(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with ObjectServer() as srv:
        for shard in range(3):
            ids = list(range(shard * 10, shard * 10 + 10))
            table = pa.table({"id": ids, "big": [bytes([i % 256]) * 60_000 for i in ids]})
            path = tmp_path / f"p{shard}.parquet"
            pq.write_table(table, path, row_group_size=4, compression="none")  # row groups of 4, 4, 2
            srv.objects[path.name] = path.read_bytes()
        yield srv


def _row_group(row_id: int) -> tuple[int, int]:
    return row_id // 10, row_id % 10 // 4


def test_parquet_indexed_global_shuffle_chunks_ranks_and_resume(parquet_server):
    srv = parquet_server
    urls = [srv.url(f"p{i}.parquet") for i in range(3)]
    ds = al.sources.ParquetShards(urls, columns=["id"], indexed=True, retry=RETRY)
    assert ds.row_groups == [[4, 4, 2]] * 3 and len(ds.__aioloader_source__()) == 30

    def make(**options):
        loader = al.Loader.from_source(ds, seed=5, **options)
        return loader.batch(4, collate=al.collate.as_list)

    srv.bytes_sent = 0
    with make(shuffle=True) as loader:
        full = [[r["id"] for r in b] for b in loader]
    ids = [i for b in full for i in b]
    assert sorted(ids) == list(range(30))
    assert len({i // 10 for i in ids[:10]}) > 1  # a global order, not file by file
    assert srv.bytes_sent < sum(len(srv.objects[f"p{i}.parquet"]) for i in range(3)) / 4  # "big" never read
    with make(shuffle=True) as loader:
        it = iter(loader)
        head = [[r["id"] for r in next(it)] for _ in range(3)]
        state = loader.state_dict()
    with make(shuffle=True) as loader:
        loader.load_state_dict(state)
        assert head + [[r["id"] for r in b] for b in loader] == full  # exact resume

    with make(shuffle="chunks", chunk_window=1) as loader:
        chunked = [r["id"] for b in loader for r in b]
    groups = [_row_group(i) for i in chunked]
    runs = 1 + sum(a != b for a, b in itertools.pairwise(groups))
    assert sorted(chunked) == list(range(30)) and runs == 9  # a row group is a chunk: its rows together

    per_rank = []
    for rank in range(2):
        with make(shuffle=True, rank=rank, world_size=2, shard_policy="drop") as loader:
            per_rank.append([r["id"] for b in loader for r in b])
    assert len(per_rank[0]) == len(per_rank[1]) == 15 and not set(per_rank[0]) & set(per_rank[1])


def test_parquet_indexed_names_a_missing_column_or_file_at_build(parquet_server):
    srv = parquet_server
    with pytest.raises(ValueError, match=r"p0\.parquet: no column \['nope'\]"):
        al.sources.ParquetShards(srv.url("p0.parquet"), columns=["nope"], indexed=True, retry=RETRY)
    with pytest.raises(al.DataNotFoundError, match=r"gone\.parquet"):
        al.sources.ParquetShards(srv.url("gone.parquet"), indexed=True, retry=RETRY)
    srv.objects["bad.parquet"] = b"PAR1 not really a parquet file PAR1"
    with pytest.raises(DataCorruptionError, match=r"bad\.parquet: not a readable Parquet file"):
        al.sources.ParquetShards(srv.url("bad.parquet"), indexed=True, retry=RETRY)
