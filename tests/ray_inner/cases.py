"""``executor="ray"`` on a real two-node Ray cluster (``conftest.cluster``): the same batches as
``executor="process"``, every key once, through an actor killed with ``ray.kill``, a node
removed mid-epoch, a hung sample under ``timeout``, ``close()`` and a trainer that dies.

Run by ``tests/test_ray.py`` inside ``unshare -n`` (loopback only); the file name keeps the main
run from collecting it."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

import aioloader as al
from aioloader.transforms import decode_image
from tests.object_server import ObjectServer
from tests.ray_inner.conftest import NODE

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors need not import tests/

N = 96
SPREAD = {"scheduling_strategy": "SPREAD"}


def square(x: int) -> np.ndarray:
    return np.full(4, x * x, dtype=np.int64)


def slow_square(x: int) -> np.ndarray:
    time.sleep(0.02)
    return square(x)


class HangOn:
    """``square``, but sample ``key`` sleeps far past any timeout."""

    def __init__(self, key: int) -> None:
        self.key = key

    def __call__(self, x: int) -> np.ndarray:
        if x == self.key:
            time.sleep(120)
        return square(x)


def fails_on_5(x: int) -> np.ndarray:
    if x % 10 == 5:
        raise ValueError(f"bad sample {x}")
    return square(x)


def _loader(fn, executor: str, *, batch: int = 8, **options) -> al.Loader:
    options.setdefault("concurrency", 2)
    if executor == "ray":
        options.setdefault("ray_options", SPREAD)
    return (
        al.Loader.from_source(list(range(N)), shuffle=True, seed=3)
        .map(fn, executor=executor, **options)
        .batch(batch)
    )


def _run(loader: al.Loader) -> list[np.ndarray]:
    return [b.numpy().copy() for b in loader]


def _actors_gone(names: list[str], within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = []
        for name in names:
            try:
                ray.get_actor(name)
                alive.append(name)
            except ValueError:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _actors(loader: al.Loader, stage: str) -> list[dict]:
    (entry,) = [s for s in loader.stats()["stages"] if s["name"] == stage]
    return entry["actors"]


@pytest.fixture(scope="module")
def expected() -> list[np.ndarray]:
    """The batches of the process executor: what every Ray run must give."""
    with _loader(square, "process") as loader:
        return _run(loader)


def _same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    keys = sorted(int(v) for b in got for v in b[:, 0])
    assert keys == sorted({k * k for k in range(N)}), "a sample lost or doubled"


def test_same_batches_as_process_on_two_nodes(cluster, expected) -> None:
    loader = _loader(square, "ray")
    with loader:
        got = _run(loader)
        stats = loader.stats()
        (stage,) = [s for s in stats["stages"] if s["executor"] == "ray"]
        names = [a["actor"] for a in stage["actors"]]
        assert stage["fused"] is not None  # map + collate in the actor
        assert len({a["node"] for a in stage["actors"]}) == 2  # one actor on each node
        assert sum(a["chunks"] for a in stage["actors"]) > 0, stage["actors"]
        assert stats["bottleneck"] is not None
        assert "map(square): 2 Ray actor(s) on " in loader.report()
        again = _run(loader)  # second epoch: the same actors, a new order
    _same(got, expected)
    assert not all(np.array_equal(a, b) for a, b in zip(again, got, strict=True))
    assert _actors_gone(names), "close() left actors alive"


def sleepy_square(x: int) -> np.ndarray:
    time.sleep(0.01)
    return square(x)


def test_later_epochs_size_chunks_by_the_cost_timed_before(cluster) -> None:
    """Before: every epoch sent single-block chunks (one batch a call, four calls in flight)
    until it had timed one of its own, and each actor call costs the driver milliseconds of
    Ray's CPU. Now an epoch after the first sizes its chunks by the cost the actors timed
    before (the pool outlives the epoch): only its first chunk is a single block."""
    with _loader(sleepy_square, "ray", batch=4) as loader:
        first = _run(loader)
        calls = [sum(a["chunks"] for a in _actors(loader, "map(sleepy_square)"))]
        second = _run(loader)
        calls.append(sum(a["chunks"] for a in _actors(loader, "map(sleepy_square)")) - calls[0])
    for got in (first, second):
        assert sorted(int(v) for b in got for v in b[:, 0]) == sorted(k * k for k in range(N))
    # 24 batches of ~40 ms: 4 single-block calls, then chunks of several batches; later, 1
    assert calls[1] < calls[0], calls


def wide_square(x: int) -> np.ndarray:
    return np.full(2048, x * x, dtype=np.int64)  # batches of 128 KB: views, not copies


def test_kept_batches_are_writable_views(cluster, expected) -> None:
    """A batch views the driver node's object store (not a copy): kept past its epoch and
    written in place, it holds what the process executor gives."""
    with _loader(wide_square, "ray") as loader:
        kept = list(loader)
        for batch in kept:
            batch += 1
    _same([b.numpy()[:, :4] - 1 for b in kept], expected)


def test_skip_policy_as_threads(cluster) -> None:
    options = {"on_error": "skip", "max_failures": 20}
    with _loader(fails_on_5, "thread", **options) as loader:
        expected = _run(loader)
    with _loader(fails_on_5, "ray", **options) as loader:
        got = _run(loader)
        errors = loader.stats()["errors"]
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(e["key"] for e in errors) == [k for k in range(N) if k % 10 == 5]
    with (
        _loader(fails_on_5, "ray", on_error="skip", max_failures=2) as loader,
        pytest.raises(al.errors.TooManyFailures),
    ):
        _run(loader)


def test_worker_init_and_read_fusion(cluster, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(24):
        folder = tmp_path / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")

    def run(executor: str) -> list:
        options = {"ray_options": SPREAD} if executor == "ray" else {}
        loader = (
            al.Loader.from_source(al.sources.ImageFolder(tmp_path), shuffle=True, seed=1)
            .map(decode_image(size=8), executor=executor, concurrency=2, worker_init=print, **options)
            .batch(4)
        )
        with loader:
            out = [(x.clone(), y.tolist()) for x, y in loader]
            (stage,) = [s for s in loader.stats()["stages"] if s["name"].startswith("map")]
            assert stage["reads"] == "read", stage  # the actors read the files
        return out

    got, expected = run("ray"), run("process")
    assert len(got) == len(expected) == 6
    for (a, la), (b, lb) in zip(got, expected, strict=True):
        assert torch.equal(a, b) and la == lb


def cls_of(sample: dict) -> int:
    return int(sample["cls"])


def test_indexed_shards_read_by_the_actors(cluster, tmp_path: Path) -> None:
    samples = [{"__key__": f"k{i:04d}", "bin": os.urandom(200 + i), "cls": i} for i in range(40)]
    al.sources.write_shards(samples, str(tmp_path / "s-%06d.tar"), max_count=10)

    def run(executor: str, url: str) -> list[int]:
        options = {"ray_options": SPREAD} if executor == "ray" else {}
        source = al.sources.WebDataset(index=url)
        loader = al.Loader.from_source(source, shuffle=True, seed=2).map(
            cls_of, executor=executor, concurrency=2, **options
        )
        with loader:
            out = list(loader)
            (stage,) = [s for s in loader.stats()["stages"] if s["name"].startswith("map")]
        # the actors fetched the byte ranges; processes leave the reads to the loop
        assert stage["reads"] == ("read" if executor == "ray" else None), stage
        return out

    with ObjectServer() as server:  # on 127.0.0.1, which the namespace's nodes share
        for path in tmp_path.iterdir():
            server.objects[path.name] = path.read_bytes()
        got, expected = run("ray", server.url("index.json")), run("process", server.url("index.json"))
    assert got == expected and sorted(got) == list(range(40))


def id_of(row: dict) -> int:
    return int(row["id"])


def test_indexed_parquet_read_by_the_actors(cluster, tmp_path: Path) -> None:
    """Before: an indexed ParquetShards offered no worker reader, so its rows passed through
    the trainer on their way to the actors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def run(executor: str, urls: list[str]) -> list[int]:
        options = {"ray_options": SPREAD} if executor == "ray" else {}
        source = al.sources.ParquetShards(urls, indexed=True)
        loader = al.Loader.from_source(source, shuffle=True, seed=2).map(
            id_of, executor=executor, concurrency=2, **options
        )
        with loader:
            out = list(loader)
            (stage,) = [s for s in loader.stats()["stages"] if s["name"].startswith("map")]
        assert stage["reads"] == ("read" if executor == "ray" else None), stage
        return out

    with ObjectServer() as server:
        for shard in range(3):
            ids = list(range(shard * 20, shard * 20 + 20))
            path = tmp_path / f"p{shard}.parquet"
            pq.write_table(pa.table({"id": ids, "blob": [os.urandom(100) for _ in ids]}), path, row_group_size=8)
            server.objects[path.name] = path.read_bytes()
        urls = [server.url(f"p{shard}.parquet") for shard in range(3)]
        got, expected = run("ray", urls), run("process", urls)
    assert got == expected and sorted(got) == list(range(60))


class PidDataset(torch.utils.data.Dataset):
    """A user's map-style dataset: each item says which process ran ``__getitem__``."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, key: int) -> tuple[int, int]:
        return key, os.getpid()


def key_and_reader(item: tuple[int, int]) -> tuple[int, int]:
    return item


def test_a_users_dataset_is_read_by_the_actors(cluster) -> None:
    loader = al.Loader.from_source(PidDataset(), shuffle=True, seed=4).map(
        key_and_reader, executor="ray", concurrency=2, ray_options=SPREAD
    )
    with loader:
        items = list(loader)
        pids = {a["pid"] for a in _actors(loader, "map(key_and_reader)")}
    assert sorted(key for key, _ in items) == list(range(40))
    assert {pid for _, pid in items} <= pids and os.getpid() not in pids


class StallOneActor:
    """``slow_square``, but the first actor to run a sample (``claim_by="pid"``) or the first one
    on a node other than ``head`` (``claim_by="node"``) writes its pid or node id to ``claim``,
    and every sample there hangs (up to 120 s: until the test kills that actor or removes that
    node). Samples elsewhere wait for the claim: so the actor or node the test ends always holds
    work to redo, however fast or slow the actors started."""

    def __init__(self, claim: Path, *, claim_by: str, head: str = "") -> None:
        self.claim = claim
        self.claim_by = claim_by
        self.head = head

    def __call__(self, x: int) -> np.ndarray:
        node = ray.get_runtime_context().get_node_id()
        me = str(os.getpid()) if self.claim_by == "pid" else node
        if node != self.head:
            try:
                fd = os.open(self.claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, me.encode())
                os.close(fd)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            claimed = _claimed(self.claim)
            if claimed and claimed != me:
                break
            time.sleep(0.02)
        return slow_square(x)


def _claimed(claim: Path) -> str:
    try:
        return claim.read_text()
    except FileNotFoundError:
        return ""


def _when_claimed(claim: Path, act, within_s: float = 180.0) -> threading.Thread:
    """A thread that calls ``act(claimed)`` once ``claim`` names an actor's pid or node (an
    actor may take up to two minutes to start on a loaded 2-core machine)."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + within_s
        while not _claimed(claim) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _claimed(claim):
            act(_claimed(claim))

    thread = threading.Thread(target=wait_then_act, name="test-ray-fault")
    thread.start()
    return thread


def test_actor_killed_mid_epoch(cluster, expected, tmp_path) -> None:
    claim = tmp_path / "claimed"
    loader = _loader(StallOneActor(claim, claim_by="pid"), "ray", batch=4)
    killed = []

    def kill(pid: str) -> None:
        (victim,) = [a["actor"] for a in _actors(loader, "map(StallOneActor)") if str(a["pid"]) == pid]
        ray.kill(ray.get_actor(victim))
        killed.append(victim)

    with loader:
        fault = _when_claimed(claim, kill)
        try:
            got = _run(loader)
        finally:
            fault.join(timeout=200)
        actors = _actors(loader, "map(StallOneActor)")
    assert killed
    assert sum(a["replaced"] for a in actors) >= 1
    _same([np.concatenate(got[i : i + 2]) for i in range(0, len(got), 2)], expected)


class OnCls:
    """``inner`` of a WebDataset sample's ``cls``."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, sample: dict) -> np.ndarray:
        return self.inner(int(sample["cls"]))


def _streamed(server: ObjectServer, fn, executor: str) -> tuple[list[int], dict]:
    """A streamed (unindexed) WebDataset's samples through ``fn``: the values and the stage."""
    urls = [server.url(f"s-{shard:06d}.tar") for shard in range(4)]
    options = {"ray_options": SPREAD} if executor == "ray" else {}
    loader = al.Loader.from_source(al.sources.WebDataset(urls), shuffle=True, seed=4).map(
        fn, executor=executor, concurrency=2, **options
    )
    with loader:
        got = [int(value[0]) for value in loader]
        (stage,) = [s for s in loader.stats()["stages"] if s["name"].startswith("map")]
    return got, stage


@pytest.fixture
def shards(tmp_path: Path):
    """Four unindexed WebDataset shards of ten samples on an object server (127.0.0.1)."""
    samples = [{"__key__": f"k{i:04d}", "bin": os.urandom(200 + i), "cls": i} for i in range(40)]
    al.sources.write_shards(samples, str(tmp_path / "s-%06d.tar"), max_count=10)
    with ObjectServer() as server:
        for path in tmp_path.glob("s-*.tar"):
            server.objects[path.name] = path.read_bytes()
        yield server


def test_streamed_shards_are_read_by_the_actors(cluster, shards) -> None:
    """Before: an unindexed WebDataset was streamed by the trainer's loop, every sample's bytes
    sent to the actors; now the actors stream whole shards (as processes do): same order."""
    expected, _ = _streamed(shards, OnCls(square), "process")
    got, stage = _streamed(shards, OnCls(square), "ray")
    assert got == expected and sorted(got) == [k * k for k in range(40)]
    assert stage["executor"] == "ray" and stage["reads"] == "source", stage  # the actors read
    assert stage["bytes_read"] > 0 and len({a["node"] for a in stage["actors"]}) == 2


class AfterTheFirstValue:
    """``square`` of a sample's ``cls``; from a shard's fifth sample on it waits (up to 20 s)
    for ``gate``, which the test makes once it has received a value, and leaves ``late`` if
    it waited in vain: only parts sent before their shard ends can open the gate."""

    def __init__(self, gate: Path, late: Path) -> None:
        self.gate, self.late = gate, late

    def __call__(self, sample: dict) -> np.ndarray:
        value = int(sample["cls"])
        if value % 10 >= 4:
            deadline = time.monotonic() + 20
            while not self.gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not self.gate.exists():
                self.late.touch()
        return square(value)


def test_streamed_shards_send_parts_before_the_shard_ends(cluster, shards, tmp_path: Path) -> None:
    """Before: a shard's results came back as one object when the shard was done (a shard of
    decoded images can outgrow the driver node's store, and its first sample waited for the
    whole shard). Now the actor yields a part per block as it is done (a Ray streaming call)."""
    gate, late = tmp_path / "gate", tmp_path / "late"
    loader = (
        al.Loader.from_source(al.sources.WebDataset(shards.url("s-000000.tar")))
        .map(AfterTheFirstValue(gate, late), executor="ray", concurrency=1)
        .options(block_size=2)
    )
    got = []
    with loader:
        for value in loader:
            got.append(int(value[0]))
            gate.touch()
        (stage,) = [s for s in loader.stats()["stages"] if s["name"].startswith("map")]
    assert stage["reads"] == "source"
    assert got == [k * k for k in range(10)]
    assert not late.exists(), "the shard's first samples came only once the whole shard was done"


def test_streamed_shards_resume_from_the_open_shard(cluster, shards) -> None:
    """A resumed run's actors read the open shard from its next sample on: the rest, once."""
    expected, _ = _streamed(shards, OnCls(square), "process")
    urls = [shards.url(f"s-{shard:06d}.tar") for shard in range(4)]

    def loader() -> al.Loader:
        source = al.sources.WebDataset(urls)
        return al.Loader.from_source(source, shuffle=True, seed=4).map(
            OnCls(square), executor="ray", concurrency=2, ray_options=SPREAD
        )

    with loader() as first:
        it = iter(first)
        head = [int(next(it)[0]) for _ in range(15)]  # inside the second shard
        state = first.state_dict()
    with loader() as resumed:
        resumed.load_state_dict(state)
        rest = [int(value[0]) for value in resumed]
        (stage,) = [s for s in resumed.stats()["stages"] if s["name"].startswith("map")]
    assert stage["reads"] == "source"
    assert head + rest == expected


def test_an_actor_killed_mid_shard_has_its_shard_read_again(cluster, shards, tmp_path: Path) -> None:
    """The killed actor provably holds a shard (StallOneActor); its shard is read again from its
    first sample not received, by a replacement: every sample once, in order."""
    expected, _ = _streamed(shards, OnCls(square), "process")
    claim = tmp_path / "claimed"
    stalling = OnCls(StallOneActor(claim, claim_by="pid"))
    killed = []

    urls = [shards.url(f"s-{shard:06d}.tar") for shard in range(4)]
    loader = al.Loader.from_source(al.sources.WebDataset(urls), shuffle=True, seed=4).map(
        stalling, executor="ray", concurrency=2, ray_options=SPREAD
    )

    def kill(pid: str) -> None:
        (victim,) = [a["actor"] for a in _actors(loader, "map(OnCls)") if str(a["pid"]) == pid]
        ray.kill(ray.get_actor(victim))
        killed.append(victim)

    with loader:
        fault = _when_claimed(claim, kill)
        try:
            got = [int(value[0]) for value in loader]
        finally:
            fault.join(timeout=200)
        (stage,) = [s for s in loader.stats()["stages"] if s["name"].startswith("map")]
    assert killed
    assert sum(a["replaced"] for a in stage["actors"]) >= 1
    assert got == expected


def test_node_removed_mid_epoch(cluster, expected, tmp_path) -> None:
    cluster.add_node(**NODE)  # room for the replacement; the cluster keeps two nodes after
    cluster.wait_for_nodes()
    head_id = ray.get_runtime_context().get_node_id()
    claim = tmp_path / "claimed"
    removed = []

    def remove(node_id: str) -> None:
        (node,) = [n for n in cluster.list_all_nodes() if n.node_id == node_id]
        cluster.remove_node(node, allow_graceful=False)
        removed.append(node_id)

    fault = _when_claimed(claim, remove)
    try:
        with _loader(StallOneActor(claim, claim_by="node", head=head_id), "ray", batch=4) as loader:
            got = _run(loader)
            actors = _actors(loader, "map(StallOneActor)")
    finally:
        fault.join(timeout=200)
    assert removed
    assert sum(a["replaced"] for a in actors) >= 1
    assert removed[0] not in {a["node"] for a in actors}
    _same([np.concatenate(got[i : i + 2]) for i in range(0, len(got), 2)], expected)


def test_hung_sample_times_out(cluster) -> None:
    hang = HangOn(7)
    loader = _loader(hang, "ray", timeout=2.0, on_error="skip", max_failures=1)
    with loader:
        got = _run(loader)
        errors = loader.stats()["errors"]
    assert [e["key"] for e in errors] == [7] and errors[0]["type"] == "StageTimeoutError"
    assert sorted(int(v) for b in got for v in b[:, 0]) == sorted(k * k for k in range(N) if k != 7)
    with _loader(hang, "ray", timeout=2.0) as loader, pytest.raises(al.errors.StageTimeoutError) as info:
        _run(loader)
    assert info.value.key == 7


class Bloats:
    """``square``, but sample ``key`` holds ``mib`` MiB of written memory for up to 30 s (its
    actor is ended long before, past its memory limit)."""

    def __init__(self, key: int, mib: int) -> None:
        self.key = key
        self.mib = mib

    def __call__(self, x: int) -> np.ndarray:
        if x == self.key:
            held = np.ones(self.mib * 2**20, dtype=np.uint8)  # resident: every page written
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(0.05)
            del held
        return square(x)


def test_an_actor_over_max_worker_memory_is_replaced_and_its_key_fails(cluster) -> None:
    """Before: executor='ray' refused max_worker_memory, and an actor that grew without bound
    was left to the node's OOM killer."""
    loader = _loader(Bloats(7, 1024), "ray", max_worker_memory=800 * 2**20, on_error="skip", max_failures=1)
    with loader:
        got = _run(loader)
        errors = loader.stats()["errors"]
        actors = _actors(loader, "map(Bloats)")
    assert [e["key"] for e in errors] == [7] and errors[0]["type"] == "WorkerCrashError", errors
    assert "over max_worker_memory=800 MiB" in errors[0]["message"], errors
    assert sum(a["replaced"] for a in actors) >= 3  # each of the key's three runs ended its actor
    assert sorted(int(v) for b in got for v in b[:, 0]) == sorted(k * k for k in range(N) if k != 7)


class StampedHang:
    """``square``, but sample ``key`` writes when it began (CLOCK_MONOTONIC, the machine's) to
    ``stamp`` and hangs far past the stall limit."""

    def __init__(self, key: int, stamp: str) -> None:
        self.key = key
        self.stamp = stamp

    def __call__(self, x: int) -> np.ndarray:
        if x == self.key:
            Path(self.stamp).write_text(repr(time.monotonic()))
            time.sleep(120)
        return square(x)


def test_a_stalled_actor_is_reported_naming_the_stage_keys_and_actor(cluster, tmp_path: Path, caplog) -> None:
    """Before: without a timeout a hung actor call stalled the run forever, with no word."""
    import logging

    stamp = tmp_path / "began"
    loader = _loader(StampedHang(7, str(stamp)), "ray", stall_after=2.0, on_stall="raise")
    with caplog.at_level(logging.WARNING, "aioloader"), loader:
        with pytest.raises(al.StageStalledError) as info:
            _run(loader)
        raised = time.monotonic()
        actors = _actors(loader, "map(StampedHang)")
    began = float(stamp.read_text())
    message = str(info.value)
    assert isinstance(info.value, al.StageTimeoutError) and info.value.stage == "map(StampedHang)"
    assert "stage 'map(StampedHang)' made no progress for" in message
    # the map and the batch run fused in the actor: the chunk's keys are its batches' keys
    batches = ast.literal_eval(re.search(r"has been running keys (\[[\[\]\d, ]+\]) for", message).group(1))
    assert 7 in [key for batch in batches for key in batch] and info.value.key == batches[0]
    assert re.search(r"Ray actor aioloader:map\(StampedHang\):\w+:\d+:\d+ \(node \w+, pid \d+\)", message)
    assert "no Python stack" in message and "(stall_after=2.0)" in message
    assert 2.0 <= raised - began < 2.0 + 5.0
    assert sum(a["replaced"] for a in actors) >= 1  # the stalled actor was killed and replaced
    assert "made no progress" in caplog.text  # logged as a warning too


DRIVER = """
import sys, time, ray
import aioloader as al
sys.path.insert(0, {repo!r})
from tests.ray_inner.cases import slow_square, SPREAD
ray.init(address={address!r}, namespace="aioloader-tests", log_to_driver=False)  # named actors are per namespace
loader = al.Loader.from_source(list(range(10_000))).map(slow_square, executor="ray", concurrency=2, ray_options=SPREAD).batch(4)
it = iter(loader)
next(it)
names = [a["actor"] for s in loader.stats()["stages"] for a in s.get("actors", [])]
print(",".join(names), flush=True)
time.sleep(60)
"""


def test_dead_trainer_leaves_no_actor(cluster) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    script = DRIVER.format(repo=repo, address=cluster.address)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        line = proc.stdout.readline().strip()
        names = line.split(",")
        assert len(names) == 2 and all(n.startswith("aioloader:") for n in names), line
        assert not _actors_gone(names, within_s=0.5)  # alive while the driver lives
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert _actors_gone(names), "actors outlived their driver"
