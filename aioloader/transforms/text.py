"""The tokenisation hook for text samples.

``Tokenize(tokenizer)`` accepts any tokenizer: an object with ``encode(text)`` (Hugging Face
tokenizers, tiktoken, sentencepiece) or any callable returning token ids, a tensor or array, or
a mapping with ``"input_ids"`` (a Hugging Face tokenizer's ``__call__``). Without a tokenizer it
falls back to characters: the ids are the Unicode code points. Ids are truncated to
``max_length``. Picklable when the tokenizer is, so it runs in process workers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch


def _ids(result: Any) -> list[int]:
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

    def __call__(self, sample: Any) -> Any:
        if self.field is None:
            return self.encode(sample)
        ids = self.encode(sample[self.field])
        out = {k: v for k, v in sample.items() if k != self.field}
        out["input_ids"] = ids
        return out

    def __repr__(self) -> str:
        return f"Tokenize({self.tokenizer!r}, max_length={self.max_length})"
