"""A user's map-style dataset under a process map runs its ``__getitem__`` in the workers, as
torch DataLoader's workers do (``aioloader.sources._dataset_reader``): the dataset is pickled
into each worker once, tasks carry keys. Measured by the parent's CPU time while a dataset
whose ``__getitem__`` burns CPU is loaded, and by the PIDs that ran ``__getitem__``."""

from __future__ import annotations

import os
import threading
import time

import psutil
from torch.utils.data import Dataset, Subset

import aioloader as al

BURN_S = 0.005  # CPU seconds each __getitem__ burns
N = 100


class Burning(Dataset):
    """A dataset whose ``__getitem__`` decodes (burns CPU); items say which process ran it."""

    def __init__(self, n: int = N) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> tuple[int, int]:
        started = time.thread_time()
        while time.thread_time() - started < BURN_S:
            pass
        return key, os.getpid()


class Unpicklable(Burning):
    def __init__(self, n: int = N) -> None:
        super().__init__(n)
        self.lock = threading.Lock()


def tag(item: tuple[int, int]) -> tuple[int, int, int]:
    key, read_by = item
    return key, read_by, os.getpid()


def _cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _measured(loader) -> tuple[list, float]:
    """Epoch 0 starts the pool; the items and the parent's CPU seconds of epoch 1."""
    list(loader)
    before = _cpu_s()
    items = list(loader)
    return items, _cpu_s() - before


def _workers() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _check(items: list, workers: set[int], spent: float) -> None:
    assert sorted(key for key, _, _ in items) == list(range(N))
    readers = {read_by for _, read_by, _ in items}
    assert readers <= workers and os.getpid() not in readers
    # the parent does not decode: its CPU share is a small part of the decoding's
    assert spent < 0.3 * N * BURN_S, f"the parent spent {spent:.3f} s for {N * BURN_S:.3f} s of reads"


def test_getitem_runs_in_the_process_maps_workers() -> None:
    loader = (
        al.Loader.from_source(Burning(), shuffle=True, seed=0)
        .map(tag, executor="process", concurrency=2)
        .batch(10, collate=al.collate.as_list)
    )
    with loader:
        batches, spent = _measured(loader)
        _check([item for batch in batches for item in batch], _workers(), spent)


def test_getitem_runs_in_the_workers_unbatched_and_through_a_subset() -> None:
    with al.Loader.from_source(Subset(Burning(N + 5), range(N))).map(tag, executor="process", concurrency=2) as loader:
        items, spent = _measured(loader)
        _check(items, _workers(), spent)


def test_efficient_dataloader_runs_getitem_in_its_workers() -> None:
    config = al.DataLoaderConfig(batch_size=10, num_workers=2, collate_fn=al.collate.as_list, pin_memory=False)
    with al.EfficientDataLoader(Burning(), config) as loader:
        batches, spent = _measured(loader)
        items = [(key, read_by, read_by) for batch in batches for key, read_by in batch]
        _check(items, _workers(), spent)


def test_unpicklable_datasets_and_other_executors_read_where_they_did() -> None:
    with al.Loader.from_source(Unpicklable(20)).map(tag, executor="process", concurrency=1) as loader:
        assert {read_by for _, read_by, _ in loader} == {os.getpid()}
    for executor in ("thread", "inline"):
        with al.Loader.from_source(Burning(20)).map(tag, executor=executor) as loader:
            assert {read_by for _, read_by, _ in loader} == {os.getpid()}
