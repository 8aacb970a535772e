"""The tokenisation hook for text samples.

``Tokenize(tokenizer)`` accepts any tokenizer: an object with ``encode(text)`` returning ids or
an encoding with ``.ids`` (a ``tokenizers.Tokenizer``, a ``transformers`` tokenizer, tiktoken,
sentencepiece) or any callable returning token ids, a tensor or array, or a mapping with
``"input_ids"`` (a ``transformers`` tokenizer's ``__call__``). Without a tokenizer it falls back
to characters: the ids are the Unicode code points. Ids are truncated to ``max_length``.

Given a list of texts (after ``.batch(n, collate=al.collate.as_list)``) it encodes them in one
call: ``tokenizer.encode_batch(texts)`` (``tokenizers``: parallel, in Rust), or
``tokenizer(texts)["input_ids"]`` for a ``transformers`` tokenizer. Picklable when the tokenizer
is, so it runs in process workers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch


def _ids(result: Any) -> list[int]:
    ids = getattr(result, "ids", None)  # a tokenizers.Encoding (not iterable itself)
    if ids is not None and not isinstance(result, (torch.Tensor, np.ndarray)):
        return list(ids)
    if isinstance(result, Mapping) or hasattr(result, "input_ids"):
        result = result["input_ids"] if isinstance(result, Mapping) else result.input_ids
    if isinstance(result, (torch.Tensor, np.ndarray)):
        return [int(x) for x in result.reshape(-1).tolist()]
    return list(result)


class Tokenize:
    """Text to a list of token ids (or, with ``field``, a mapping sample whose ``field`` text is
    replaced by ``"input_ids"``)."""

    random = False

    def __init__(
        self,
        tokenizer: Callable[[str], Any] | None = None,
        *,
        max_length: int | None = None,
        field: Hashable | None = None,
    ) -> None:
        if tokenizer is not None and not callable(tokenizer) and not hasattr(tokenizer, "encode"):
            raise TypeError(f"tokenizer must be callable or have an encode method, got {tokenizer!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise TypeError(f"max_length must be an int, got {max_length!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.field = field

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"Tokenize: expected text (str), got {type(text).__name__}")
        tokenizer = self.tokenizer
        if tokenizer is None:
            ids = list(map(ord, text[: self.max_length] if self.max_length else text))
        else:
            encode = getattr(tokenizer, "encode", None)
            ids = _ids(encode(text) if encode is not None else tokenizer(text))
        return ids[: self.max_length] if self.max_length is not None else ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in one call where the tokenizer can (see above)."""
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"Tokenize: expected texts (str), got {type(text).__name__}")
        tokenizer = self.tokenizer
        many = getattr(tokenizer, "encode_batch", None)
        if many is not None:
            results = many(list(texts))
        elif hasattr(tokenizer, "model_input_names") and callable(tokenizer):  # transformers
            results = tokenizer(list(texts))["input_ids"]
        else:
            return [self.encode(text) for text in texts]
        cut = self.max_length
        return [_ids(r)[:cut] if cut is not None else _ids(r) for r in results]

    def __call__(self, sample: Any) -> Any:
        if isinstance(sample, list):  # a batch of texts (or of records with ``field``)
            if self.field is None:
                return self.encode_batch(sample)
            encoded = self.encode_batch([s[self.field] for s in sample])
            return [self._replace(s, ids) for s, ids in zip(sample, encoded, strict=True)]
        if self.field is None:
            return self.encode(sample)
        return self._replace(sample, self.encode(sample[self.field]))

    def _replace(self, sample: Any, ids: list[int]) -> dict[Any, Any]:
        out = {k: v for k, v in sample.items() if k != self.field}
        out["input_ids"] = ids
        return out

    def __repr__(self) -> str:
        return f"Tokenize({self.tokenizer!r}, max_length={self.max_length})"
