"""Length-aware batching stages: batch_by_tokens (budgets), bucket (similar lengths), pack
(every token kept, document boundaries), and validate (checks, errors, skip policy)."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import aioloader as al
from aioloader.collate import as_list, pad


def run(loader: al.Loader) -> list[Any]:
    with loader:
        return list(loader)


def docs_of(lengths: list[int]) -> list[list[int]]:
    """Documents with distinct tokens, so order and completeness can be checked."""
    out, next_token = [], 1
    for n in lengths:
        out.append(list(range(next_token, next_token + n)))
        next_token += n
    return out


# -- batch_by_tokens -------------------------------------------------------------------------

_lengths = st.lists(st.integers(0, 40), min_size=0, max_size=60)


@settings(max_examples=40, deadline=None)
@given(lengths=_lengths, budget=st.integers(1, 120), padded=st.booleans())
def test_token_budget_never_exceeded_except_single_long_items(
    lengths: list[int], budget: int, padded: bool
) -> None:
    docs = docs_of(lengths)
    batches = run(al.Loader.from_source(docs).batch_by_tokens(budget, collate=as_list, padded=padded))
    assert [d for b in batches for d in b] == docs  # every item once, in order
    for batch in batches:
        sizes = [len(d) for d in batch]
        cost = max(sizes) * len(sizes) if padded else sum(sizes)
        assert cost <= budget or len(batch) == 1
    # greedy: a batch closes only because the next item would not fit
    for batch, following in itertools.pairwise(batches):
        sizes = [len(d) for d in [*batch, following[0]]]
        cost = max(sizes) * len(sizes) if padded else sum(sizes)
        assert cost > budget


def test_batch_by_tokens_longer_item_goes_alone_and_max_batch_size_caps() -> None:
    docs = [[0] * n for n in (3, 3, 50, 2, 2, 2, 2)]
    batches = run(al.Loader.from_source(docs).batch_by_tokens(10, collate=as_list))
    assert [[len(d) for d in b] for b in batches] == [[3, 3], [50], [2, 2, 2, 2]]
    capped = run(al.Loader.from_source(docs).batch_by_tokens(10, collate=as_list, max_batch_size=3))
    assert [[len(d) for d in b] for b in capped] == [[3, 3], [50], [2, 2, 2], [2]]


def test_batch_by_tokens_default_collate_and_length_function() -> None:
    data = [{"ids": list(range(n)), "y": n} for n in (2, 2, 4, 4)]
    collate = functools.partial(pad)
    batches = run(
        al.Loader.from_source(data).batch_by_tokens(8, length=lambda s: len(s["ids"]), collate=collate)
    )
    assert [b["ids"].shape for b in batches] == [(2, 2), (2, 4)]


def test_length_aware_batching_pads_variable_lengths_by_default() -> None:
    """``batch_by_tokens`` and ``bucket`` exist for variable-length items: with no collate they
    pad (``al.collate.pad``) where stacking would fail."""
    docs = [list(range(n)) for n in (1, 3, 2, 5, 4)]
    by_tokens = run(al.Loader.from_source(docs).batch_by_tokens(10))
    assert [tuple(b.values.shape) for b in by_tokens] == [(3, 3), (2, 5)]
    assert [b.lengths.tolist() for b in by_tokens] == [[1, 3, 2], [5, 4]]
    assert by_tokens[0].values[0].tolist() == [0, 0, 0] and by_tokens[0].mask[0].tolist() == [True, False, False]
    tensors = [torch.arange(n) for n in (2, 3, 6, 7)]
    bucketed = run(al.Loader.from_source(tensors).bucket([5], batch_size=2))
    assert [b.lengths.tolist() for b in bucketed] == [[2, 3], [6, 7]]
    records = [{"input_ids": list(range(n)), "label": n} for n in (2, 4)]
    (batch,) = run(al.Loader.from_source(records).batch_by_tokens(100))
    assert batch["input_ids"].shape == (2, 4) and batch["label"].tolist() == [2, 4]


def test_batch_by_tokens_argument_and_length_errors() -> None:
    loader = al.Loader.from_source([[1]])
    with pytest.raises(ValueError, match="max_tokens"):
        loader.batch_by_tokens(0)
    with pytest.raises(TypeError, match="length"):
        loader.batch_by_tokens(10, length=3)
    with pytest.raises(TypeError, match="length must return an int"):
        run(al.Loader.from_source([[1]]).batch_by_tokens(10, length=lambda s: "x"))
    with pytest.raises(TypeError, match="len"):
        len(al.Loader.from_source([[1]]).batch_by_tokens(10))


# -- bucket ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 60), max_size=80),
    boundaries=st.lists(st.integers(1, 60), min_size=1, max_size=5, unique=True).map(sorted),
    batch_size=st.integers(1, 6),
    drop_last=st.booleans(),
)
def test_bucket_batches_hold_one_bucket_and_lose_nothing(
    lengths: list[int], boundaries: list[int], batch_size: int, drop_last: bool
) -> None:
    docs = docs_of(lengths)
    loader = al.Loader.from_source(docs).bucket(
        boundaries, batch_size=batch_size, collate=as_list, drop_last=drop_last
    )
    batches = run(loader)
    edges = [0, *boundaries, float("inf")]

    def bucket_of(n: int) -> int:
        return next(i for i in range(len(edges) - 1) if edges[i] <= n < edges[i + 1])

    seen = [tuple(d) for b in batches for d in b]
    assert len(seen) == len(set(seen))
    for batch in batches:
        assert len({bucket_of(len(d)) for d in batch}) == 1
        assert len(batch) <= batch_size
        if drop_last:
            assert len(batch) == batch_size
    full = [b for b in batches if len(b) == batch_size]
    if not drop_last:
        assert sorted(seen) == sorted(tuple(d) for d in docs)
    # within a bucket, items keep their input order
    position = {tuple(d): i for i, d in enumerate(docs)}
    for bucket in range(len(edges) - 1):
        order = [position[d] for d in seen if bucket_of(len(d)) == bucket]
        assert order == sorted(order)
    assert all(len(b) == batch_size for b in full)


def test_bucket_per_bucket_batch_sizes_and_determinism() -> None:
    rng = np.random.default_rng(0)
    docs = [[0] * int(n) for n in rng.integers(1, 30, 200)]
    make = lambda: al.Loader.from_source(docs, shuffle=True, seed=3).bucket(  # noqa: E731
        [10, 20], batch_size=[8, 4, 2], collate=as_list
    )
    first, second = run(make()), run(make())
    assert first == second
    for batch in first[:-3]:
        n = len(batch[0])
        assert len(batch) == (8 if n < 10 else 4 if n < 20 else 2)


def test_bucket_argument_errors_name_the_argument() -> None:
    loader = al.Loader.from_source([[1]])
    with pytest.raises(ValueError, match="strictly increasing"):
        loader.bucket([10, 5], batch_size=2)
    with pytest.raises(TypeError, match="boundaries"):
        loader.bucket(10, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        loader.bucket([10], batch_size=[1, 2, 3])
    with pytest.raises(ValueError, match="batch_size"):
        loader.bucket([10], batch_size=0)
    with pytest.raises(TypeError, match="len"):
        len(loader.bucket([10], batch_size=2))


def test_bucketing_cuts_padding() -> None:
    rng = np.random.default_rng(1)
    docs = [[1] * int(n) for n in rng.integers(5, 121, 2000)]

    def padding(batches: list[Any]) -> float:
        total = sum(b.mask.numel() for b in batches)
        return 1 - sum(int(b.mask.sum()) for b in batches) / total

    plain = padding(run(al.Loader.from_source(docs).batch(32, collate=pad)))
    bucketed = padding(run(al.Loader.from_source(docs).bucket(range(8, 121, 8), batch_size=32, collate=pad)))
    assert bucketed < plain / 2


# -- pack ------------------------------------------------------------------------------------


def check_packed(batches: list[dict[str, Any]], docs: list[list[int]], seq_len: int, split: bool) -> None:
    tokens = [t for b in batches for t in b["input_ids"][b["attention_mask"]].tolist()]
    assert tokens == [t for d in docs for t in d]  # every token, once, in order
    doc_of = {t: i for i, d in enumerate(docs) for t in d}
    for b in batches:
        ids, pos, mask, cu = b["input_ids"], b["position_ids"], b["attention_mask"], b["cu_seqlens"]
        rows = ids.shape[0]
        assert ids.shape == pos.shape == mask.shape == (rows, seq_len)
        assert ids.dtype == pos.dtype == torch.int64 and mask.dtype == torch.bool and cu.dtype == torch.int32
        assert cu[0] == 0 and cu[-1] == rows * seq_len and (cu.diff() > 0).all()
        assert b["max_seqlen"] == int(cu.diff().max())
        flat_ids, flat_pos, flat_mask = ids.flatten(), pos.flatten(), mask.flatten()
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            assert start // seq_len == (end - 1) // seq_len  # a segment never crosses a row
            segment_mask = flat_mask[start:end]
            assert segment_mask.all() or not segment_mask.any()  # real tokens or padding
            if segment_mask.all():
                assert flat_pos[start:end].tolist() == list(range(end - start))
                assert len({doc_of[t] for t in flat_ids[start:end].tolist()}) == 1
            else:
                assert (flat_pos[start:end] == 0).all()
    if split and batches:  # only the very last row of the stream may have padding
        assert all(b["attention_mask"].all() for b in batches[:-1])
        assert batches[-1]["attention_mask"][:-1].all()
    if not split:  # a document no longer than seq_len lies in one row
        rows_of: dict[int, set[tuple[int, int]]] = {}
        for bi, b in enumerate(batches):
            for r, row in enumerate(b["input_ids"]):
                for t in row[b["attention_mask"][r]].tolist():
                    rows_of.setdefault(doc_of[t], set()).add((bi, r))
        for i, d in enumerate(docs):
            if 0 < len(d) <= seq_len:
                assert len(rows_of[i]) == 1


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), max_size=40),
    seq_len=st.integers(1, 16),
    batch_size=st.integers(1, 4),
    split=st.booleans(),
)
def test_pack_preserves_every_token_with_boundaries(
    lengths: list[int], seq_len: int, batch_size: int, split: bool
) -> None:
    docs = docs_of(lengths)
    loader = al.Loader.from_source(docs).pack(seq_len, batch_size=batch_size, split_documents=split)
    batches = run(loader)
    check_packed(batches, docs, seq_len, split)
    assert all(b["input_ids"].shape[0] == batch_size for b in batches[:-1])


def test_pack_accepts_tensors_arrays_and_mappings() -> None:
    docs = [torch.arange(1, 4), np.arange(4, 9), {"input_ids": [9, 10], "label": 0}]
    (batch,) = run(al.Loader.from_source(docs).pack(6, batch_size=2, pad_value=-1))
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, -1, -1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 0, 0]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 6, 8, 10, 12]


def test_pack_whole_documents_pad_the_row_instead_of_splitting() -> None:
    docs = [[1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14, 15]]
    batches = run(al.Loader.from_source(docs).pack(4, batch_size=2, split_documents=False))
    assert batches[0]["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 0]]
    assert batches[1]["input_ids"].tolist() == [[7, 8, 9, 10], [11, 12, 13, 14]]
    assert batches[2]["input_ids"].tolist() == [[15, 0, 0, 0]]


def test_pack_bad_documents_raise_naming_the_key() -> None:
    with pytest.raises(al.DataFormatError) as info:
        run(al.Loader.from_source([[1, 2], [[1, 2]]]).pack(4))
    assert info.value.key == 1
    with pytest.raises(ValueError, match="seq_len"):
        al.Loader.from_source([[1]]).pack(0)


# -- validate --------------------------------------------------------------------------------

Check = al.transforms.Check


def test_validate_raises_format_and_corruption_errors_with_the_key() -> None:
    data = [np.zeros((3, 4), np.float32)] * 3 + [np.zeros((3, 5), np.float32)]
    with pytest.raises(al.DataFormatError, match="shape") as info:
        run(al.Loader.from_source(data).validate(Check(shape=(3, 4))))
    assert info.value.key == 3
    data = [np.full(4, v, np.float32) for v in (0.5, 2.0)]
    with pytest.raises(al.DataCorruptionError, match="range") as corrupt:
        run(al.Loader.from_source(data).validate(Check(dtype="float32", range=(0, 1))))
    assert corrupt.value.key == 1


def test_validate_skip_records_errors_and_enforces_max_failures() -> None:
    data = [torch.tensor([float(i)]) for i in range(10)]
    data[3] = torch.tensor([float("nan")])
    data[7] = torch.tensor([1, 2])
    loader = al.Loader.from_source(data).validate(
        [Check(shape=(1,)), Check(finite=True)], on_error="skip", max_failures=2
    )
    with loader:
        out = list(loader)
        errors = loader.stats()["errors"]
    assert len(out) == 8
    assert [(e["key"], e["type"]) for e in errors] == [(3, "DataCorruptionError"), (7, "DataFormatError")]
    strict = al.Loader.from_source(data).validate(Check(finite=True), on_error="skip", max_failures=0)
    with pytest.raises(al.TooManyFailures):
        run(strict)


def test_validate_accepts_any_callable_returning_a_problem() -> None:
    def even(x: int) -> str | None:
        return None if x % 2 == 0 else f"{x} is odd"

    loader = al.Loader.from_source(range(6)).validate(even, on_error="skip", max_failures=5)
    assert run(loader) == [0, 2, 4]
    with pytest.raises(al.DataFormatError, match="1 is odd"):
        run(al.Loader.from_source(range(6)).validate(even))
    assert len(al.Loader.from_source(range(6)).validate(even)) == 6
    with pytest.raises(TypeError, match="len"):
        len(al.Loader.from_source(range(6)).validate(even, on_error="skip"))
    with pytest.raises(TypeError, match="check"):
        al.Loader.from_source(range(6)).validate(3)
    with pytest.raises(ValueError, match="on_error"):
        al.Loader.from_source(range(6)).validate(even, on_error="ignore")


def test_check_fields_types_and_dtypes() -> None:
    check = Check(field="image", shape=(3, None, None), dtype=torch.uint8)
    assert check({"image": torch.zeros(3, 5, 6, dtype=torch.uint8)}) is None
    assert isinstance(check({"image": torch.zeros(3, 5, 6)}), al.DataFormatError)
    assert isinstance(check({"label": 1}), al.DataFormatError)
    assert isinstance(Check(type=int)("x"), al.DataFormatError)
    assert Check(range=(0, None))([1, 2, 3]) is None
    assert isinstance(Check(range=(0, None))([1, -2]), al.DataCorruptionError)
    with pytest.raises(TypeError, match="shape"):
        Check(shape="abc")
