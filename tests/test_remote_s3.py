"""``s3://`` shards from moto's S3 server (``ThreadedMotoServer`` on 127.0.0.1, a free port):
streaming, resume, the indexable mode through an index stored in the bucket, globs."""

from __future__ import annotations

import os

import pytest

import aioloader as al
from aioloader.errors import DataNotFoundError
from aioloader.io import Retry

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

SHARDS, PER_SHARD = 4, 8
RETRY = Retry(attempts=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=5.0)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3shards")
    samples = [{"__key__": f"k{i:04d}", "bin": os.urandom(200 + i), "cls": i} for i in range(SHARDS * PER_SHARD)]
    al.sources.write_shards(samples, str(folder / "train-%06d.tar"), max_count=PER_SHARD)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, **credentials)
    client.create_bucket(Bucket="data")
    for name in os.listdir(folder):
        client.put_object(Bucket="data", Key=f"train/{name}", Body=(folder / name).read_bytes())
    options = {"s3": {"endpoint_url": endpoint, "key": "test", "secret": "test"}}
    try:
        yield options
    finally:
        server.stop()


def _ids(loader) -> list[int]:
    return [int(s["cls"]) for s in loader]


def test_s3_stream_resume_and_glob(s3):
    url = f"s3://data/train/train-{{000000..{SHARDS - 1:06d}}}.tar"

    def make():
        ds = al.sources.WebDataset(url, storage_options=s3, retry=RETRY)
        return al.Loader.from_source(ds, shuffle=True, seed=2).batch(5, collate=al.collate.as_list)

    with make() as loader:
        expected = [[int(s["cls"]) for s in b] for b in loader]
    assert sorted(k for b in expected for k in b) == list(range(SHARDS * PER_SHARD))
    with make() as loader:
        it = iter(loader)
        head = [[int(s["cls"]) for s in next(it)] for _ in range(3)]
        state = loader.state_dict()
    with make() as loader:
        loader.load_state_dict(state)
        rest = [[int(s["cls"]) for s in b] for b in loader]
    assert head + rest == expected
    globbed = al.sources.WebDataset("s3://data/train/*.tar", storage_options=s3, retry=RETRY)
    assert len(globbed.urls) == SHARDS and globbed.urls[0].startswith("s3://data/train/")


def test_s3_indexed_global_shuffle(s3):
    ds = al.sources.WebDataset(index="s3://data/train/index.json", storage_options=s3, retry=RETRY)
    with al.Loader.from_source(ds, shuffle=True, seed=1) as loader:
        got = _ids(loader)
    assert sorted(got) == list(range(SHARDS * PER_SHARD)) and got != sorted(got)


def test_s3_missing_object_raises_data_not_found(s3):
    ds = al.sources.WebDataset("s3://data/train/absent-000000.tar", storage_options=s3, retry=RETRY)
    loader = al.Loader.from_source(ds)
    with loader, pytest.raises(DataNotFoundError, match=r"s3://data/train/absent-000000\.tar"):
        list(loader)


def test_s3_through_obstore(s3):
    pytest.importorskip("obstore")
    endpoint = s3["s3"]["endpoint_url"]
    options = {
        "s3": {
            "endpoint": endpoint,
            "access_key_id": "test",
            "secret_access_key": "test",
            "region": "us-east-1",
            "client_options": {"allow_http": True},
        }
    }
    url = f"s3://data/train/train-{{000000..{SHARDS - 1:06d}}}.tar"
    ds = al.sources.WebDataset(url, storage_options=options, retry=RETRY, client="obstore")
    with al.Loader.from_source(ds) as loader:
        assert _ids(loader) == list(range(SHARDS * PER_SHARD))
