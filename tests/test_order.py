"""Guarantees 1 and 2 (exactly once over ranks, deterministic order) and the key orders:
permutation, chunk shuffle, samplers, Mix/Cycle, shuffle quality."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aioloader as al


def collect(loader) -> list:
    with loader:
        return [int(x) for x in loader]


def rank_keys(n, world, policy, shuffle="perm", seed=0, executor="inline", concurrency=1, block=None):
    out = []
    for rank in range(world):
        loader = al.Loader.from_source(
            range(n),
            shuffle={"none": False, "perm": True, "chunks": "chunks"}[shuffle],
            seed=seed,
            rank=rank,
            world_size=world,
            shard_policy=policy,
        )
        if executor != "inline":
            loader = loader.map(lambda x: x, executor=executor, concurrency=concurrency)
        if block:
            loader = loader.options(block_size=block)
        out.append(collect(loader))
    return out


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    world=st.integers(1, 5),
    policy=st.sampled_from(["drop", "pad", "uneven"]),
    shuffle=st.sampled_from(["none", "perm", "chunks"]),
    seed=st.integers(0, 10),
    executor=st.sampled_from(["inline", "thread"]),
    concurrency=st.integers(1, 4),
)
def test_exactly_once_over_ranks(n, world, policy, shuffle, seed, executor, concurrency):
    per_rank = rank_keys(n, world, policy, shuffle, seed, executor, concurrency)
    union = Counter(k for keys in per_rank for k in keys)
    if policy == "uneven":
        assert sorted(union.elements()) == list(range(n))
    elif policy == "drop":
        assert len({len(keys) for keys in per_rank}) == 1
        assert all(c == 1 for c in union.values())
        assert n - sum(union.values()) <= world - 1
    else:
        assert len({len(keys) for keys in per_rank}) == 1
        assert set(union) == set(range(n))
        assert sum(union.values()) - n <= world - 1  # only the padding repeats keys


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 400),
    shuffle=st.sampled_from(["perm", "chunks"]),
    seed=st.integers(0, 100),
    epoch=st.integers(0, 5),
    concurrency=st.integers(1, 6),
    block=st.integers(1, 50),
)
def test_same_spec_seed_epoch_same_sequence_whatever_the_concurrency(
    n, shuffle, seed, epoch, concurrency, block
):
    def run(executor, conc, blk):
        loader = al.Loader.from_source(range(n), shuffle=True if shuffle == "perm" else "chunks", seed=seed)
        loader = (
            loader.map(lambda x: x, executor=executor, concurrency=conc).shuffle(7).options(block_size=blk)
        )
        loader.set_epoch(epoch)
        return collect(loader)

    reference = run("inline", None, 64)
    assert sorted(reference) == list(range(n))
    assert run("thread", concurrency, block) == reference


def test_new_epoch_new_order_for_every_shuffle_kind():
    for loader in (
        al.Loader.from_source(range(500), shuffle=True),
        al.Loader.from_source(range(500), shuffle="chunks"),
        al.Loader.from_source(iter_source(500)).shuffle(64),
    ):
        with loader:
            first, second = [int(x) for x in loader], [int(x) for x in loader]
        assert sorted(first) == sorted(second) == list(range(500))
        assert first != second


class iter_source:
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


class ChunkedRecorder:
    """An indexable source with a chunk layout that records each batched read."""

    chunk_rows = 10

    def __init__(self, n):
        self.n = n
        self.reads: list[list[int]] = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i

    def __getitems__(self, keys):
        self.reads.append(sorted(keys))
        return list(keys)


def test_chunk_shuffle_reads_whole_chunks_and_mixes_a_window():
    source = ChunkedRecorder(95)
    got = collect(al.Loader.from_source(source, shuffle="chunks", chunk_window=3))
    assert sorted(got) == list(range(95))
    for keys in source.reads:
        chunks = {k // 10 for k in keys}
        assert len(chunks) <= 3
        whole = sorted(k for c in chunks for k in range(c * 10, min(c * 10 + 10, 95)))
        assert keys == whole, "a read must cover whole chunks"
    assert al.order.quality(got) > 0.5
    assert got != sorted(got)


def test_chunk_bounds_from_source_and_validation():
    with pytest.raises(ValueError, match="chunk_window"):
        al.Loader.from_source(range(10), shuffle="chunks", chunk_window=0)
    with pytest.raises(ValueError, match="chunk_window only"):
        al.Loader.from_source(range(10), shuffle=True, chunk_window=2)
    order = al.order.Chunks(bounds=(0, 3, 10), window=1)
    keys = order.keys(10, seed=0, epoch=0)
    first = set(keys[:3].tolist()) if set(keys[:3].tolist()) <= {0, 1, 2} else set(keys[7:].tolist())
    assert first == {0, 1, 2}


def test_weighted_sampler_with_and_without_replacement():
    weights = [0.0, 1.0, 3.0, 0.0]
    loader = al.Loader.from_source(range(4), shuffle=al.order.Weighted(weights, num_samples=4000), seed=1)
    assert len(loader) == 4000
    counts = Counter(collect(loader))
    assert set(counts) == {1, 2}
    assert 0.7 < counts[2] / 4000 < 0.8
    without = collect(al.Loader.from_source(range(4), shuffle=al.order.Weighted(weights, replacement=False)))
    assert sorted(without) == [1, 2]
    with pytest.raises(ValueError, match="weights"):
        al.order.Weighted([-1.0, 2.0])


def test_class_balanced_sampler():
    labels = [0] * 90 + [1] * 10
    got = collect(
        al.Loader.from_source(range(100), shuffle=al.order.ClassBalanced(labels, num_samples=2000), seed=2)
    )
    minority = sum(1 for k in got if labels[k] == 1) / len(got)
    assert 0.45 < minority < 0.55
    # within an epoch a class cycles its own permutation: the minority repeats only once exhausted
    first_minority = [k for k in got if labels[k] == 1][:10]
    assert sorted(first_minority) == list(range(90, 100))


def test_mix_proportions_and_cycle_passes():
    mix = al.sources.Mix([al.sources.Cycle(["a"]), al.sources.Cycle(["b", "c"])], weights=[1, 3], seed=0)
    with al.Loader.from_source(mix) as loader:
        got = list(itertools.islice(loader, 4000))
    assert 0.2 < got.count("a") / 4000 < 0.3
    cycle = al.sources.Cycle(range(3), passes=2)
    assert collect(al.Loader.from_source(cycle)) == [0, 1, 2, 0, 1, 2]
    with pytest.raises(TypeError, match="re-iterable"):
        al.sources.Cycle(iter(range(3)))


def test_mix_stop_policies():
    short, long = [1, 2], list(range(100, 200))
    assert set(al.sources.Mix([short, long], seed=0, stop="all")) == set(short) | set(long)
    first = list(al.sources.Mix([short, long], seed=0))
    assert len(first) < len(short) + len(long)


def test_quality_measure():
    assert al.order.quality(np.arange(1000)) == 0.0
    assert al.order.quality(np.random.default_rng(0).permutation(10_000)) > 0.95
    buffered = collect(al.Loader.from_source(iter_source(10_000)).shuffle(100))
    assert 0.0 < al.order.quality(buffered) < 0.1
    assert al.order.neighbour_rate(np.arange(100)) == 1.0


def test_permutation_keys_are_compact():
    keys = al.order.Permutation().keys(1000, seed=0, epoch=0)
    assert keys.dtype == np.uint32


class _AsyncStream:
    def __init__(self, n):
        self.n = n

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for i in range(self.n):
            yield i


def _stream_rank_items(n, world, policy, kind):
    out = []
    for rank in range(world):
        source = iter_source(n) if kind == "sync" else _AsyncStream(n)
        loader = al.Loader.from_source(source, rank=rank, world_size=world, shard_policy=policy).options(
            block_size=3
        )
        out.append(collect(loader))
    return out


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 60),
    world=st.integers(1, 5),
    policy=st.sampled_from(["drop", "pad", "uneven"]),
    kind=st.sampled_from(["sync", "async"]),
)
def test_streams_shard_with_the_same_guarantees(n, world, policy, kind):
    """A stream has no length: each rank reads it whole, holds its item of each round of
    world positions, and drops or pads a partial last round so counts stay equal."""
    per_rank = _stream_rank_items(n, world, policy, kind)
    union = Counter(k for items in per_rank for k in items)
    if policy == "uneven":
        assert sorted(union.elements()) == list(range(n))
    elif policy == "drop":
        assert len({len(items) for items in per_rank}) == 1
        assert all(c == 1 for c in union.values()) and n - sum(union.values()) <= world - 1
    else:
        assert len({len(items) for items in per_rank}) == 1
        assert set(union) == set(range(n)) and sum(union.values()) - n <= world - 1
    # each rank's items keep the stream order (a pad item, from the first round, comes last)
    for items in per_rank:
        body = items[:-1] if policy == "pad" else items
        assert body == sorted(body)


def test_a_sharded_multi_file_stream_gives_each_rank_whole_files(tmp_path):
    for f in range(5):
        (tmp_path / f"part{f}.txt").write_text("".join(f"{f}:{i}\n" for i in range(7 + f)))
    lines = {}
    for rank in range(2):
        source = al.sources.TextLines(str(tmp_path / "part*.txt"), mode="streaming")
        loader = al.Loader.from_source(source, rank=rank, world_size=2, shard_policy="uneven")
        with loader:
            lines[rank] = list(loader)
    every = [f"{f}:{i}" for f in range(5) for i in range(7 + f)]
    assert sorted(lines[0] + lines[1]) == sorted(every)
    assert {line.split(":")[0] for line in lines[0]} == {"0", "2", "4"}  # rank 0 read files 0, 2, 4 only
    assert {line.split(":")[0] for line in lines[1]} == {"1", "3"}
