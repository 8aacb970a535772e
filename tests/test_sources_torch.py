"""torch Datasets as sources: map-style read by index (batched when they can), IterableDatasets
read once per epoch, never duplicated, whatever the concurrency after them."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

import aioloader as al


class Squares(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, index * index])


class BatchedSquares(Squares):
    """Implements torch's batched fetch: the loader should call it once per block."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.batched_calls = 0
        self.single_calls = 0

    def __getitem__(self, index: int) -> torch.Tensor:
        self.single_calls += 1
        return super().__getitem__(index)

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        self.batched_calls += 1
        return [torch.tensor([i, i * i]) for i in indices]


class Counting(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.iterations = 0

    def __iter__(self):
        self.iterations += 1
        return iter(range(self.n))


def test_map_style_dataset() -> None:
    dataset = Squares(100)
    with al.Loader.from_source(dataset).batch(32) as loader:
        got = torch.cat(list(loader))
    assert torch.equal(got, torch.stack([dataset[i] for i in range(100)]))
    tensors = TensorDataset(torch.arange(10), torch.arange(10) * 2)
    with al.Loader.from_source(tensors, shuffle=True).batch(10) as loader:
        ((x, y),) = list(loader)
    assert torch.equal(y, x * 2) and sorted(x.tolist()) == list(range(10))


def test_map_style_dataset_with_getitems_is_read_per_block() -> None:
    dataset = BatchedSquares(256)
    with al.Loader.from_source(dataset).batch(64) as loader:
        got = torch.cat(list(loader))
    assert torch.equal(got[:, 0], torch.arange(256))
    assert dataset.batched_calls == 4 and dataset.single_calls == 0


def test_iterable_dataset_is_read_once_never_duplicated() -> None:
    dataset = Counting(1000)
    loader = al.Loader.from_source(dataset).map(lambda x: x + 1, executor="thread", concurrency=4)
    with loader:
        first = list(loader)
        assert dataset.iterations == 1
        second = list(loader)
    assert first == second == list(range(1, 1001))  # each item once, in order
    assert dataset.iterations == 2  # once per epoch


def test_iterable_dataset_sharded_by_rank_covers_it_once() -> None:
    dataset = Counting(101)
    seen = []
    for rank in range(3):
        with al.Loader.from_source(dataset, rank=rank, world_size=3, shard_policy="uneven") as loader:
            seen += list(loader)
    assert sorted(seen) == list(range(101))
    assert dataset.iterations == 3  # once per rank: no rank reads another's share twice
