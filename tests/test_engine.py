"""The engine's basic behaviour: sources of every kind, map/filter/batch/unbatch, epochs, len."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, default_collate

import aioloader as al


class Squares(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return torch.full((3,), float(index)), index * index


def collect(loader) -> list:
    with loader:
        return list(loader)


async def acollect(loader) -> list:
    async with loader:
        return [item async for item in loader]


def test_indexable_torch_dataset_batches_like_torch_dataloader(event_loop_kind):
    ds = Squares(103)
    ours = collect(al.Loader.from_source(ds).batch(10).options(event_loop=event_loop_kind))
    theirs = list(torch.utils.data.DataLoader(ds, batch_size=10))
    assert len(ours) == len(theirs) == 11
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_drop_last_and_len():
    loader = al.Loader.from_source(Squares(103)).batch(10, drop_last=True)
    assert len(loader) == 10
    assert len(collect(loader)) == 10
    assert len(al.Loader.from_source(Squares(103)).batch(10)) == 11
    assert len(al.Loader.from_source(range(7)).map(str)) == 7


def test_len_unknown_raises_type_error():
    with pytest.raises(TypeError, match="stream"):
        len(al.Loader.from_source(iter(range(3))))
    with pytest.raises(TypeError, match="filter"):
        len(al.Loader.from_source(range(3)).filter(bool))


def test_sync_iterable_and_generator_sources(event_loop_kind):
    def gen():
        yield from range(1000)

    got = collect(al.Loader.from_source(gen()).map(lambda x: x + 1).options(event_loop=event_loop_kind))
    assert got == list(range(1, 1001))


async def test_async_iterable_source():
    async def agen():
        for i in range(300):
            if i % 50 == 0:
                await asyncio.sleep(0)
            yield i

    assert await acollect(al.Loader.from_source(agen()).filter(lambda x: x % 3 == 0)) == list(
        range(0, 300, 3)
    )


def test_endless_source_can_be_consumed_partially():
    loader = al.Loader.from_source(itertools.count()).map(lambda x: x * 2).batch(4)
    with loader:
        first = list(itertools.islice(loader, 3))
    assert [b.tolist() for b in first] == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22]]


async def test_endless_async_source_partial():
    async def forever():
        i = 0
        while True:
            yield i
            i += 1

    async with al.Loader.from_source(forever()).batch(5) as loader:
        got = []
        async for batch in loader:
            got.append(batch.tolist())
            if len(got) == 3:
                break
    assert got == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]


def test_async_map_function_in_sync_iteration():
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    assert collect(al.Loader.from_source(range(100)).map(double, concurrency=7)) == [
        2 * x for x in range(100)
    ]


def test_filter_unbatch_roundtrip():
    loader = al.Loader.from_source(range(50)).filter(lambda x: x % 2 == 0).batch(7).unbatch()
    got = collect(loader)
    assert [int(x) for x in got] == list(range(0, 50, 2))


def test_unbatch_of_tuple_batches_restores_samples():
    got = collect(al.Loader.from_source(Squares(9)).batch(4).unbatch())
    assert len(got) == 9
    for i, (vec, sq) in enumerate(got):
        assert torch.equal(vec, torch.full((3,), float(i))) and int(sq) == i * i


def test_prefetch_keeps_results():
    got = collect(al.Loader.from_source(range(20)).prefetch(3).batch(5).prefetch(1))
    assert [b.tolist() for b in got] == [list(range(i, i + 5)) for i in range(0, 20, 5)]


@pytest.mark.parametrize(
    "samples",
    [
        [np.float32(1.5), np.float32(2.5)],
        [{"a": torch.ones(2), "b": 3, "c": "x"}, {"a": torch.zeros(2), "b": 4, "c": "y"}],
        [(1, 2.0, True), (3, 4.0, False)],
        [[torch.ones(1), 2], [torch.zeros(1), 5]],
        [np.arange(4), np.arange(4) * 2],
    ],
)
def test_default_collate_matches_torch(samples):
    ours = al.collate.stack(samples)
    theirs = default_collate(samples)

    def same(a, b):
        if isinstance(b, torch.Tensor):
            return isinstance(a, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in b)
        if isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a == b

    assert same(ours, theirs)


def test_stack_names_the_mismatched_sample():
    with pytest.raises(RuntimeError, match="sample 2 has shape"):
        al.collate.stack([torch.ones(2), torch.ones(2), torch.ones(3)])


class TestEpochs:
    def test_each_iteration_is_a_new_epoch_with_a_new_order(self):
        loader = al.Loader.from_source(range(100), shuffle=True, seed=7)
        with loader:
            e0, e1 = list(loader), list(loader)
        assert sorted(e0) == sorted(e1) == list(range(100))
        assert e0 != e1
        assert loader.epoch == 2

    def test_set_epoch_reproduces_an_epoch(self):
        loader = al.Loader.from_source(range(100), shuffle=True, seed=7)
        with loader:
            e0, e1 = list(loader), list(loader)
            loader.set_epoch(1)
            assert list(loader) == e1
            loader.set_epoch(0)
            assert list(loader) == e0

    def test_same_seed_same_order_across_loaders_other_seed_differs(self):
        a = collect(al.Loader.from_source(range(64), shuffle=True, seed=1))
        b = collect(al.Loader.from_source(range(64), shuffle=True, seed=1))
        c = collect(al.Loader.from_source(range(64), shuffle=True, seed=2))
        assert a == b and a != c

    def test_one_shot_iterator_runs_once_then_refuses(self):
        loader = al.Loader.from_source(iter(range(5)))
        with loader:
            assert list(loader) == [0, 1, 2, 3, 4]
            with pytest.raises(ValueError, match="one-shot iterator"):
                list(loader)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("policy", ["drop", "pad", "uneven"])
def test_sharding_over_ranks(world, policy):
    n = 10
    per_rank = [
        collect(al.Loader.from_source(range(n), rank=r, world_size=world, shard_policy=policy))
        for r in range(world)
    ]
    union = [k for keys in per_rank for k in keys]
    if policy == "uneven":
        assert sorted(union) == list(range(n))
    elif policy == "drop":
        assert len({len(k) for k in per_rank}) == 1
        assert len(set(union)) == len(union) and n - len(union) <= world - 1
    else:
        assert len({len(k) for k in per_rank}) == 1
        assert set(union) == set(range(n)) and len(union) - n < world


def test_rank_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert collect(al.Loader.from_source(range(6))) == [1, 3, 5]


def test_stats_after_a_run_are_json_serialisable():
    import json

    loader = al.Loader.from_source(range(100)).map(lambda x: x, name="ident").batch(10)
    collect(loader)
    stats = loader.stats()
    json.dumps(stats)
    assert [s["name"] for s in stats["stages"]] == ["source", "read", "ident", "batch"]
    assert stats["samples"] == 100 and stats["batches"] == 10
    assert stats["time_to_first_batch_s"] is not None


def record_threads(x: int) -> int:
    """The sample, after recording the torch intra-op threads of the thread running it."""
    THREADS_SEEN.append(torch.get_num_threads())
    return x


THREADS_SEEN: list[int] = []


@pytest.mark.parametrize(("executor", "concurrency"), [("inline", 1), ("thread", 1), ("thread", 2)])
def test_functions_run_with_one_intra_op_thread_and_leave_the_default_alone(executor, concurrency):
    """On the loader's own threads (its loop, pool threads) torch ops get one intra-op thread,
    as in worker processes (and torch DataLoader's): a pool thread of two no longer forks a
    team per op (JPEG resize in threads ran 8-10% slower), and a float result no longer
    depends on the executor or the concurrency. The consumer's thread and threads started
    later keep the process's default."""
    import threading

    default = torch.get_num_threads()
    THREADS_SEEN.clear()
    loader = al.Loader.from_source(range(64)).map(record_threads, executor=executor, concurrency=concurrency)
    with loader:
        assert list(loader) == list(range(64))
    assert set(THREADS_SEEN) == {1}
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [default] and torch.get_num_threads() == default


def float_sum(x: int) -> float:
    """A reduction big enough for torch to split it over its intra-op threads."""
    values = torch.from_numpy(np.random.default_rng(x).random(400_000, dtype=np.float32))
    return float((values * 1.1).sum())


def test_a_float_reduction_gives_the_same_bits_on_every_executor():
    def run(executor: str, concurrency: int | None = None) -> list[float]:
        loader = al.Loader.from_source(range(16)).map(float_sum, executor=executor, concurrency=concurrency)
        with loader:
            return list(loader)

    inline = run("inline")
    for executor, concurrency in [("thread", 1), ("thread", 2), ("process", 2), ("auto", None)]:
        assert run(executor, concurrency) == inline, (executor, concurrency)
