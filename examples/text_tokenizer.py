"""Seed example 2: text loading with a tokenizer.

Any Hugging Face tokenizer works (``AutoTokenizer.from_pretrained("bert-base-uncased")``); to
run offline this example uses a small stand-in with the same ``encode``/``pad_token_id``.
Every line becomes ``input_ids`` and ``attention_mask`` padded to ``max_length``.

    python examples/text_tokenizer.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _data import WordTokenizer, make_text

from aioloader import DataLoaderConfig, DataLoaderFactory, LoadingMode


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = make_text(Path(tmp) / "corpus.txt")
        tokenizer = WordTokenizer()  # or AutoTokenizer.from_pretrained("bert-base-uncased")
        config = DataLoaderConfig(
            batch_size=64, num_workers=2, pin_memory=False, shuffle=True, generator_seed=0
        )
        text_loader = DataLoaderFactory.create_text_dataloader(
            str(path), config, tokenizer=tokenizer, max_length=32
        )
        with text_loader:
            tokens = 0
            for batch in text_loader:
                tokens += int(batch["attention_mask"].sum())
            print(
                f"{len(text_loader)} batches of input_ids {tuple(batch['input_ids'].shape)}, {tokens} real tokens"
            )
        # Streaming: the file read front to back in constant memory (a reservoir shuffles it).
        streaming = DataLoaderFactory.create_text_dataloader(
            str(path), config, tokenizer=tokenizer, max_length=32, loading_mode=LoadingMode.STREAMING
        )
        with streaming:
            lines = sum(len(batch["input_ids"]) for batch in streaming)
        print(f"streaming mode: {lines} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
