"""al.collate: stack against torch's default_collate, pad (values, masks, lengths, layouts),
as_list, and the seed API's CustomCollateFn."""

from __future__ import annotations

import collections
import functools
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import default_collate

import aioloader as al
from aioloader.collate import Padded, pad, stack


class Pair(NamedTuple):
    x: Any
    y: Any


def assert_same(ours: Any, theirs: Any) -> None:
    """Same structure, types, dtypes, shapes and values."""
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    if isinstance(theirs, torch.Tensor):
        assert ours.dtype == theirs.dtype
        assert ours.shape == theirs.shape
        assert torch.equal(ours, theirs)
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key])
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert_same(a, b)
    else:
        assert ours == theirs


# -- stack vs default_collate ------------------------------------------------------------------

_DTYPES = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_]


@st.composite
def _leaf(draw: st.DrawFn) -> Any:
    """A leaf schema: a function from a random generator to one sample's value."""
    kind = draw(st.sampled_from(["tensor", "array", "int", "float", "bool", "str", "npscalar"]))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    dtype = draw(st.sampled_from(_DTYPES))
    if kind == "tensor":
        return lambda rng: torch.from_numpy(np.asarray((rng.random(shape) * 10).astype(dtype)))
    if kind == "array":
        return lambda rng: np.asarray((rng.random(shape) * 10).astype(dtype))
    if kind == "int":
        return lambda rng: int(rng.integers(-100, 100))
    if kind == "float":
        return lambda rng: float(rng.random())
    if kind == "bool":
        return lambda rng: bool(rng.random() < 0.5)
    if kind == "str":
        return lambda rng: str(rng.integers(1000))
    return lambda rng: dtype(rng.random() * 10)


def _schema() -> st.SearchStrategy[Any]:
    def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda fs: ("tuple", fs)),
            st.lists(children, min_size=1, max_size=3).map(lambda fs: ("list", fs)),
            st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3).map(
                lambda d: ("dict", d)
            ),
            st.tuples(children, children).map(lambda fs: ("pair", fs)),
            st.dictionaries(st.sampled_from("xyz"), children, min_size=1, max_size=2).map(
                lambda d: ("ordered", d)
            ),
        )

    return st.recursive(_leaf(), containers, max_leaves=6)


def _sample(schema: Any, rng: np.random.Generator) -> Any:
    if callable(schema):
        return schema(rng)
    kind, fields = schema
    if kind == "tuple":
        return tuple(_sample(f, rng) for f in fields)
    if kind == "list":
        return [_sample(f, rng) for f in fields]
    if kind == "pair":
        return Pair(*(_sample(f, rng) for f in fields))
    if kind == "ordered":
        return collections.OrderedDict((k, _sample(f, rng)) for k, f in fields.items())
    return {k: _sample(f, rng) for k, f in fields.items()}


@settings(max_examples=150, deadline=None)
@given(schema=_schema(), size=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_stack_matches_default_collate_on_nested_structures(schema: Any, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = [_sample(schema, rng) for _ in range(size)]
    assert_same(stack(samples), default_collate(samples))


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("shape", [(), (16,), (3, 4, 5)])
def test_stack_numpy_preallocated_matches_default_collate(dtype: Any, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    samples = [(rng.random(shape) * 10).astype(dtype) for _ in range(7)]
    assert_same(stack(samples), default_collate(samples))


def test_stack_numpy_mixed_dtypes_promote_like_numpy() -> None:
    out = stack([np.ones(3, np.float32), np.ones(3, np.float64)])
    assert out.dtype == torch.float64


def test_stack_shape_mismatch_names_the_sample() -> None:
    with pytest.raises(RuntimeError, match="sample 2"):
        stack([torch.zeros(3), torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError):
        stack([np.zeros(3), np.zeros(3), np.zeros((1, 3))])
    with pytest.raises(ValueError, match="empty"):
        stack([])


def test_stack_numpy_rows_do_not_broadcast() -> None:
    with pytest.raises(ValueError):
        stack([np.zeros(3, np.float32), np.zeros(1, np.float32)])


def test_as_list_keeps_variable_length_items() -> None:
    items = [[1, 2], [3], []]
    assert al.collate.as_list(items) == items


# -- pad -------------------------------------------------------------------------------------

_seqs = st.lists(st.lists(st.integers(-5, 1000), max_size=12), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(
    seqs=_seqs,
    side=st.sampled_from(["right", "left"]),
    pad_value=st.integers(-3, 3),
    as_tensor=st.booleans(),
)
def test_pad_values_mask_and_lengths(
    seqs: list[list[int]], side: str, pad_value: int, as_tensor: bool
) -> None:
    samples = [torch.tensor(s, dtype=torch.int64) for s in seqs] if as_tensor else seqs
    out = pad(samples, side=side, pad_value=pad_value)
    assert isinstance(out, Padded)
    width = max(len(s) for s in seqs)
    assert out.values.shape == (len(seqs), width)
    assert out.mask.dtype == torch.bool and out.mask.shape == (len(seqs), width)
    assert out.lengths.tolist() == [len(s) for s in seqs]
    for i, seq in enumerate(seqs):
        n = len(seq)
        real = slice(0, n) if side == "right" else slice(width - n, width)
        assert out.values[i, real].tolist() == seq
        assert out.mask[i].sum().item() == n
        assert out.mask[i, real].all()
        assert (out.values[i][~out.mask[i]] == pad_value).all()


@settings(max_examples=60, deadline=None)
@given(seqs=_seqs, max_length=st.integers(0, 10), multiple_of=st.sampled_from([None, 1, 4, 8]))
def test_pad_max_length_truncates_and_multiple_of_rounds(
    seqs: list[list[int]], max_length: int, multiple_of: int | None
) -> None:
    out = pad(seqs, max_length=max_length, truncate=True, multiple_of=multiple_of)
    width = max_length if multiple_of is None else -(-max_length // multiple_of) * multiple_of
    assert out.values.shape[1] == width
    for i, seq in enumerate(seqs):
        kept = seq[:max_length]
        assert out.lengths[i].item() == len(kept)
        assert out.values[i, : len(kept)].tolist() == kept
        assert out.mask[i].sum().item() == len(kept)


def test_pad_too_long_without_truncate_raises_naming_the_sample() -> None:
    with pytest.raises(ValueError, match="sample 1 has length 5 > max_length=3"):
        pad([[1], [1, 2, 3, 4, 5]], max_length=3)


def test_pad_argument_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="side"):
        pad([[1]], side="middle")
    with pytest.raises(TypeError, match="max_length"):
        pad([[1]], max_length=2.5)
    with pytest.raises(ValueError, match="multiple_of"):
        pad([[1]], multiple_of=0)


def test_pad_equal_lengths_equals_default_collate_of_tensors() -> None:
    samples = [torch.randn(5, 3) for _ in range(4)]
    out = pad(samples)
    assert torch.equal(out.values, default_collate(samples))
    assert out.mask.all()


def test_pad_multidimensional_sequences_keep_feature_dims() -> None:
    samples = [np.ones((n, 2), np.float32) * n for n in (1, 3, 2)]
    out = pad(samples, pad_value=-1)
    assert out.values.shape == (3, 3, 2) and out.values.dtype == torch.float32
    assert out.values[0, 1:].eq(-1).all() and out.values[1].eq(3).all()
    with pytest.raises(RuntimeError, match="sample 1"):
        pad([np.ones((2, 2)), np.ones((2, 3))])


def test_pad_of_1d_tensors_checks_what_one_concatenation_lets_through() -> None:
    """1-D tensors are padded from one concatenation; samples it would accept wrongly (an empty
    first sample before 2-D ones) or refuse (another rank) are reported by sample, as before,
    and a too-long sample is truncated or named."""
    out = pad([torch.arange(3), torch.arange(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int64)])
    assert out.values.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]] and out.lengths.tolist() == [3, 1, 0]
    with pytest.raises(RuntimeError, match=r"sample 1 has shape \(2, 2\), sample 0 has \(0,\)"):
        pad([torch.zeros(0), torch.ones(2, 2), torch.ones(1, 2)])
    with pytest.raises(RuntimeError, match=r"sample 2 has shape \(\)"):
        pad([torch.ones(2), torch.ones(1), torch.tensor(1.0)])
    with pytest.raises(RuntimeError, match=r"sample 1 has shape \(1, 2\)"):
        pad([torch.ones(2), torch.ones(1, 2)])
    with pytest.raises(ValueError, match="sample 1 has length 4 > max_length=3"):
        pad([torch.ones(2), torch.ones(4)], max_length=3)
    assert pad([torch.arange(2), torch.arange(4)], max_length=3, truncate=True).values.tolist() == [
        [0, 1, 0],
        [0, 1, 2],
    ]


def test_pad_mapping_samples_use_the_hugging_face_layout() -> None:
    samples = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [1, 2, 3], "y": 0},
        {"input_ids": [8], "attention_mask": [1], "labels": [4], "y": 1},
    ]
    out = pad(samples, pad_value={"labels": -100})
    assert list(out) == ["input_ids", "attention_mask", "labels", "y", "lengths"]
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]  # the tokenizer's own, padded with 0
    assert out["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]
    assert out["y"].tolist() == [0, 1]
    assert out["lengths"].tolist() == [3, 1]
    plain = pad([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    assert plain["attention_mask"].tolist() == [[True, True], [True, False]]


def test_pad_tuple_samples_pad_sequence_fields_and_stack_the_rest() -> None:
    out = pad([([1, 2, 3], 0, "a"), ([4], 1, "b")])
    tokens, labels, names = out
    assert isinstance(tokens, Padded) and tokens.values.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert labels.tolist() == [0, 1] and names == ["a", "b"]
    pairs = pad([Pair([1.5], 1), Pair([2.5, 3.5], 2)])
    assert isinstance(pairs, Pair) and pairs.x.values.dtype == torch.float32


def test_pad_as_a_loader_collate() -> None:
    data = [list(range(n)) for n in range(1, 11)]
    collate = functools.partial(pad, max_length=8, truncate=True)
    with al.Loader.from_source(data).batch(4, collate=collate) as loader:
        batches = list(loader)
    assert [b.values.shape for b in batches] == [(4, 8)] * 2 + [(2, 8)]
    assert torch.cat([b.lengths for b in batches]).tolist() == [min(n, 8) for n in range(1, 11)]


# -- CustomCollateFn -------------------------------------------------------------------------


def test_image_collate_stacks_pil_arrays_and_tensors_with_labels() -> None:
    images = [Image.new("RGB", (4, 3), color=(i, 2 * i, 3 * i)) for i in range(3)]
    out_images, labels = al.CustomCollateFn.image_collate([(img, i) for i, img in enumerate(images)])
    assert out_images.shape == (3, 3, 3, 4) and out_images.dtype == torch.uint8
    assert out_images[2, :, 0, 0].tolist() == [2, 4, 6]
    assert labels.tolist() == [0, 1, 2]
    tensors = [torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(2)]
    assert torch.equal(al.CustomCollateFn.image_collate(tensors), default_collate(tensors))


def test_text_collate_pads_token_lists_strings_and_pairs() -> None:
    out = al.CustomCollateFn.text_collate([([1, 2, 3], 1), ([4], 0)])
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out["attention_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert out["labels"].tolist() == [1, 0]
    text = al.CustomCollateFn.text_collate(["abc", "a"], max_length=2)
    assert text["input_ids"].tolist() == [[97, 98], [97, 0]]


def test_variable_length_collate_pads_with_lengths() -> None:
    out = al.CustomCollateFn.variable_length_collate([torch.ones(2, 4), torch.ones(5, 4)])
    assert out.values.shape == (2, 5, 4)
    assert out.lengths.tolist() == [2, 5]
