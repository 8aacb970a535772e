"""Key orders as functions of the position: each sequence equals the order it stands for (the
permutation is a bijection, sharding and elastic resume by arithmetic equal the same operations
on whole arrays), at sizes near powers of two and world sizes that do not divide them; a
10^10-key range starts, shards and resumes in constant memory; the full shuffle is statistically
like numpy's permutation."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import aioloader as al
from aioloader.order.elastic import RemainingKeys
from aioloader.order.permutation import Bijection, _Work
from aioloader.order.sharding import RankInfo, shard_count, shard_keys, shard_sequence

# sizes around powers of two, where the bijection's domain changes, and anything small
sizes = st.one_of(
    st.builds(lambda k, d: max(0, 2**k + d), st.integers(0, 12), st.integers(-1, 2)),
    st.integers(0, 600),
)
policies = st.sampled_from(["drop", "pad", "uneven"])


def _order(kind: str, n: int):
    if kind == "sequential":
        return al.order.Sequential()
    if kind == "permutation":
        return al.order.Permutation()
    if kind == "chunks":
        return al.order.Chunks(chunk_size=7, window=3)
    bounds = sorted({0, n, *range(0, n, 5), *range(0, n, 11)})  # chunks of uneven sizes
    return al.order.Chunks(bounds=tuple(bounds) if n else (0,), window=2)


kinds = st.sampled_from(["sequential", "permutation", "chunks", "bounds"])


@settings(max_examples=60, deadline=None)
@given(n=sizes, seed=st.integers(0, 2**32), epoch=st.integers(0, 1000))
def test_the_bijection_is_a_permutation_and_inverts(n, seed, epoch):
    positions = np.arange(n, dtype=np.uint64)
    keys = Bijection(n, seed, epoch)(positions)
    assert np.array_equal(np.sort(keys), positions)
    assert np.array_equal(Bijection(n, seed, epoch).inverse(keys), positions)
    assert np.array_equal(Bijection(n, seed, epoch)(positions), keys)  # a function of its inputs
    if n >= 8:
        assert not np.array_equal(Bijection(n, seed, epoch + 1)(positions), keys)


def test_the_bijection_refuses_a_position_outside_its_range():
    with pytest.raises(IndexError, match="out of range"):
        Bijection(10, 0, 0)(np.array([3, 10]))
    with pytest.raises(IndexError, match="position 10 out of range"):
        Bijection(10, 0, 0)(range(4, 11, 3))
    with pytest.raises(IndexError, match="position -1 out of range"):
        Bijection(10, 0, 0)(range(-1, 3))


# keys written down from the first release of the bijection: a resume state names a position in
# the order, so a faster evaluation must give the same keys for the same (n, seed, epoch)
PINNED = [
    ((1000, 0, 0), [503, 709, 938, 997, 120]),
    ((10**6, 5, 1), [194065, 443417, 419959, 190951, 823739]),
    ((2**32 + 1, 2, 3), [1452550544, 1814854831, 231538646, 4158142917, 1165263543]),
    ((10**10, 7, 0), [9800371243, 3352625364, 1374435512, 766817417, 1050210877]),
]


@pytest.mark.parametrize(("key", "expected"), PINNED)
def test_the_bijection_gives_the_keys_it_always_gave(key, expected):
    n, seed, epoch = key
    positions = [0, 1, 2, n // 2, n - 1]
    assert Bijection(n, seed, epoch)(np.array(positions, dtype=np.int64)).tolist() == expected
    assert al.order.Permutation().sequence(n, seed, epoch).at(np.array(positions)).tolist() == expected


@settings(max_examples=40, deadline=None)
@given(n=sizes, seed=st.integers(0, 2**32), data=st.data())
def test_a_range_of_positions_gives_the_keys_of_its_array(n, seed, data):
    """A range is evaluated piece by piece without its array; the keys are the array's, in the
    dtype asked for, walks (values landing past n) included."""
    assume(n > 0)
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start, n))
    step = data.draw(st.integers(1, 9))
    span = range(start, stop, step)
    bijection = Bijection(n, seed, 1)
    expected = bijection(np.array(span, dtype=np.int64))
    for dtype in (np.uint64, al.order.index_dtype(n)):
        got = bijection(span, dtype=dtype)
        assert got.dtype == dtype and np.array_equal(got, expected)
    assert np.array_equal(bijection.inverse(range(0, n), dtype=np.uint32), bijection.inverse(np.arange(n)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.one_of(sizes.filter(lambda n: n > 1), st.integers(2, 2**64 - 1)),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_a_few_walked_values_take_the_same_rounds_as_python_ints(n, seed, data):
    """Values past n are walked one by one as Python ints when few: each round gives what the
    numpy rounds give, over the whole domain the rounds act on, both ways."""
    bijection = Bijection(n, seed, 2)
    domain = (1 << bijection._low_bits) * bijection._high
    values = data.draw(st.lists(st.integers(0, min(domain, 2**64) - 1), min_size=1, max_size=20))
    array = np.array(values, dtype=np.uint64)
    ways = ((bijection._encrypt, bijection._encrypt_one), (bijection._decrypt, bijection._decrypt_one))
    for vector, one in ways:
        out = np.empty_like(array)
        vector(array, out, _Work(array.size))
        assert out.tolist() == [one(v) for v in values]


def test_a_long_range_is_evaluated_past_many_pieces_and_walks():
    """2^20 + 3 keys of a domain well above n (walks on every piece): the range and its array agree
    across piece boundaries, and the keys are a permutation."""
    n = 2**20 + 3
    bijection = Bijection(n, 11, 0)
    keys = bijection(range(n), dtype=np.uint32)
    assert np.array_equal(np.sort(keys), np.arange(n, dtype=np.uint32))
    assert np.array_equal(keys, bijection(np.arange(n, dtype=np.int64)))
    assert np.array_equal(bijection(range(1, n, 3)), keys[1::3])


def test_a_ranks_span_of_a_shuffle_allocates_its_keys_and_little_else():
    """A rank's span of 2^18 keys of a shuffled 10^9-key order: the memory it takes is its keys
    (1 MB of uint32) and scratch of a fixed size, not arrays of its positions (2 MB each as int64)."""
    sequence = shard_sequence(al.order.Permutation().sequence(10**9, 0, 0), RankInfo(1, 2), "drop")
    count = 2**18
    expected = sequence.at(np.arange(count, dtype=np.int64))
    tracemalloc.start()
    try:
        keys = sequence.take(0, count)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(keys, expected)
    assert peak < keys.nbytes + 2**20


@pytest.mark.parametrize("kind", ["sequential", "permutation", "chunks", "bounds"])
def test_every_sequence_takes_a_range_of_positions(kind):
    n = 1000
    order = _order(kind, n)
    whole = order.keys(n, 2, 0)
    sequences = [
        order.sequence(n, 2, 0),
        RemainingKeys(order.sequence(n, 2, 0), 2, "uneven", [100, 7]),
        shard_sequence(order.sequence(n, 2, 0), RankInfo(1, 3), "pad"),
    ]
    for sequence in sequences:
        span = range(3, len(sequence), 7)
        assert np.array_equal(sequence.at(span), sequence.at(np.array(span, dtype=np.int64)))
    assert np.array_equal(sequences[0].at(range(5, 900, 4)), whole[5:900:4])


@settings(max_examples=60, deadline=None)
@given(n=sizes, kind=kinds, seed=st.integers(0, 100), epoch=st.integers(0, 5), data=st.data())
def test_a_sequence_is_its_order_by_position(n, kind, seed, epoch, data):
    order = _order(kind, n)
    sequence = order.sequence(n, seed, epoch)
    whole = sequence.take(0, n)
    assert len(sequence) == n and np.array_equal(whole, order.keys(n, seed, epoch))
    assert whole.dtype == al.order.index_dtype(n)
    if kind != "sequential":
        assert sorted(whole.tolist()) == list(range(n))
    if n:
        start = data.draw(st.integers(0, n - 1))
        stop = data.draw(st.integers(start, n))
        assert np.array_equal(order.sequence(n, seed, epoch).take(start, stop), whole[start:stop])
        picks = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=20)), dtype=np.int64)
        assert np.array_equal(order.sequence(n, seed, epoch).at(picks), whole[picks])


def _shard_boundaries(starts, n, rank, world, policy):
    """The rank's block boundaries as they were computed from the whole array of window starts."""
    local = -(-(np.asarray(starts) - rank) // world)
    return np.unique(np.clip(local, 0, shard_count(n, RankInfo(rank, world), policy)))


@settings(max_examples=60, deadline=None)
@given(n=sizes, kind=kinds, world=st.integers(1, 7), policy=policies, seed=st.integers(0, 50))
def test_a_sharded_sequence_is_the_sharded_array(n, kind, world, policy, seed):
    order = _order(kind, n)
    whole = order.keys(n, seed, 0)
    for rank in range(world):
        info = RankInfo(rank, world)
        sharded = shard_sequence(order.sequence(n, seed, 0), info, policy)
        assert np.array_equal(sharded.take(0, len(sharded)), shard_keys(whole, info, policy))
        if kind in ("chunks", "bounds"):  # reads cut where the whole-array boundaries were
            _, starts = order.keys_and_windows(n, seed, 0)
            expected = set(_shard_boundaries(starts, n, rank, world, policy).tolist())
            count = len(sharded)
            got = {int(c) for c in sharded.cuts(0, count)}
            assert got == {b for b in expected if 0 < b < count}


def _remaining_reference(order, generations):
    """Elastic resume on whole arrays (how it was computed before orders were sequences)."""
    for generation in generations:
        world, policy = generation["world_size"], generation["policy"]
        n = len(order)
        taken = np.zeros(n, dtype=bool)
        if policy == "drop":
            taken[(n // world) * world :] = True
        for rank, position in enumerate(generation["positions"]):
            count = shard_count(n, RankInfo(rank, world), policy) if position is None else position
            positions = rank + world * np.arange(count, dtype=np.int64)
            taken[positions % n if n else positions] = True
        order = order[~taken]
    return order


@st.composite
def generations(draw, n):
    out = []
    for _ in range(draw(st.integers(1, 3))):
        world, policy = draw(st.integers(1, 6)), draw(policies)
        positions = []
        for rank in range(world):
            share = shard_count(n, RankInfo(rank, world), policy)
            positions.append(draw(st.one_of(st.none(), st.integers(0, share))))
        out.append({"world_size": world, "policy": policy, "positions": positions})
        n = len(_remaining_reference(np.arange(n), out[-1:]))
    return out


@settings(max_examples=80, deadline=None)
@given(n=sizes, kind=kinds, data=st.data())
def test_elastic_remaining_keys_are_the_undelivered_keys_in_order(n, kind, data):
    history = data.draw(generations(n))
    order = _order(kind, n)
    expected = _remaining_reference(order.keys(n, 3, 1), history)
    sequence = order.sequence(n, 3, 1)
    for generation in history:
        sequence = RemainingKeys(
            sequence, generation["world_size"], generation["policy"], generation["positions"]
        )
    assert len(sequence) == len(expected)
    assert np.array_equal(sequence.take(0, len(sequence)), expected)
    if len(expected):
        picks = np.array(data.draw(st.lists(st.integers(0, len(expected) - 1), max_size=10)), np.int64)
        assert np.array_equal(sequence.at(picks), expected[picks])


def test_an_elastic_position_past_a_ranks_share_is_refused():
    with pytest.raises(ValueError, match=r"state\['elastic'\] says rank 1 of 2 received 6"):
        RemainingKeys(al.order.Sequential().sequence(10, 0, 0), 2, "uneven", [2, 6])


@settings(max_examples=30, deadline=None)
@given(n=sizes, size=st.integers(1, 40), window=st.integers(1, 5), seed=st.integers(0, 20))
def test_chunks_of_one_size_need_no_list_and_give_the_order_of_their_bounds(n, size, window, seed):
    bounds = (*range(0, n, size), n) if n else (0,)
    by_size = al.order.Chunks(chunk_size=size, window=window)
    by_bounds = al.order.Chunks(bounds=bounds, window=window)
    assert np.array_equal(by_size.keys(n, seed, 2), by_bounds.keys(n, seed, 2))
    assert np.array_equal(by_size.keys_and_windows(n, seed, 2)[1], by_bounds.keys_and_windows(n, seed, 2)[1])
    assert by_size.window_keys(n) == by_bounds.window_keys(n)


def _collect_ranks(n, world, policy, shuffle, seed=0):
    out = []
    for rank in range(world):
        loader = al.Loader.from_source(
            range(n), shuffle=shuffle, seed=seed, rank=rank, world_size=world, shard_policy=policy
        )
        with loader:
            out.append([int(x) for x in loader])
    return out


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(1, 10),
    delta=st.integers(-1, 2),
    world=st.integers(2, 7),
    policy=policies,
    shuffle=st.sampled_from([False, True, "chunks"]),
)
def test_exactly_once_near_powers_of_two_with_world_sizes_not_dividing_them(k, delta, world, policy, shuffle):
    n = 2**k + delta
    assume(n % world)
    per_rank = _collect_ranks(n, world, policy, shuffle)
    every = sorted(key for keys in per_rank for key in keys)
    if policy == "uneven":
        assert every == list(range(n))
    elif policy == "drop":
        assert len({len(keys) for keys in per_rank}) == 1
        assert len(set(every)) == len(every) and n - len(every) == n % world
    else:
        assert len({len(keys) for keys in per_rank}) == 1
        assert set(every) == set(range(n)) and len(every) - n == world - n % world


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(2, 9),
    delta=st.integers(-1, 2),
    world=st.integers(2, 5),
    policy=policies,
    shuffle=st.sampled_from([False, True, "chunks"]),
    data=st.data(),
)
def test_exact_resume_near_powers_of_two(k, delta, world, policy, shuffle, data):
    n = 2**k + delta
    rank = data.draw(st.integers(0, world - 1))

    def make():
        return al.Loader.from_source(
            range(n), shuffle=shuffle, seed=4, rank=rank, world_size=world, shard_policy=policy
        ).batch(3)

    with make() as loader:
        full = [b.tolist() for b in loader]
    cut = data.draw(st.integers(0, len(full)))
    with make() as loader:
        iterator = iter(loader)
        for _ in range(cut):
            next(iterator)
        state = json.loads(json.dumps(loader.state_dict()))
        iterator.close()
    resumed = make()
    resumed.load_state_dict(state)
    with resumed:
        rest = [b.tolist() for b in resumed]
    assert rest == full[cut:] or (cut == len(full) and state["epoch"] == 1)


HUGE = 10**10


def _peak_bytes(fn):
    """What ``fn()`` returns and the most memory Python and numpy allocated while it ran (after
    a small loader of the same kind ran, so imports and first-use caches are not counted)."""
    with al.Loader.from_source(range(100), shuffle=True, rank=0, world_size=2).batch(64) as warm:
        list(warm)
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shuffle", [False, True, "chunks"])
def test_ten_billion_keys_start_shard_and_resume_in_constant_memory(shuffle):
    def make():
        return al.Loader.from_source(range(HUGE), shuffle=shuffle, seed=7, rank=1, world_size=2).batch(64)

    def first_batches():
        with make() as loader:
            iterator = iter(loader)
            head = [next(iterator).tolist() for _ in range(3)]
            state = loader.state_dict()
            after = next(iterator).tolist()
            iterator.close()
        return head, state, after, len(loader)

    (head, state, after, length), peak = _peak_bytes(first_batches)
    assert peak < 8 * 2**20  # an order of 10^10 keys would be 40 GB
    assert length == HUGE // 2 // 64
    assert all(key % 2 == 1 for key in head[0]) if shuffle is False else len(set(head[0])) == 64
    assert len(json.dumps(state)) < 1024

    def resume():
        resumed = make()
        resumed.load_state_dict(json.loads(json.dumps(state)))
        with resumed:
            return next(iter(resumed)).tolist()

    got, peak = _peak_bytes(resume)
    assert got == after and peak < 8 * 2**20


def test_ten_billion_keys_resume_elastically_in_constant_memory():
    def make(rank, world):
        return al.Loader.from_source(
            range(HUGE), shuffle=True, seed=3, rank=rank, world_size=world, shard_policy="uneven"
        ).batch(16)

    delivered, states = set(), []
    for rank in range(2):
        with make(rank, 2) as loader:
            iterator = iter(loader)
            for _ in range(2 + rank):
                delivered.update(next(iterator).tolist())
            states.append(json.loads(json.dumps(loader.state_dict())))
            iterator.close()

    def first_after():
        firsts = []
        for rank in range(3):
            loader = make(rank, 3)
            loader.load_state_dict(states)
            with loader:
                firsts.append(next(iter(loader)).tolist())
        return firsts

    firsts, peak = _peak_bytes(first_after)
    assert peak < 8 * 2**20
    keys = [key for batch in firsts for key in batch]
    assert len(set(keys)) == len(keys) and not set(keys) & delivered


def _statistics(keys: np.ndarray) -> dict[str, float]:
    n = len(keys)
    values = keys.astype(np.float64)
    return {
        "quality": al.order.quality(keys),
        # z-scores: about N(0, 1) for a uniformly random permutation
        "correlation_z": float(np.corrcoef(np.arange(n), values)[0, 1] * np.sqrt(n)),
        "lag_z": float(np.corrcoef(values[:-1], values[1:])[0, 1] * np.sqrt(n)),
    }


def _gap_ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the adjacent-key gaps of two orders."""
    gaps_a = np.sort(np.abs(np.diff(a.astype(np.int64))))
    gaps_b = np.sort(np.abs(np.diff(b.astype(np.int64))))
    grid = np.concatenate((gaps_a, gaps_b))
    cdf_a = np.searchsorted(gaps_a, grid, side="right") / len(gaps_a)
    cdf_b = np.searchsorted(gaps_b, grid, side="right") / len(gaps_b)
    return float(np.abs(cdf_a - cdf_b).max())


def _pair_chi2(first: np.ndarray, second: np.ndarray, n: int, bins: int = 16) -> float:
    """Chi-square of independence of two key columns binned into ``bins`` ranges (df 225)."""
    table = np.bincount(
        (first.astype(np.int64) * bins // n) * bins + second.astype(np.int64) * bins // n,
        minlength=bins * bins,
    ).reshape(bins, bins)
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("n", [2**17 + 1, 200_000])
def test_the_full_shuffle_is_statistically_like_numpys_permutation(n):
    """Fixed seeds, so deterministic; bounds far from what a random permutation reaches (a
    z-score of 5, a KS distance and chi-square well past their 0.01% points), close to what a
    pattern a training run could notice would give."""
    positions = np.arange(n)
    for seed in range(3):
        ours = al.order.Permutation().keys(n, seed, 0)
        theirs = np.random.default_rng(seed).permutation(n)
        mine, reference = _statistics(ours), _statistics(theirs)
        assert abs(mine["quality"] - reference["quality"]) < 0.01 and mine["quality"] > 0.98
        assert abs(mine["correlation_z"]) < 5 and abs(mine["lag_z"]) < 5
        assert _gap_ks(ours, theirs) < 3 * np.sqrt(2 / n)
        assert _pair_chi2(positions, ours, n) < 225 + 8 * np.sqrt(450)  # position vs key
        assert _pair_chi2(ours[:-1], ours[1:], n) < 225 + 8 * np.sqrt(450)  # neighbours
        next_epoch = al.order.Permutation().keys(n, seed, 1)
        assert abs(np.corrcoef(ours.astype(np.float64), next_epoch.astype(np.float64))[0, 1] * np.sqrt(n)) < 5


def test_a_ten_billion_key_shuffle_spreads_its_keys_like_random_draws():
    """Where the keys need 64 bits: 2^17 consecutive positions of a 10^10-key shuffle (rank 1 of
    3) give keys spread over the range (16 bins), uncorrelated with their position, with adjacent
    gaps distributed as those of uniform draws (numpy's, which at this n are a permutation's with
    near certainty)."""
    n, count = 10**10, 2**17
    sequence = shard_sequence(al.order.Permutation().sequence(n, 5, 0), RankInfo(1, 3), "uneven")
    for first in (0, len(sequence) - count):
        keys = sequence.take(first, first + count)
        assert keys.dtype == np.uint64 and len(np.unique(keys)) == count and int(keys.max()) < n
        bins = np.bincount((keys // (n // 16)).astype(np.int64), minlength=16)
        assert ((bins - count / 16) ** 2 / (count / 16)).sum() < 15 + 8 * np.sqrt(30)  # chi-square, df 15
        correlation = np.corrcoef(np.arange(count), keys.astype(np.float64))[0, 1] * np.sqrt(count)
        assert abs(correlation) < 5
        assert _gap_ks(keys, np.random.default_rng(first).integers(0, n, count)) < 3 * np.sqrt(2 / count)
