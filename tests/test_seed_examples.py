"""Seed 000's four usage examples ("Usage Examples" in ../shared/seeds/000_*.txt), each copied as
written with only the data paths replaced, then checked on what it yields. The seed calls the
factory with its own positional order: ``create_dataloader(dataset, config)``,
``create_text_dataloader(path, config, max_length=512)``,
``create_hdf5_dataloader(path, config, dataset_name="features")``."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from aioloader import (
    CustomCollateFn,
    DataLoaderConfig,
    DataLoaderFactory,
    HDF5Dataset,
    ImageDataset,
    LoadingMode,
    MemoryEfficientDataset,
    TextDataset,
)

pytestmark = pytest.mark.filterwarnings("ignore:DataLoaderConfig.pin_memory:RuntimeWarning")  # no CUDA here

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("seed000")
    rng = np.random.default_rng(0)
    images = root / "images"
    for i in range(40):
        folder = images / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    texts = root / "texts.txt"
    texts.write_text("".join(f"line {i} " + "ab " * (i % 7) + "\n" for i in range(50)))
    h5 = root / "large_dataset.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("features", data=np.arange(200 * 4, dtype=np.float32).reshape(200, 4))
    return {"images": str(images), "texts": str(texts), "h5": str(h5)}


def custom_tokenizer(text: str) -> list[int]:
    """The seed leaves ``custom_tokenizer`` undefined: a callable returning token ids."""
    return [len(word) for word in text.split()]


def test_basic_image_data_loading(paths):
    # -- seed 000, "Basic Image Data Loading" ("path/to/images" replaced) --
    # Create image dataset
    dataset = ImageDataset(
        data_path=paths["images"], image_size=(224, 224), loading_mode=LoadingMode.LAZY, cache_size=1000
    )

    # Configure DataLoader
    config = DataLoaderConfig(
        batch_size=32, num_workers=4, pin_memory=True, persistent_workers=True, prefetch_factor=2
    )

    # Create efficient DataLoader
    dataloader = DataLoaderFactory.create_dataloader(dataset, config)

    # Use DataLoader
    for batch in dataloader:
        images, targets = batch
        # Process batch
        pass
    # -- end of the seed's code --
    dataloader.close()
    assert images.shape == (8, 3, 224, 224) and images.dtype == torch.float32  # 40 = 32 + 8
    assert targets.shape == (8,) and images.device.type == ("cuda" if CUDA else "cpu")
    assert dataloader.get_stats()["samples"] == 40


def test_advanced_text_data_loading(paths):
    # -- seed 000, "Advanced Text Data Loading" ("path/to/texts" replaced) --
    # Create text dataset
    dataset = TextDataset(
        data_path=paths["texts"], tokenizer=custom_tokenizer, max_length=512, loading_mode=LoadingMode.CACHED
    )

    # Configure DataLoader with custom collate function
    config = DataLoaderConfig(
        batch_size=16,
        num_workers=2,
        pin_memory=True,
        collate_fn=CustomCollateFn.variable_length_collate,
        memory_efficient=True,
        max_memory_usage=0.7,
    )

    # Create efficient DataLoader
    dataloader = DataLoaderFactory.create_text_dataloader(paths["texts"], config, max_length=512)
    # -- end of the seed's code --
    with dataloader:
        batches = list(dataloader)
    assert dataset[1]["input_ids"][:3].tolist() == [4, 1, 2]  # "line 1 ab": the custom tokenizer
    assert [b["input_ids"].shape for b in batches] == [(16, 512)] * 3 + [(2, 512)]
    lines = Path(paths["texts"]).read_text().splitlines()  # no tokenizer given: characters
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    assert sorted(lengths) == sorted(map(len, lines))
    assert dataloader.dataset.max_length == 512


def test_hdf5_data_loading(paths):
    # -- seed 000, "HDF5 Data Loading" ("large_dataset.h5" replaced) --
    # Create HDF5 dataset
    dataset = HDF5Dataset(data_path=paths["h5"], dataset_name="features", loading_mode=LoadingMode.STREAMING)

    # Configure DataLoader for large datasets
    config = DataLoaderConfig(
        batch_size=64,
        num_workers=8,
        pin_memory=False,  # May not help with HDF5
        persistent_workers=True,
        memory_efficient=True,
        max_memory_usage=0.6,
    )

    # Create efficient DataLoader
    dataloader = DataLoaderFactory.create_hdf5_dataloader(paths["h5"], config, dataset_name="features")
    # -- end of the seed's code --
    with dataloader:
        rows = torch.cat(list(dataloader))
    assert sorted(rows[:, 0].tolist()) == [4.0 * i for i in range(200)]
    assert sum(1 for _ in dataset) == 200  # the streaming dataset reads the same rows


def test_memory_efficient_loading(paths, capsys):
    # -- seed 000, "Memory-Efficient Loading" ("path/to/data" replaced) --
    # Create memory-efficient dataset
    dataset = MemoryEfficientDataset(
        data_path=paths["images"], max_memory_usage=0.8, loading_mode=LoadingMode.CACHED
    )

    # Configure DataLoader with memory constraints
    config = DataLoaderConfig(
        batch_size=16,
        num_workers=2,
        pin_memory=True,
        memory_efficient=True,
        max_memory_usage=0.8,
        enable_monitoring=True,
    )

    # Create efficient DataLoader
    dataloader = DataLoaderFactory.create_dataloader(dataset, config)

    # Monitor performance
    for batch in dataloader:
        images, targets = batch
        # Process batch
        pass

    # Get performance stats
    stats = dataloader.get_stats()
    print(f"Batches per second: {stats['batches_per_second']:.2f}")
    print(f"Average memory usage: {stats['avg_memory_usage']:.1f}%")
    # -- end of the seed's code --
    dataloader.close()
    assert images.shape == (8, 3, 20, 24) and images.dtype == torch.uint8  # 40 = 16 + 16 + 8
    assert targets.shape == (8,)
    assert stats["batches_per_second"] > 0 and 0 < stats["avg_memory_usage"] <= 100
    for key in ("total_time", "avg_batch_time", "avg_cpu_usage"):
        assert key in stats
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Batches per second: ") and printed[1].endswith("%")


def test_the_factory_refuses_the_old_argument_order_by_name(paths):
    config = DataLoaderConfig(batch_size=4, num_workers=0, pin_memory=False)
    with pytest.raises(TypeError, match=r"config .*DataLoaderConfig.*tokenizer="):
        DataLoaderFactory.create_text_dataloader(paths["texts"], custom_tokenizer)
    with pytest.raises(TypeError, match="dataset_name="):
        DataLoaderFactory.create_hdf5_dataloader(paths["h5"], "features")
    with pytest.raises(TypeError, match="data_path="):
        DataLoaderFactory.create_dataloader("image", paths["images"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with DataLoaderFactory.create_dataloader("image", config, data_path=paths["images"]) as loader:
            assert len(loader) == 10
