"""Hugging Face clients as users pair them with aioloader: a ``tokenizers`` BPE trained here on
a few lines (nothing from a hub) and the same tokenizer behind ``transformers``'
``PreTrainedTokenizerFast``, per sample and per batch, and a ``datasets`` source split with
``split_dataset_by_node``, which the Loader must not shard a second time."""

from __future__ import annotations

import datasets
import pytest
from datasets.distributed import split_dataset_by_node
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import aioloader as al
from aioloader.collate import as_list

LINES = [f"the loader reads line {i} and the tokenizer splits {'word ' * (i % 5)}" for i in range(40)]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        LINES, trainers.BpeTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]"])
    )
    return tokenizer


def collect(loader: al.Loader) -> list:
    with loader:
        return list(loader)


def test_tokenize_takes_a_tokenizers_tokenizer_per_sample_and_per_batch(bpe):
    expected = [bpe.encode(line).ids for line in LINES]
    per_sample = al.Loader.from_source(LINES).map(al.transforms.Tokenize(bpe), executor="thread")
    assert collect(per_sample) == expected
    per_batch = (
        al.Loader.from_source(LINES)
        .batch(8, collate=as_list)
        .map(al.transforms.Tokenize(bpe, max_length=6), executor="thread")
    )
    assert [ids for batch in collect(per_batch) for ids in batch] == [e[:6] for e in expected]


def test_tokenize_takes_a_transformers_tokenizer_per_sample_and_per_batch(bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="[PAD]")
    expected = [bpe.encode(line).ids for line in LINES]
    assert collect(al.Loader.from_source(LINES).map(al.transforms.Tokenize(fast))) == expected
    records = [{"text": line, "n": i} for i, line in enumerate(LINES)]
    batches = collect(
        al.Loader.from_source(records)
        .batch(16, collate=as_list)
        .map(al.transforms.Tokenize(fast, field="text"))
    )
    flat = [record for batch in batches for record in batch]
    assert [r["input_ids"] for r in flat] == expected and [r["n"] for r in flat] == list(range(40))
    # the seed API's TextDataset pads to max_length with the tokenizer's pad id
    (tmp_path / "lines.txt").write_text("\n".join(LINES) + "\n")
    dataset = al.TextDataset(tmp_path / "lines.txt", fast, max_length=32)
    assert dataset[3]["input_ids"][: len(expected[3])].tolist() == expected[3]
    assert int(dataset[3]["input_ids"][-1]) == fast.pad_token_id


def _rows(world_size: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"n": list(range(100 * world_size))})


def test_a_datasets_source_split_by_node_is_not_sharded_again(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        split = split_dataset_by_node(_rows(2).to_iterable_dataset(num_shards=4), rank=rank, world_size=2)
        rows = [r["n"] for r in collect(al.Loader.from_source(split))]
        assert len(rows) == 100  # its whole split, not a quarter of the rows
        seen += rows
    assert sorted(seen) == list(range(200))
    # without split_dataset_by_node the Loader shards by RANK/WORLD_SIZE itself
    unsplit = [r["n"] for r in collect(al.Loader.from_source(_rows(2).to_iterable_dataset(num_shards=4)))]
    assert len(unsplit) == 100


def test_a_split_source_with_rank_and_world_size_is_refused_saying_what_to_remove():
    split = split_dataset_by_node(_rows(2).to_iterable_dataset(num_shards=2), rank=1, world_size=2)
    with pytest.raises(ValueError, match=r"split_dataset_by_node \(rank 1 of 2\).*remove rank/world_size"):
        al.Loader.from_source(split, rank=1, world_size=2)
    assert len(collect(al.Loader.from_source(split, rank=0, world_size=1))) == 100


def test_a_map_style_dataset_read_from_disk_and_split_by_node_is_not_sharded_again(tmp_path, monkeypatch):
    _rows(2).save_to_disk(tmp_path / "rows")
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        split = split_dataset_by_node(datasets.load_from_disk(tmp_path / "rows"), rank=rank, world_size=2)
        rows = [r["n"] for r in collect(al.Loader.from_source(split, shuffle=True))]
        assert len(rows) == 100
        seen += rows
    assert sorted(seen) == list(range(200))
    # the whole dataset, or another rank's split, is sharded as any source
    whole = datasets.load_from_disk(tmp_path / "rows")
    assert len(collect(al.Loader.from_source(whole))) == 100
    other = split_dataset_by_node(whole, rank=0, world_size=2)  # rank 0's split, read on rank 1
    assert len(collect(al.Loader.from_source(other))) == 50
