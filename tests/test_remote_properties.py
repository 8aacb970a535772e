"""The README's guarantees on a shard stream (local tar shards, the same code path as remote
ones): exactly once over ranks, deterministic per (seed, epoch), and exact resume from any
batch, through a shuffle buffer too, reading no shard before the open one again."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aioloader as al

SHARDS, TOTAL = 5, 47  # uneven shards: 10, 10, 10, 10, 7


def _make_shards(folder) -> str:
    if not os.path.exists(folder / "index.json"):
        samples = [{"__key__": f"k{i:03d}", "cls": i} for i in range(TOTAL)]
        al.sources.write_shards(samples, str(folder / "s-%03d.tar"), max_count=10)
    return str(folder / f"s-{{000..{SHARDS - 1:03d}}}.tar")


def _loader(url: str, *, buffer: int, rank: int = 0, world: int = 1, seed: int = 0) -> al.Loader:
    loader = al.Loader.from_source(
        al.sources.WebDataset(url), shuffle=True, seed=seed, rank=rank, world_size=world, shard_policy="uneven"
    )
    if buffer:
        loader = loader.shuffle(buffer)
    return loader.batch(3, collate=al.collate.as_list)


def _batches(loader) -> list[list[int]]:
    return [[int(s["cls"]) for s in b] for b in loader]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=st.integers(1, 3), seed=st.integers(0, 5), buffer=st.sampled_from([0, 7]), cut=st.integers(0, 20))
def test_exactly_once_deterministic_and_resumable(tmp_path_factory, world, seed, buffer, cut):
    url = _make_shards(tmp_path_factory.getbasetemp())
    seen = []
    for rank in range(world):
        with _loader(url, buffer=buffer, rank=rank, world=world, seed=seed) as loader:
            expected = _batches(loader)
        with _loader(url, buffer=buffer, rank=rank, world=world, seed=seed) as loader:
            assert _batches(loader) == expected  # deterministic
        seen += [k for b in expected for k in b]
        k = min(cut, len(expected))
        with _loader(url, buffer=buffer, rank=rank, world=world, seed=seed) as loader:
            it = iter(loader)
            head = [[int(s["cls"]) for s in next(it)] for _ in range(k)]
            state = loader.state_dict()
        with _loader(url, buffer=buffer, rank=rank, world=world, seed=seed) as loader:
            loader.load_state_dict(state)
            assert head + _batches(loader) == expected
    assert sorted(seen) == list(range(TOTAL))


def _indexed_loader(folder, *, buffer: int, rank: int, world: int, seed: int, budget: int) -> al.Loader:
    ds = al.sources.WebDataset(index=str(folder / "index.json"), read_budget=budget)
    loader = al.Loader.from_source(ds, shuffle=True, seed=seed, rank=rank, world_size=world, shard_policy="uneven")
    if buffer:
        loader = loader.shuffle(buffer)
    return loader.batch(3, collate=al.collate.as_list)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.integers(1, 3),
    seed=st.integers(0, 5),
    buffer=st.sampled_from([0, 7]),
    cut=st.integers(0, 16),
    budget=st.sampled_from([1024, 4096, 1 << 20]),
)
def test_indexed_global_shuffle_read_ahead_is_exact_and_resumable(tmp_path_factory, world, seed, buffer, cut, budget):
    """The same guarantees with an index: a global permutation read ahead along the order
    within ``read_budget`` (one sample at a time up to the whole dataset)."""
    _make_shards(tmp_path_factory.getbasetemp())
    folder = tmp_path_factory.getbasetemp()
    seen = []
    for rank in range(world):
        options = {"buffer": buffer, "rank": rank, "world": world, "seed": seed, "budget": budget}
        with _indexed_loader(folder, **options) as loader:
            expected = _batches(loader)
        seen += [k for b in expected for k in b]
        # mid-epoch: after an indexed epoch's last batch (its length is known) the state is the
        # next epoch's start
        k = min(cut, len(expected) - 1)
        with _indexed_loader(folder, **options) as loader:
            it = iter(loader)
            head = [[int(s["cls"]) for s in next(it)] for _ in range(k)]
            state = loader.state_dict()
        with _indexed_loader(folder, **options) as loader:
            loader.load_state_dict(state)
            assert head + _batches(loader) == expected
    assert sorted(seen) == list(range(TOTAL))
