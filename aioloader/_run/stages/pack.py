"""The packing stage: token sequences (documents) concatenated into fixed ``[batch, seq_len]``
rows for language-model training, with the document boundaries kept.

With ``split_documents=True`` documents are laid end to end and cut at row ends (a document
continues at the start of the next row; only the very last row is padded). With ``False`` a
document that does not fit in the rest of a row starts a new row (the rest is padding); only a
document longer than ``seq_len`` is cut. Every token of the input is in the output once, in
order. Each output batch is a dict:

- ``input_ids``: int64 ``[rows, seq_len]`` (``rows`` is ``batch_size``, fewer in the last batch);
- ``position_ids``: int64 ``[rows, seq_len]``, the position inside each *segment* (a document or
  the piece of it in this row), restarting at 0 where a segment starts; 0 on padding;
- ``attention_mask``: bool ``[rows, seq_len]``, True on real tokens;
- ``cu_seqlens``: int32 ``[segments + 1]``, cumulative segment lengths over the flattened
  ``rows * seq_len`` tokens (runs of padding are segments too, so the last entry is
  ``rows * seq_len``), the layout of varlen attention kernels (``flash_attn_varlen_func``);
- ``max_seqlen``: int, the longest segment.

A batch's key entry lists the documents with tokens in it (a document cut between two batches
is listed in both).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar

import numpy as np
import torch

from aioloader._run.block import Block
from aioloader._run.stages._grouping import GroupStage, unknown_length
from aioloader._run.stages.base import BuildContext, StageSpec
from aioloader._spec import check_bool, check_positive_int
from aioloader.errors import DataFormatError, annotate


@dataclass(frozen=True, slots=True)
class PackSpec(StageSpec):
    makes_batches: ClassVar[bool] = True
    resume_blocker: ClassVar[str | None] = "it packs a document into more than one batch"
    seq_len: int
    batch_size: int = 1
    field: str = "input_ids"
    split_documents: bool = True
    pad_value: int = 0
    drop_last: bool = False

    def length(self, n: int) -> int:
        """For ``len(loader)``: the batch count depends on the documents' lengths."""
        raise unknown_length(self.name)

    def build(self, ctx: BuildContext) -> PackStage:
        return PackStage(self)


def _tokens(value: Any, field: str) -> np.ndarray:
    if isinstance(value, Mapping):
        value = value[field]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iub"):
        raise DataFormatError(
            f"pack: a document must be a 1-D sequence of token ids, got shape {array.shape} dtype {array.dtype}"
        )
    return array


class _Rows:
    """One batch being filled: flat buffers of ``rows * seq_len`` tokens."""

    def __init__(self, rows: int, seq_len: int, pad_value: int) -> None:
        size = rows * seq_len
        self.tokens = np.full(size, pad_value, dtype=np.int64)
        self.positions = np.zeros(size, dtype=np.int64)
        self.real = np.zeros(size, dtype=bool)
        self.starts = np.zeros(size, dtype=bool)
        self.fill = 0
        self.keys: list[Any] = []
        self.seqs: list[Any] = []

    def batch(self, seq_len: int) -> dict[str, Any]:
        rows = -(-self.fill // seq_len)
        total = rows * seq_len
        real = self.real[:total]
        before_real = np.concatenate(([True], real[:-1]))
        row_start = np.arange(total) % seq_len == 0
        boundaries = np.flatnonzero(self.starts[:total] | (~real & (row_start | before_real)))
        cu_seqlens = np.append(boundaries, total).astype(np.int32)
        return {
            "input_ids": torch.from_numpy(self.tokens[:total].reshape(rows, seq_len)),
            "position_ids": torch.from_numpy(self.positions[:total].reshape(rows, seq_len)),
            "attention_mask": torch.from_numpy(real.reshape(rows, seq_len)),
            "cu_seqlens": torch.from_numpy(cu_seqlens),
            "max_seqlen": int(np.diff(cu_seqlens).max()) if total else 0,
        }


class PackStage(GroupStage):
    def __init__(self, spec: PackSpec) -> None:
        super().__init__(spec.name, None)
        self._spec = spec
        self._rows = self._new_rows()

    def _new_rows(self) -> _Rows:
        spec = self._spec
        return _Rows(spec.batch_size, spec.seq_len, spec.pad_value)

    async def _flush(self) -> None:
        rows, self._rows = self._rows, self._new_rows()
        started = perf_counter()
        batch = rows.batch(self._spec.seq_len)
        self.stats.busy_s += perf_counter() - started
        self.stats.items_out += 1
        await self.output.put(Block([rows.keys], [rows.seqs], [batch]))

    async def _add(self, key: Any, seq: Any, doc: np.ndarray) -> None:
        spec = self._spec
        seq_len, capacity = spec.seq_len, spec.batch_size * spec.seq_len
        n = len(doc)
        if not spec.split_documents:
            room = seq_len - self._rows.fill % seq_len
            if n > room and room < seq_len:  # does not fit: pad the rest of this row
                self._rows.fill += room
                if self._rows.fill == capacity:
                    await self._flush()
        rows = self._rows
        rows.keys.append(key)
        rows.seqs.append(seq)
        offset = 0
        while offset < n:
            fill = rows.fill
            take = min(seq_len - fill % seq_len, n - offset)
            rows.tokens[fill : fill + take] = doc[offset : offset + take]
            rows.positions[fill : fill + take] = np.arange(take)
            rows.real[fill : fill + take] = True
            rows.starts[fill] = True
            rows.fill = fill + take
            offset += take
            if rows.fill == capacity:
                await self._flush()
                rows = self._rows
                if offset < n:
                    rows.keys.append(key)
                    rows.seqs.append(seq)

    async def run(self) -> None:
        field = self._spec.field
        async for block in self.input:
            self.stats.items_in += len(block)
            for key, seq, value in zip(block.keys, block.seqs, block.values, strict=True):
                started = perf_counter()
                try:
                    doc = _tokens(value, field)
                except Exception as exc:
                    raise annotate(exc, self.name, key) from None
                self.stats.busy_s += perf_counter() - started
                await self._add(key, seq, doc)
        rows = self._rows
        if rows.fill and not (self._spec.drop_last and rows.fill < len(rows.tokens)):
            await self._flush()
        self.output.close()


def pack_spec(
    seq_len: int, batch_size: int, field: str, split_documents: bool, pad_value: int, drop_last: bool
) -> PackSpec:
    """Validate ``Loader.pack`` arguments (naming each) and build the spec."""
    check_positive_int(seq_len, "seq_len")
    check_positive_int(batch_size, "batch_size")
    if not isinstance(field, str):
        raise TypeError(f"field must be a str, got {field!r}")
    if not isinstance(split_documents, bool):
        raise TypeError(f"split_documents must be a bool, got {split_documents!r}")
    if isinstance(pad_value, bool) or not isinstance(pad_value, numbers.Integral):
        raise TypeError(f"pad_value must be an int (a token id), got {pad_value!r}")
    return PackSpec(
        "pack",
        seq_len,
        batch_size,
        field,
        split_documents,
        int(pad_value),
        check_bool(drop_last, "drop_last"),
    )
