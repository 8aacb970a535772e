"""Decoding raw image bytes into uint8 CHW tensors with Pillow (optionally resized).

:func:`decode_image` returns a picklable callable, so it runs inline, in threads (Pillow
releases the GIL while decoding and resizing) or in the process pool. It takes raw bytes, or an
``(raw_bytes, label, ...)`` tuple as :class:`~aioloader.sources.ImageFolder` yields, whose first
element it decodes. Bytes that are not an image raise ``DataCorruptionError`` naming the file
and key (when the bytes came from a file source), so ``on_error="skip"`` can skip them.
"""

from __future__ import annotations

import io
import numbers
from typing import Any

import numpy as np
import torch
from PIL import Image

from aioloader.errors import DataCorruptionError

__all__ = ["decode_image", "ImageDecoder"]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_MODES = ("RGB", "L", "RGBA")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"size must be None, an int or a (height, width) pair of ints, got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(size[0]), int(size[1])


class ImageDecoder:
    """Bytes -> ``torch.uint8`` tensor of shape (C, H, W). Made by :func:`decode_image`."""

    def __init__(self, size: tuple[int, int] | None, mode: str, resample: str) -> None:
        self.size = size
        self.mode = mode
        self.resample = resample

    def __call__(self, sample: Any) -> Any:
        if isinstance(sample, tuple):
            if not sample:
                raise TypeError("decode_image: got an empty tuple")
            return (self.decode(sample[0]), *sample[1:])
        return self.decode(sample)

    def decode(self, data: bytes | bytearray | memoryview) -> torch.Tensor:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"decode_image expects the raw bytes of an image, got {type(data).__name__}")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image = image.convert(self.mode) if image.mode != self.mode else image
                if self.size is not None and image.size != (self.size[1], self.size[0]):
                    image = image.resize((self.size[1], self.size[0]), _RESAMPLE[self.resample])
                else:
                    image.load()
                array = np.asarray(image)
        except _DECODE_ERRORS as exc:
            raise self._corrupt(data, exc) from exc
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # Pillow may hand out its buffer read-only
            array = array.copy()
        return torch.from_numpy(array)

    def _corrupt(self, data: Any, exc: BaseException) -> DataCorruptionError:
        path, key = getattr(data, "path", None), getattr(data, "key", None)
        what = f"file {path!r} (key {key!r})" if path is not None else f"a sample of {len(data)} bytes"
        return DataCorruptionError(
            f"decode_image: {what} is not a decodable image ({type(exc).__name__}: {exc})", key=key
        )

    def __repr__(self) -> str:
        return f"decode_image(size={self.size}, mode={self.mode!r}, resample={self.resample!r})"


def decode_image(
    size: int | tuple[int, int] | None = None, *, mode: str = "RGB", resample: str = "bilinear"
) -> ImageDecoder:
    """A function decoding image bytes into a uint8 CHW tensor.

    ``size``: ``None`` keeps the image's size; an int resizes to a square; ``(height, width)``
    to that size. ``mode``: the Pillow mode to convert to ("RGB" gives 3 channels, "L" one).
    ``resample``: the resize filter ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming").
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(map(repr, _RESAMPLE))}, got {resample!r}")
    return ImageDecoder(_check_size(size), mode, resample)
