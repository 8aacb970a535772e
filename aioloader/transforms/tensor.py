"""Value transforms: to a float tensor, and per-channel normalisation (of an image, a batch, or
the image of an ``(image, label, ...)`` tuple)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from aioloader.transforms._image import is_pil, on_image


class ToFloat:
    """An image to a float tensor: a PIL image or an ``[H, W(, C)]`` array becomes ``[C, H, W]``;
    uint8 values are scaled to [0, 1] (``scale=True``), other values are only cast."""

    random = False

    def __init__(self, *, dtype: torch.dtype = torch.float32, scale: bool = True) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
        self.dtype = dtype
        self.scale = bool(scale)

    def __call__(self, sample: Any) -> Any:
        return on_image(sample, self._apply)

    def _apply(self, image: Any) -> torch.Tensor:
        if is_pil(image):
            image = np.asarray(image)
        if isinstance(image, np.ndarray):
            array = image[:, :, None] if image.ndim == 2 else image
            image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"ToFloat: expected an image (PIL, array or tensor), got {type(image).__name__}")
        out = image.to(self.dtype)
        if self.scale and image.dtype == torch.uint8:
            out = out.div_(255.0)
        return out

    def __repr__(self) -> str:
        return f"ToFloat(dtype={self.dtype}, scale={self.scale})"


class Normalize:
    """``(x - mean) / std`` per channel, on a float tensor ``[..., C, H, W]`` (a sample or a batch)."""

    random = False

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel():
            raise ValueError(
                f"mean and std must have the same length, got {mean_t.numel()} and {std_t.numel()}"
            )
        if bool((std_t == 0).any()):
            raise ValueError(f"std must not contain 0, got {list(std)}")
        self.mean = mean_t.reshape(-1, 1, 1)
        self.std = std_t.reshape(-1, 1, 1)

    def __call__(self, sample: Any) -> Any:
        return on_image(sample, self._apply)

    def _apply(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or not image.dtype.is_floating_point:
            raise TypeError("Normalize: expected a float tensor [..., C, H, W]; apply ToFloat() first")
        mean = self.mean.to(image.dtype)
        std = self.std.to(image.dtype)
        return (image - mean) / std

    def __repr__(self) -> str:
        return f"Normalize({self.mean.flatten().tolist()}, {self.std.flatten().tolist()})"
