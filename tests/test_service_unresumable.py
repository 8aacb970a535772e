"""Pipelines that cannot be resumed exactly (``.map(ordered=False)``, ``.bucket``, batches
shuffled) run in a subprocess and through the service as in-process: every sample once per
epoch, ``set_epoch`` honoured, a clean stop. Only resume is missing, as with a local Loader:
``state_dict()`` raises its ``ValueError``, ``load_state_dict()`` refuses, and a run cut off
mid-epoch is never continued silently (the autouse fixture checks for leftovers after each test)."""

from __future__ import annotations

import secrets
from collections import Counter

import psutil
import pytest

import aioloader as al

TOKEN = secrets.token_hex(16)
N = 60


def tag(i: int) -> int:
    return i


def doc(i: int) -> list[int]:
    return [i] * (1 + i % 9)  # lengths 1..9: three buckets


def first_ids(docs: list[list[int]]) -> list[int]:
    return [d[0] for d in docs]


def unordered(n: int = N) -> al.Loader:
    source = al.Loader.from_source(list(range(n)), shuffle=True, seed=2)
    return source.map(tag, executor="thread", concurrency=4, ordered=False).batch(8)


def bucketed(n: int = N, **source) -> al.Loader:
    loader = al.Loader.from_source([doc(i) for i in range(n)], shuffle=True, seed=2, **source)
    return loader.bucket([4, 7], batch_size=5, collate=first_ids)


def ids(batches) -> list[list[int]]:
    return [b.tolist() if hasattr(b, "tolist") else list(b) for b in batches]


def assert_each_once(batches: list[list[int]], n: int = N) -> None:
    counts = Counter(i for batch in batches for i in batch)
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}


def local_error(loader: al.Loader) -> str:
    with loader, pytest.raises(ValueError) as raised:
        loader.state_dict()
    return str(raised.value)


def test_unordered_map_in_subprocess_every_sample_once_per_epoch():
    with unordered().in_subprocess(credits=2) as sub:
        assert len(sub) == 8
        for epoch in range(2):
            assert sub.epoch == epoch
            assert_each_once(ids(sub))
        sub.set_epoch(7)
        assert_each_once(ids(sub))
        assert sub.epoch == 8


def test_bucket_in_subprocess_equals_in_process_and_honours_set_epoch():
    reference = bucketed()
    with reference, bucketed().in_subprocess() as sub:
        for _ in range(2):
            got = ids(sub)
            assert got == ids(reference)
            assert_each_once(got)
        sub.set_epoch(5)
        reference.set_epoch(5)
        assert ids(sub) == ids(reference)


@pytest.mark.parametrize("make", [unordered, bucketed], ids=["unordered", "bucket"])
def test_state_dict_raises_as_in_process_and_states_are_refused(make):
    expected = local_error(make())
    foreign = al.Loader.from_source(list(range(N))).batch(8)
    with foreign:
        foreign_state = foreign.state_dict()
    with make().in_subprocess(credits=1) as sub:
        with pytest.raises(ValueError) as before:
            sub.state_dict()
        assert str(before.value) == expected
        for i, _ in enumerate(sub):
            if i == 1:
                break
        with pytest.raises(ValueError) as mid_epoch:
            sub.state_dict()
        assert str(mid_epoch.value) == expected
        with pytest.raises(
            ValueError, match=r"load_state_dict: stage .* cannot be resumed exactly|has ordered=False"
        ):
            sub.load_state_dict(foreign_state)
        assert_each_once(ids(sub))  # the next iteration still runs a whole epoch


def test_shuffled_batches_have_states_only_between_epochs():
    def spec() -> al.Loader:
        return al.Loader.from_source(list(range(N))).batch(4).shuffle(3)

    reference = spec()
    with reference, spec().in_subprocess() as sub:
        assert sub.state_dict() == reference.state_dict()
        batches = iter(sub)
        next(batches)
        with pytest.raises(ValueError, match="shuffles batches"):
            sub.state_dict()
        rest = ids(batches)
        assert len(rest) == N // 4 - 1
        assert sub.state_dict()["epoch"] == 1


def test_leaving_the_loop_and_close_end_the_child():
    sub = bucketed(600).in_subprocess(credits=1)
    child = psutil.Process(sub.pid)
    for i, _ in enumerate(sub):
        if i == 1:
            break
    assert_each_once(ids(sub), 600)  # the next epoch, whole
    batches = iter(sub)
    next(batches)
    sub.close()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(RuntimeError, match="closed"):
        next(batches)


@pytest.fixture
def bucket_server():
    loader = bucketed()
    with al.serve(loader, token=TOKEN) as srv:
        yield srv
    loader.close()


def test_served_bucket_epochs_set_epoch_and_refused_state(bucket_server):
    reference = bucketed(rank=0, world_size=1)
    with reference, al.connect(bucket_server.address, token=TOKEN, rank=0, world_size=1) as client:
        with pytest.raises(ValueError) as raised:
            client.state_dict()
        assert str(raised.value) == local_error(bucketed(rank=0, world_size=1))
        for _ in range(2):
            got = ids(client)
            assert got == ids(reference)
            assert_each_once(got)
        client.set_epoch(4)
        reference.set_epoch(4)
        assert ids(client) == ids(reference)
        foreign = al.Loader.from_source(list(range(N)), rank=0, world_size=1).batch(8)
        with (
            foreign,
            pytest.raises(
                ValueError, match=r"load_state_dict: stage .* cannot be resumed exactly|has ordered=False"
            ),
        ):
            client.load_state_dict(foreign.state_dict())


def test_served_run_cut_off_mid_epoch_is_not_continued_silently():
    loader = bucketed()
    srv = al.serve(loader, token=TOKEN)
    received: list[list[int]] = []
    try:
        with al.connect(srv.address, token=TOKEN, rank=0, world_size=1, credits=1) as client:
            with pytest.raises(ConnectionError):
                for batch in client:
                    received.append(list(batch))
                    if len(received) == 2:
                        srv.close()
            # a third batch may have arrived before the close (its credit went out with the
            # second): then the consumer received it too, and the count says so
            got = len(received)
            assert got in (2, 3), got
            srv = al.serve(loader, token=TOKEN, port=srv.address[1])
            with pytest.raises(RuntimeError, match=rf"cut off after {got} batches.*set_epoch\(0\)"):
                list(client)
            with pytest.raises(RuntimeError, match="cut off"):  # until the user chooses
                list(client)
            client.set_epoch(0)
            again = ids(client)
        assert again[:got] == received
        assert_each_once(again)
    finally:
        srv.close()
        loader.close()
