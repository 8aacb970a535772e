"""DESIGN.md section 3 as written: every method of the public contract called with its main
argument by name, and no positional-only parameter anywhere in the public API."""

from __future__ import annotations

import ast
import json
import pathlib

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import aioloader as al

PACKAGE = pathlib.Path(al.__file__).parent


def _decode(item):
    data, label = item
    return al.transforms.decode_image(8)(data), label


def _augment(item):
    image, label = item
    return image.flip(-1), label


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("contract")
    rng = np.random.default_rng(0)
    for i in range(12):
        sub = root / "train" / f"c{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    (root / "lines.txt").write_text("".join(f"line {i}\n" for i in range(5)))
    with h5py.File(root / "rows.h5", "w") as f:
        f.create_dataset("x", data=np.arange(10, dtype=np.float32))
    return root


def test_the_contract_with_every_main_argument_named(folder):
    def build():
        return (
            al.Loader.from_source(
                source=al.sources.ImageFolder(root=folder / "train", mode="lazy"), shuffle=True, seed=0
            )
            .map(fn=_decode, executor="thread", concurrency=2)
            .map(fn=_augment)
            .filter(predicate=lambda item: True)
            .shuffle(buffer_size=10_000)
            .batch(size=4, collate=al.collate.stack, drop_last=False)
            .prefetch(n=4)
            .to_device(device="cpu", non_blocking=True)
        )

    with build() as loader:
        for epoch in range(2):
            loader.set_epoch(epoch=epoch)
            for images, labels in loader:
                assert images.shape == (4, 3, 8, 8) and labels.shape == (4,)
        loader.set_epoch(epoch=2)
        it = iter(loader)
        first = next(it)
        state = json.loads(json.dumps(loader.state_dict()))
        expected = [b[1].tolist() for b in it]
        assert set(loader.stats()) >= {"stages", "bottleneck"}
    with build() as resumed:
        resumed.load_state_dict(state=state)
        assert [b[1].tolist() for b in resumed] == expected
    assert first[0].shape[0] == 4


def test_the_other_stages_and_sources_by_name(folder):
    lines = al.Loader.from_source(source=al.sources.TextLines(path_or_glob=folder / "lines.txt"))
    with lines.batch(size=2).unbatch() as loader:
        assert list(loader) == [f"line {i}" for i in range(5)]
    rows = al.sources.HDF5(path=folder / "rows.h5", datasets="x")
    with al.Loader.from_source(source=rows).batch(size=5) as loader:
        assert [b.tolist() for b in loader] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    array = al.sources.Array(ndarray_or_npy_path=np.arange(6))
    seqs = [torch.ones(n, dtype=torch.int64) for n in (1, 2, 3, 3)]
    with al.Loader.from_source(source=array).batch(size=3) as loader:
        assert len(list(loader)) == 2
    with al.Loader.from_source(source=seqs).batch_by_tokens(max_tokens=6) as loader:
        assert [tuple(b.values.shape) for b in loader] == [(2, 2), (2, 3)]
    with al.Loader.from_source(source=seqs).bucket(boundaries=[3], batch_size=2) as loader:
        assert [b.lengths.tolist() for b in loader] == [[1, 2], [3, 3]]
    docs = [{"input_ids": list(range(n))} for n in (3, 2, 4)]
    with al.Loader.from_source(source=docs).pack(seq_len=4, batch_size=1) as loader:
        assert all(b["input_ids"].shape == (1, 4) for b in loader)
    with al.Loader.from_source(source=[1, 2]).validate(check=lambda x: x > 0) as loader:
        assert list(loader) == [1, 2]


def _public_functions(tree: ast.AST):
    """Public functions and methods of public classes (names without a leading underscore;
    dunder methods such as ``__init__`` count: they are the public constructors)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name.startswith("_"):
            continue
        body = node.body if isinstance(node, (ast.ClassDef, ast.Module)) else []
        for child in body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
                if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                    yield child


def test_no_positional_only_parameters_in_the_public_api():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if any(part.startswith("_") and part != "__init__.py" for part in relative.parts):
            continue  # private modules
        for fn in _public_functions(ast.parse(path.read_text())):
            names = [a.arg for a in fn.args.posonlyargs if a.arg not in ("self", "cls")]
            if names:
                found.append(f"{relative}:{fn.lineno} {fn.name}({', '.join(names)}, /)")
    assert not found, "positional-only parameters in the public API:\n" + "\n".join(found)
