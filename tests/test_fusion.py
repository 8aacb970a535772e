"""Map-then-batch fusion (aioloader._run.fusion): ``.map(fn, executor=pool).batch(n, collate)``
runs fn and the collate per batch in the pool. What the user sees must not change: the same
batches in the same order, resume, stats per sample in the order written, errors naming the
stage and the sample key; and where it could change something (skip), it does not apply."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import aioloader as al
from aioloader.collate import pad


def tokens(line: str) -> list[int]:
    """A pure-Python tokenizer: characters to ids."""
    return [ord(c) for c in line]


def image(key: int) -> np.ndarray:
    return np.full((3, 8, 8), key % 251, dtype=np.uint8)


def fails_on_13(x: int) -> int:
    if x == 13:
        raise KeyError(f"no sample {x}")
    return x


def mixed_shapes(x: int) -> np.ndarray:
    return np.zeros(2 if x == 21 else 3)


def _lines(n: int) -> list[str]:
    return ["ab" * (i % 9 + 1) for i in range(n)]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def _stage(stats: dict, name: str) -> dict:
    return next(s for s in stats["stages"] if s["name"] == name)


@pytest.mark.parametrize("executor", ["thread", "process", "auto"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_fused_batches_equal_the_inline_ones(executor, drop_last):
    lines = _lines(203)

    def build(ex: str) -> al.Loader:
        return (
            al.Loader.from_source(lines, shuffle=True, seed=3)
            .map(tokens, executor=ex, concurrency=2)
            .batch(16, collate=pad, drop_last=drop_last)
        )

    with build("inline") as reference:
        epochs = [list(reference) for _ in range(2)]
    with build(executor) as loader:
        for expected in epochs:  # the second epoch reuses the pool and the placement
            got = list(loader)
            assert len(got) == len(expected) == (12 if drop_last else 13)
            assert all(_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_fused_stack_of_arrays_through_processes():
    keys = list(range(100))
    with al.Loader.from_source(keys).map(image, executor="process", concurrency=2).batch(32) as loader:
        batches = list(loader)
    assert [b.shape[0] for b in batches] == [32, 32, 32, 4]
    assert torch.equal(
        torch.cat(batches)[:, 0, 0, 0], torch.tensor([k % 251 for k in keys], dtype=torch.uint8)
    )


def test_stats_count_samples_in_the_order_written():
    loader = al.Loader.from_source(_lines(100)).map(tokens, executor="thread").batch(10, collate=pad)
    with loader:
        assert len(list(loader)) == 10
        stats = loader.stats()
    json.dumps(stats)
    assert [s["name"] for s in stats["stages"]] == ["source", "read", "map(tokens)", "batch"]
    mapped = _stage(stats, "map(tokens)")
    assert (mapped["items_in"], mapped["items_out"], mapped["fused"]) == (100, 100, "batch")
    batched = _stage(stats, "batch")
    assert (batched["items_in"], batched["items_out"], batched["fused"]) == (100, 10, None)


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_failure_names_the_map_stage_and_the_sample_key(executor):
    loader = al.Loader.from_source(list(range(40))).map(fails_on_13, executor=executor).batch(8)
    with loader, pytest.raises(KeyError) as info:
        list(loader)
    assert info.value.stage == "map(fails_on_13)"
    assert info.value.key == 13


def test_a_collate_failure_names_the_batch_stage_and_its_keys():
    loader = al.Loader.from_source(list(range(40))).map(mixed_shapes, executor="process").batch(8)
    with loader, pytest.raises(Exception) as info:
        list(loader)
    assert info.value.stage == "batch"
    assert info.value.key == list(range(16, 24))


def test_skip_is_not_fused_batches_stay_full():
    loader = (
        al.Loader.from_source(list(range(40)))
        .map(fails_on_13, executor="process", on_error="skip", max_failures=1)
        .batch(8)
    )
    with loader:
        sizes = [len(b) for b in loader]
        assert _stage(loader.stats(), "map(fails_on_13)")["fused"] is None
    assert sizes == [8, 8, 8, 8, 7]  # the failed sample's place is filled by the next ones


@pytest.mark.parametrize("k", [0, 3, 7])
def test_resume_mid_epoch_through_a_fused_stage(k):
    lines = _lines(150)

    def build() -> al.Loader:
        return (
            al.Loader.from_source(lines, shuffle=True, seed=5)
            .map(tokens, executor="process", concurrency=2)
            .batch(16, collate=pad)
        )

    expected = list(
        al.Loader.from_source(lines, shuffle=True, seed=5)
        .map(tokens, executor="inline")
        .batch(16, collate=pad)
    )
    with build() as loader:
        it = iter(loader)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(loader.state_dict()))
        it.close()
    with build() as resumed:
        resumed.load_state_dict(state)
        rest = list(resumed)
    assert all(_equal(a, b) for a, b in zip(rest, expected[k:], strict=True))


class DieOnceOn:
    """Kills its worker the first time it sees each of ``keys`` (marker files, across processes)."""

    def __init__(self, marker_dir, keys: tuple[int, ...]) -> None:
        self.marker_dir, self.keys = str(marker_dir), keys

    def __call__(self, x: int) -> int:
        if x in self.keys:
            try:
                os.close(os.open(os.path.join(self.marker_dir, str(x)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return x
            os._exit(3)
        return x


@pytest.mark.slow
def test_samples_that_kill_their_worker_once_cost_their_own_attempts_not_the_batchs(tmp_path):
    # three deaths in one batch: unfused, each sample has its own attempts and the epoch ends
    # exactly; a fused batch must do the same, not give up after three deaths in all
    loader = (
        al.Loader.from_source(list(range(64)))
        .map(DieOnceOn(tmp_path, (17, 19, 21)), executor="process", concurrency=2)
        .batch(8)
    )
    with loader:
        batches = list(loader)
        assert _stage(loader.stats(), "map(DieOnceOn)")["fused"] == "batch"
    assert torch.equal(torch.cat(batches), torch.arange(64))
    assert sorted(os.listdir(tmp_path)) == ["17", "19", "21"]


class NoisyDieOnceOn(DieOnceOn):
    """DieOnceOn, returning the sample plus a draw from numpy's global RNG."""

    def __call__(self, x: int) -> float:
        return super().__call__(x) + float(np.random.random())


@pytest.mark.slow
def test_a_batch_whose_worker_died_once_comes_out_as_undisturbed_random_draws_included(tmp_path):
    """The batch is first run again whole with the seed it ran with: fn's and the collate's
    draws from the worker's global RNGs are those of a run where nothing died."""

    def run(marker_dir) -> list[torch.Tensor]:
        fn = NoisyDieOnceOn(marker_dir, (21,) if marker_dir else ())
        loader = al.Loader.from_source(range(48), seed=3).map(fn, executor="process", concurrency=2)
        with loader.batch(8, collate=random_mask) as batched:
            return list(batched)

    undisturbed = run(None)
    disturbed = run(tmp_path)
    assert os.listdir(tmp_path) == ["21"]  # its worker died once
    assert all(torch.equal(a, b) for a, b in zip(undisturbed, disturbed, strict=True))


def random_mask(samples: list[int]) -> torch.Tensor:
    """A collate that draws from torch's global RNG (as Hugging Face's MLM collator does)."""
    batch = torch.tensor(samples, dtype=torch.float32)
    return batch * (torch.rand(len(samples)) > 0.5)


class NotReentrant:
    """A collate that must not run twice at once (a fast tokenizer's "Already borrowed")."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()

    def __call__(self, samples: list[int]) -> list[int]:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("Already borrowed")
        try:
            sum(i * i for i in range(20_000))  # long enough for threads to overlap
            return list(samples)
        finally:
            self._lock.release()


def slow_identity(x: int) -> int:
    sum(i for i in range(2_000))
    return x


def test_a_thread_fused_collate_runs_in_order_on_the_loop_as_unfused():
    """Threads run fn; the collate runs batch by batch in order, so global-RNG draws equal the
    inline run's and a non-reentrant collate is never entered twice."""

    def run(executor: str, collate) -> list:
        torch.manual_seed(0)
        with al.Loader.from_source(range(96)).map(slow_identity, executor=executor, concurrency=4) as loader:
            return list(loader.batch(8, collate=collate))

    inline = run("inline", random_mask)
    assert all(torch.equal(a, b) for a, b in zip(run("thread", random_mask), inline, strict=True))
    assert [x for b in run("thread", NotReentrant()) for x in b] == list(range(96))


def test_a_process_fused_collate_draws_the_same_whatever_the_workers():
    """In processes the collate runs in the worker, whose global RNGs are seeded per batch from
    the loader's seed, the epoch and the batch's position: the same across runs and pool sizes,
    different across epochs."""

    def build(workers: int, seed: int = 0) -> al.Loader:
        source = al.Loader.from_source(range(64), seed=seed)
        return source.map(slow_identity, executor="process", concurrency=workers).batch(
            8, collate=random_mask
        )

    with build(2) as loader:
        first = [list(loader) for _ in range(2)]
        loader.set_epoch(0)  # a second run of epoch 0, on workers whose RNGs have drawn since
        again = list(loader)
    with build(1) as loader:
        one_worker = [list(loader) for _ in range(2)]
    for a, b in zip(first[0], again, strict=True):
        assert torch.equal(a, b)
    for a, c in zip(first[0] + first[1], one_worker[0] + one_worker[1], strict=True):
        assert torch.equal(a, c)
    assert not all(torch.equal(a, b) for a, b in zip(first[0], first[1], strict=True))  # epochs differ
    with build(1, seed=1) as loader:
        other_seed = list(loader)
    assert not all(torch.equal(a, b) for a, b in zip(first[0], other_seed, strict=True))
    # two ranks: their j-th batches draw differently (the masks of equal samples differ)
    masks = []
    for rank in range(2):
        source = al.Loader.from_source([1] * 64, seed=0, rank=rank, world_size=2)
        with source.map(slow_identity, executor="process", concurrency=1).batch(8, collate=random_mask) as loader:
            masks.append(list(loader))
    assert not all(torch.equal(a, b) for a, b in zip(*masks, strict=True))
