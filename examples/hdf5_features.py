"""Seed example 3: HDF5 loading.

Writes an HDF5 file with a chunked ``features`` dataset and ``labels``, then loads it with
``DataLoaderFactory.create_hdf5_dataloader`` (the seed's call), and with labels attached.

    python examples/hdf5_features.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _data import make_hdf5

from aioloader import DataLoaderConfig, DataLoaderFactory, LoadingMode


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = make_hdf5(Path(tmp) / "data.h5")
        config = DataLoaderConfig(
            batch_size=256, num_workers=2, pin_memory=False, shuffle=True, generator_seed=0
        )
        hdf5_loader = DataLoaderFactory.create_hdf5_dataloader(str(path), config, dataset_name="features")
        with hdf5_loader:
            shapes = [tuple(batch.shape) for batch in hdf5_loader]
            rows = sum(shape[0] for shape in shapes)
            print(f"features: {rows} rows in {len(hdf5_loader)} batches of {shapes[0]}")
        labelled = DataLoaderFactory.create_hdf5_dataloader(
            str(path), config, dataset_name="features", loading_mode=LoadingMode.EAGER, label_name="labels"
        )
        with labelled:
            features, labels = next(iter(labelled))
            print(
                f"eager, with labels: {tuple(features.shape)} {features.dtype}, labels {labels[:10].tolist()}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
