"""The seed API (aioloader.compat): config validation, the seed's usage examples as written,
the datasets under torch's DataLoader and under aioloader, and the two backends of
EfficientDataLoader producing equal batches on the same data."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    SequentialSampler,
    WeightedRandomSampler,
)

import aioloader as al
from aioloader.compat import ConfigTypeError, default_image_transform
from aioloader.compat.dataloader import _batch_len, _is_indexable
from aioloader.workers.executor import default_workers

CUDA = torch.cuda.is_available()
SEED_DEFAULTS = {
    "batch_size": 32,
    "num_workers": 4,
    "pin_memory": True,
    "persistent_workers": True,
    "prefetch_factor": 2,
    "drop_last": False,
    "shuffle": True,
    "collate_fn": None,
    "memory_efficient": False,
    "max_memory_usage": 0.8,
    "pin_memory_device": "cuda",
    "non_blocking": True,
    "generator_seed": None,
    "custom_sampler": None,
    "custom_batch_sampler": None,
    "enable_monitoring": True,
    "log_loading_stats": True,
}


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: ``encode`` and ``pad_token_id`` (stateless, so
    every worker process gives the same ids)."""

    pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [sum(map(ord, word)) % 997 + 1 for word in text.split()]


# -- data ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seed-data")
    rng = np.random.default_rng(0)
    images = root / "images"
    for i in range(30):
        folder = images / f"class_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (12 + i % 4, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    text = root / "text.txt"
    text.write_text("".join(f"sample {i} " + "word " * (i % 9) + "\n" for i in range(200)))
    h5 = root / "data.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("features", data=rng.standard_normal((300, 6)).astype(np.float32), chunks=(32, 6))
        f.create_dataset("labels", data=np.arange(300) % 4)
    npy = root / "rows.npy"
    np.save(npy, np.arange(120 * 3, dtype=np.int32).reshape(120, 3))
    jsonl = root / "records.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(50)))
    return {"images": images, "text": text, "h5": h5, "npy": npy, "jsonl": jsonl, "root": root}


def config(**changes) -> al.DataLoaderConfig:
    base = {"batch_size": 8, "num_workers": 0, "pin_memory": False, "shuffle": False}
    return al.DataLoaderConfig(**{**base, **changes})


def assert_batches_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_batches_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_batches_equal(x, y)
    else:
        assert a == b


def both_backends(dataset, cfg) -> tuple[list, list]:
    with (
        al.EfficientDataLoader(dataset, cfg, backend="torch") as theirs,
        al.EfficientDataLoader(dataset, cfg, backend="aio") as ours,
    ):
        expected, got = list(theirs), list(ours)
        if _is_indexable(dataset):  # a stream has no len()
            assert len(theirs) == len(ours) == len(expected)
    return expected, got


# -- DataLoaderConfig --------------------------------------------------------------------------
def test_config_has_every_seed_field_with_its_default():
    fields = {f.name: f.default for f in dataclasses.fields(al.DataLoaderConfig)}
    assert fields == SEED_DEFAULTS


@pytest.mark.skipif(CUDA, reason="checks the no-CUDA fallback")
def test_pin_memory_turns_itself_off_without_cuda():
    with pytest.warns(RuntimeWarning, match="pin_memory"):
        cfg = al.DataLoaderConfig()
    assert cfg.pin_memory is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert al.DataLoaderConfig(pin_memory=False).pin_memory is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", -3),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("num_workers", -1),
        ("num_workers", "4"),
        ("pin_memory", "yes"),
        ("persistent_workers", 1),
        ("prefetch_factor", 0),
        ("drop_last", None),
        ("shuffle", "true"),
        ("collate_fn", 42),
        ("memory_efficient", 0),
        ("max_memory_usage", 0.0),
        ("max_memory_usage", 1.5),
        ("max_memory_usage", "0.8"),
        ("pin_memory_device", "cpu"),
        ("pin_memory_device", "not-a-device"),
        ("pin_memory_device", 0),
        ("non_blocking", "no"),
        ("generator_seed", -1),
        ("generator_seed", 1.0),
        ("custom_sampler", 3),
        ("custom_batch_sampler", 3),
        ("enable_monitoring", None),
        ("log_loading_stats", "on"),
    ],
)
def test_config_rejects_impossible_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        al.DataLoaderConfig(**{"pin_memory": False, field: value})


def test_config_type_errors_are_also_type_errors():
    with pytest.raises(TypeError, match="batch_size"):
        al.DataLoaderConfig(batch_size="32", pin_memory=False)
    assert issubclass(ConfigTypeError, TypeError) and issubclass(ConfigTypeError, ValueError)


def test_config_samplers_are_mutually_exclusive():
    sampler = SequentialSampler(range(4))
    with pytest.raises(ValueError, match="custom_sampler and custom_batch_sampler"):
        al.DataLoaderConfig(
            pin_memory=False,
            custom_sampler=sampler,
            custom_batch_sampler=BatchSampler(sampler, 2, False),
        )


def test_config_is_checked_again_on_replace():
    cfg = config()
    with pytest.raises(ValueError, match="batch_size"):
        dataclasses.replace(cfg, batch_size=0)


def test_loading_mode_values_are_the_sources_modes():
    assert [m.value for m in al.LoadingMode] == list(al.sources.MODES)
    assert al.LoadingMode.LAZY.name == "LAZY" and al.LoadingMode("cached") is al.LoadingMode.CACHED


def test_optimal_num_workers_is_the_pool_rule():
    assert al.optimal_num_workers() == default_workers() == al.DataLoaderFactory.get_optimal_num_workers()
    assert config(num_workers=None).workers == default_workers()


# -- the seed's usage examples, as written ---------------------------------------------------
@pytest.fixture
def seed_config() -> al.DataLoaderConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pin_memory without CUDA
        return al.DataLoaderConfig(batch_size=64, num_workers=8, pin_memory=True, shuffle=True)


def test_seed_example_1_basic_image_loading(data, seed_config):
    image_loader = al.DataLoaderFactory.create_dataloader(
        "image", seed_config, data_path=str(data["images"]), image_size=(224, 224)
    )
    with image_loader:
        batches = list(image_loader)
    images, labels = batches[0]
    assert images.shape == (30, 3, 224, 224) and images.dtype == torch.float32
    assert sorted(labels.tolist()) == sorted(i % 3 for i in range(30))
    device = "cuda" if CUDA else "cpu"
    assert images.device.type == device


def test_seed_example_2_text_loading_with_tokenizer(data, seed_config):
    tokenizer = WordTokenizer()
    text_loader = al.DataLoaderFactory.create_text_dataloader(
        str(data["text"]), seed_config, tokenizer=tokenizer, max_length=512
    )
    with text_loader:
        batches = list(text_loader)
    assert [b["input_ids"].shape for b in batches] == [(64, 512)] * 3 + [(8, 512)]
    lengths = sorted(int(b) for batch in batches for b in batch["attention_mask"].sum(1))
    assert lengths == sorted(2 + i % 9 for i in range(200))


def test_seed_example_3_hdf5_loading(data, seed_config):
    hdf5_loader = al.DataLoaderFactory.create_hdf5_dataloader(
        str(data["h5"]), seed_config, dataset_name="features"
    )
    with hdf5_loader:
        rows = torch.cat(list(hdf5_loader))
    with h5py.File(data["h5"]) as f:
        expected = torch.from_numpy(f["features"][()])
    assert rows.shape == expected.shape
    assert torch.equal(rows[rows[:, 0].argsort()], expected[expected[:, 0].argsort()])


def test_seed_example_4_performance_monitoring(data, seed_config):
    image_loader = al.DataLoaderFactory.create_dataloader(
        "image",
        dataclasses.replace(seed_config, batch_size=4),
        data_path=str(data["images"]),
        image_size=(32, 32),
    )
    monitor = al.DataLoaderPerformanceMonitor()
    monitor.start()
    with image_loader:
        for batch_idx, (images, _labels) in enumerate(image_loader):
            monitor.record_batch(images.size(0))
            if batch_idx >= 5:
                break
    monitor.stop()
    stats = monitor.get_stats()
    for key in ("total_time", "avg_batch_time", "batches_per_second", "avg_memory_usage", "avg_cpu_usage"):
        assert key in stats
    assert stats["total_batches"] == 6 and stats["total_time"] > 0


# -- A/B: the two backends give equal batches on unshuffled data ------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_backends_equal_on_images(data, workers):
    dataset = al.ImageDataset(data["images"], image_size=(20, 24))
    expected, got = both_backends(dataset, config(num_workers=workers, batch_size=7))
    assert len(got) == 5
    assert_batches_equal(expected, got)


@pytest.mark.parametrize("mode", list(al.LoadingMode))
def test_backends_equal_on_text_in_every_mode(data, mode):
    dataset = al.TextDataset(data["text"], WordTokenizer(), max_length=12, loading_mode=mode)
    if mode == "lazy":
        dataset.preferred_executor = "process"  # a long file's choice: tokenize in processes
    expected, got = both_backends(dataset, config(batch_size=32, num_workers=2 if mode == "lazy" else 0))
    assert_batches_equal(expected, got)
    assert expected[0]["input_ids"].shape == (32, 12)


@pytest.mark.parametrize("drop_last", [False, True])
def test_backends_equal_on_hdf5_with_labels(data, drop_last):
    dataset = al.HDF5Dataset(data["h5"], "features", label_name="labels")
    expected, got = both_backends(dataset, config(batch_size=64, drop_last=drop_last))
    assert len(got) == (4 if drop_last else 5)
    assert_batches_equal(expected, got)


def test_backends_equal_on_streams_with_workers(data):
    dataset = al.TextDataset(data["text"], None, max_length=5, loading_mode="streaming")
    expected, got = both_backends(dataset, config(batch_size=16, num_workers=2, shuffle=True))
    assert_batches_equal(expected, got)  # a stream is not shuffled by torch; the reservoir is not
    assert sum(len(b["input_ids"]) for b in got) == 200


def test_backends_equal_on_a_plain_torch_dataset(data):
    dataset = [(np.full(3, i, dtype=np.float32), i) for i in range(50)]
    expected, got = both_backends(dataset, config(batch_size=16, num_workers=2))
    assert_batches_equal(expected, got)


def test_backends_equal_with_an_al_order_sampler(data):
    dataset = al.HDF5Dataset(data["h5"], "labels")
    sampler = al.order.Weighted(np.linspace(0.1, 1.0, 300), num_samples=100)
    expected, got = both_backends(dataset, config(batch_size=10, custom_sampler=sampler, generator_seed=7))
    assert_batches_equal(expected, got)


def test_backends_equal_with_a_batch_sampler(data):
    dataset = al.HDF5Dataset(data["h5"], "features")
    batches = BatchSampler(SequentialSampler(range(300)), batch_size=50, drop_last=False)
    expected, got = both_backends(dataset, config(custom_batch_sampler=batches, num_workers=2))
    assert len(got) == 6
    assert_batches_equal(expected, got)


def test_backends_equal_with_the_seeds_collates(data):
    dataset = al.ImageDataset(data["images"], image_size=16)
    collate = al.CustomCollateFn.image_collate
    expected, got = both_backends(dataset, config(batch_size=10, collate_fn=collate))
    assert_batches_equal(expected, got)
    lines = al.sources.TextLines(data["text"])
    cfg = config(batch_size=20, collate_fn=al.CustomCollateFn.text_collate)
    expected, got = both_backends(lines, cfg)
    assert_batches_equal(expected, got)


# -- the aio backend: order, samplers, state ---------------------------------------------------
def test_aio_shuffle_is_seeded_per_epoch_and_complete(data):
    dataset = al.HDF5Dataset(data["h5"], "labels")
    keys = np.arange(300) % 4

    def epochs(loader, n):
        return [torch.cat(list(loader)).tolist() for _ in range(n)]

    cfg = config(batch_size=32, shuffle=True, generator_seed=3)
    with al.EfficientDataLoader(dataset, cfg) as a, al.EfficientDataLoader(dataset, cfg) as b:
        first, second = epochs(a, 2), epochs(b, 2)
    assert first == second
    assert first[0] != first[1]
    assert sorted(first[0]) == sorted(keys.tolist())


def test_aio_converts_a_torch_weighted_sampler(data):
    dataset = al.HDF5Dataset(data["h5"], "labels")
    weights = torch.zeros(300, dtype=torch.float64)
    weights[:10] = 1.0
    sampler = WeightedRandomSampler(weights, num_samples=40)
    with al.EfficientDataLoader(dataset, config(custom_sampler=sampler, generator_seed=1)) as loader:
        labels = torch.cat(list(loader))
        assert len(loader) == 5
    assert len(labels) == 40 and set(labels.tolist()) <= set(range(4))


def test_aio_resumes_from_a_saved_state(data, tmp_path):
    dataset = al.HDF5Dataset(data["h5"], "features")
    cfg = config(batch_size=20, shuffle=True, generator_seed=11)
    with al.EfficientDataLoader(dataset, cfg) as full:
        uninterrupted = list(full)
    with al.EfficientDataLoader(dataset, cfg) as first:
        iterator = iter(first)
        for _ in range(6):
            next(iterator)
        (tmp_path / "state.json").write_text(json.dumps(first.state_dict()))
        iterator.close()
    with al.EfficientDataLoader(dataset, cfg) as resumed:
        resumed.load_state_dict(json.loads((tmp_path / "state.json").read_text()))
        rest = list(resumed)
    assert_batches_equal(uninterrupted[6:], rest)


# -- a DistributedSampler on the aio backend ----------------------------------------------------
DDP_ITEMS = list(range(24))


def ddp_epochs(
    rank: int, world: int, calls: list[list[tuple[str, int]]]
) -> tuple[list[list[int]], list[int]]:
    """One aio loader over ``rank`` of ``world`` with a shuffling DistributedSampler: before
    epoch ``k`` it makes the ``set_epoch`` calls ``calls[k]`` (("sampler" or "loader", epoch)),
    then iterates. The indices of each epoch, and the sampler's epoch after each."""
    sampler = DistributedSampler(DDP_ITEMS, num_replicas=world, rank=rank, shuffle=True, seed=5)
    epochs, sampler_epochs = [], []
    with al.EfficientDataLoader(DDP_ITEMS, config(batch_size=4, custom_sampler=sampler)) as loader:
        for before in calls:
            for target, epoch in before:
                (sampler if target == "sampler" else loader).set_epoch(epoch)
            epochs.append(torch.cat(list(loader)).tolist())
            sampler_epochs.append(sampler.epoch)
    return epochs, sampler_epochs


def test_aio_follows_the_distributed_samplers_set_epoch():
    """The DDP idiom ``sampler.set_epoch(e)`` chooses the epoch, as ``loader.set_epoch(e)``."""
    epochs = [0, 3, 1, 4]
    by_rank = []
    for rank in range(3):
        via_sampler, _ = ddp_epochs(rank, 3, [[("sampler", e)] for e in epochs])
        via_loader, _ = ddp_epochs(rank, 3, [[("loader", e)] for e in epochs])
        assert via_sampler == via_loader
        assert len({tuple(order) for order in via_sampler}) == len(epochs)  # a new order each epoch
        by_rank.append(via_sampler)
    for k in range(len(epochs)):  # each epoch: the ranks share the items out exactly
        assert sorted(i for orders in by_rank for i in orders[k]) == DDP_ITEMS
    alone = DistributedSampler(DDP_ITEMS, num_replicas=1, rank=0, shuffle=True, seed=5)
    alone.set_epoch(3)
    assert sorted(ddp_epochs(0, 1, [[("sampler", 3)]])[0][0]) == sorted(alone)


def test_aio_distributed_sampler_epoch_set_before_the_loader_is_built():
    sampler = DistributedSampler(DDP_ITEMS, num_replicas=2, rank=1, shuffle=True, seed=5)
    sampler.set_epoch(6)
    with al.EfficientDataLoader(DDP_ITEMS, config(batch_size=4, custom_sampler=sampler)) as loader:
        first = torch.cat(list(loader)).tolist()
    assert [first] == ddp_epochs(1, 2, [[("loader", 6)]])[0]


def test_aio_distributed_sampler_epoch_most_recent_set_epoch_wins():
    """Without calls each iteration moves to the next epoch; else the latest call decides,
    and ``loader.set_epoch`` also moves the sampler (as on the torch backend)."""
    reference, _ = ddp_epochs(0, 2, [[("loader", e)] for e in range(6)])
    untouched, sampler_epochs = ddp_epochs(0, 2, [[], []])
    assert untouched == reference[:2] and sampler_epochs == [0, 0]
    mixed, sampler_epochs = ddp_epochs(
        0,
        2,
        [
            [("sampler", 2), ("loader", 5)],
            [("loader", 1), ("sampler", 4)],
            [("sampler", 3)],
            [],  # no call: the next epoch
        ],
    )
    assert mixed == [reference[5], reference[4], reference[3], reference[4]]
    assert sampler_epochs == [5, 4, 3, 3]


def test_torch_backend_has_no_state_or_async(data):
    dataset = al.HDF5Dataset(data["h5"], "labels")
    with al.EfficientDataLoader(dataset, config(), backend="torch") as loader:
        with pytest.raises(TypeError, match="backend='aio'"):
            loader.state_dict()
        with pytest.raises(TypeError, match="backend='aio'"):
            loader.__aiter__()


async def test_aio_backend_async_iteration(data):
    dataset = al.HDF5Dataset(data["h5"], "labels")
    with al.EfficientDataLoader(dataset, config(batch_size=100)) as loader:
        batches = [b async for b in loader]
    assert torch.equal(torch.cat(batches), torch.arange(300) % 4)


def test_get_stats_reports_timing_totals_memory_and_stages(data):
    dataset = al.HDF5Dataset(data["h5"], "features")
    with al.EfficientDataLoader(dataset, config(batch_size=50)) as loader:
        list(loader)
        list(loader)
        stats = loader.get_stats()
    assert stats["backend"] == "aio" and stats["epochs"] == 2
    assert stats["batches"] == 12 and stats["samples"] == 600
    for key in ("total_time", "avg_batch_time", "batches_per_second", "avg_memory_usage", "avg_cpu_usage"):
        assert key in stats
    assert stats["memory"]["total_gb"] > 0
    assert stats["pipeline"]["batches"] == 6
    with al.EfficientDataLoader(dataset, config(enable_monitoring=False), backend="torch") as loader:
        list(loader)
        assert "total_time" not in loader.get_stats()


def test_loader_arguments_are_checked(data):
    dataset = al.HDF5Dataset(data["h5"], "labels")
    with pytest.raises(ValueError, match="backend"):
        al.EfficientDataLoader(dataset, config(), backend="jax")
    with pytest.raises(TypeError, match="config"):
        al.EfficientDataLoader(dataset, {"batch_size": 4})
    with pytest.raises(ValueError, match="dataset must be"):
        al.DataLoaderFactory.create_dataloader("video", data_path=data["root"])
    with pytest.raises(ValueError, match="data_path"):
        al.DataLoaderFactory.create_dataloader("image")


def test_torch_backend_persistent_workers_stop_on_close(data):
    dataset = al.HDF5Dataset(data["h5"], "labels")
    loader = al.EfficientDataLoader(dataset, config(num_workers=2, persistent_workers=True), backend="torch")
    assert len(list(loader)) == len(list(loader)) == 38
    loader.close()  # the leak check fails the test if a worker process is left


# -- the datasets, alone ---------------------------------------------------------------------
def test_image_dataset_default_transform_is_the_seeds(data):
    dataset = al.ImageDataset(data["images"], image_size=(8, 10))
    image, label = dataset[4]
    path = dataset.image_paths[4]
    assert label == dataset.class_to_idx[path.parent.name] and dataset.classes == [
        "class_0",
        "class_1",
        "class_2",
    ]
    with Image.open(path) as opened:
        resized = opened.convert("RGB").resize((10, 8), Image.Resampling.BILINEAR)
    raw = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert image.shape == (3, 8, 10)
    assert torch.allclose(image, (raw - mean) / std, atol=0.05)
    assert torch.equal(default_image_transform((8, 10))(Image.open(path).convert("RGB")), image)


@pytest.mark.parametrize("mode", ["lazy", "eager", "cached"])
def test_datasets_work_under_torch_dataloader_and_aioloader(data, mode):
    datasets = [
        al.ImageDataset(data["images"], image_size=8, loading_mode=mode, cache_size=4),
        al.TextDataset(data["text"], WordTokenizer(), max_length=6, loading_mode=mode),
        al.HDF5Dataset(data["h5"], "features", loading_mode=mode),
        al.MemoryEfficientDataset(data["npy"], loading_mode=mode),
    ]
    for dataset in datasets:
        assert isinstance(dataset, torch.utils.data.Dataset) and isinstance(dataset, al.BaseDataset)
        expected = list(DataLoader(dataset, batch_size=9, num_workers=2))
        with al.Loader.from_source(dataset).batch(9) as loader:
            got = list(loader)
        assert_batches_equal(expected, got)
        assert len(dataset) == sum(_batch_len(b) for b in got)


def test_streaming_datasets_are_streams_for_aioloader(data):
    dataset = al.TextDataset(data["text"], None, max_length=4, loading_mode=al.LoadingMode.STREAMING)
    with pytest.raises(TypeError, match="streaming"):
        dataset[0]
    with al.Loader.from_source(dataset).batch(50) as loader:
        got = list(loader)
    assert [len(b["input_ids"]) for b in got] == [50] * 4
    assert torch.equal(got[0]["input_ids"][0], torch.tensor([ord(c) for c in "samp"]))


def test_cached_image_dataset_hits_its_cache(data):
    dataset = al.ImageDataset(data["images"], image_size=8, loading_mode="cached", cache_size=100)
    for _ in range(2):
        for i in range(len(dataset)):
            dataset[i]
    stats = dataset.cache_stats()
    assert stats["hits"] == 30 and stats["misses"] == 30


def test_memory_efficient_dataset_picks_its_mode_from_the_budget(data):
    roomy = al.MemoryEfficientDataset(data["npy"], max_memory_usage=0.8)
    assert roomy.loading_mode is al.LoadingMode.EAGER
    tight = al.MemoryEfficientDataset(data["npy"], max_memory_usage=1e-15)
    assert tight.loading_mode is al.LoadingMode.LAZY
    assert torch.equal(tight[5], torch.tensor([15, 16, 17], dtype=torch.int32))
    assert torch.equal(roomy[119], tight[119])
    assert roomy.get_memory_stats()["budget_gb"] > 0
    h5 = al.MemoryEfficientDataset(data["h5"], dataset_name="labels")
    assert int(h5[5]) == 1
    assert al.MemoryEfficientDataset(data["jsonl"])[3] == {"id": 3}
    assert al.MemoryEfficientDataset(data["text"])[0] == "sample 0 "
    image, label = al.MemoryEfficientDataset(data["images"])[0]
    assert image.dtype == torch.uint8 and label == 0
    with pytest.raises(ValueError, match="dataset_name"):
        al.MemoryEfficientDataset(data["h5"])


def test_dataset_arguments_are_checked(data):
    with pytest.raises(ValueError, match="loading_mode"):
        al.ImageDataset(data["images"], loading_mode="mmap")
    with pytest.raises(TypeError, match="image_size"):
        al.ImageDataset(data["images"], image_size="big")
    with pytest.raises(ValueError, match="cache_size"):
        al.ImageDataset(data["images"], cache_size=0)
    with pytest.raises(ValueError, match="max_length"):
        al.TextDataset(data["text"], max_length=0)
    with pytest.raises(TypeError, match="dataset_name"):
        al.HDF5Dataset(data["h5"], "")
    with pytest.raises(ValueError, match="max_memory_usage"):
        al.MemoryEfficientDataset(data["npy"], max_memory_usage=2)


def test_memory_monitor_as_the_seed_uses_it():
    monitor = al.MemoryMonitor(max_memory_usage=0.8)
    monitor.start_monitoring()
    stats = monitor.get_memory_stats()
    assert 0 < stats["budget_gb"] <= stats["available_gb"]
    assert monitor.check_memory_constraint(1)
    assert not monitor.check_memory_constraint(int(stats["total_gb"] * 2**31))
