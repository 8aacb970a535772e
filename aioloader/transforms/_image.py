"""Image helpers shared by the geometric transforms: one code path per image kind.

Three kinds are accepted and kept: a PIL image, a tensor ``[..., H, W]`` (CHW or a batch), and
a numpy array ``[H, W]`` or ``[H, W, C]`` (the layout decoders return).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}
INTERPOLATIONS = tuple(_PIL_RESAMPLE)


def is_pil(image: Any) -> bool:
    return hasattr(image, "getbands") and hasattr(image, "resize")


def image_size(image: Any) -> tuple[int, int]:
    """``(height, width)``."""
    if is_pil(image):
        width, height = image.size
        return height, width
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    raise TypeError(
        f"expected a PIL image, a tensor [..., H, W] or an array [H, W(, C)], got {type(image).__name__}"
    )


def _resize_tensor(image: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    squeeze = image.ndim == 3
    batch = (
        image.unsqueeze(0) if squeeze else image.reshape(-1, *image.shape[-3:]) if image.ndim > 3 else image
    )
    if image.ndim == 2:
        batch = image[None, None]
    dtype = batch.dtype
    work = batch if dtype.is_floating_point else batch.float()
    options: dict[str, Any] = {"mode": interpolation}
    if interpolation != "nearest":
        options.update(align_corners=False, antialias=True)
    out = F.interpolate(work, size=size, **options)
    if not dtype.is_floating_point:
        out = out.round_().clamp_(torch.iinfo(dtype).min, torch.iinfo(dtype).max).to(dtype)
    if image.ndim == 2:
        return out[0, 0]
    if squeeze:
        return out[0]
    return out.reshape(*image.shape[:-2], *size)


def resized_crop(
    image: Any, box: tuple[int, int, int, int], size: tuple[int, int], interpolation: str
) -> Any:
    """The crop ``box`` = ``(top, left, height, width)`` of ``image``, resized to ``size`` (h, w)."""
    top, left, height, width = box
    if is_pil(image):
        return image.resize(
            (size[1], size[0]), _PIL_RESAMPLE[interpolation], box=(left, top, left + width, top + height)
        )
    if isinstance(image, torch.Tensor):
        crop = image[..., top : top + height, left : left + width]
        return crop if (height, width) == size else _resize_tensor(crop, size, interpolation)
    if isinstance(image, np.ndarray):
        crop = image[top : top + height, left : left + width]
        if (height, width) == size:
            return np.ascontiguousarray(crop)
        chw = torch.from_numpy(np.ascontiguousarray(crop if crop.ndim == 2 else crop.transpose(2, 0, 1)))
        out = _resize_tensor(chw, size, interpolation).numpy()
        return out if out.ndim == 2 else np.ascontiguousarray(out.transpose(1, 2, 0))
    image_size(image)  # raises the TypeError
    return image


def flip(image: Any, *, vertical: bool) -> Any:
    if is_pil(image):
        return image.transpose(1 if vertical else 0)  # Image.FLIP_TOP_BOTTOM / FLIP_LEFT_RIGHT
    if isinstance(image, torch.Tensor):
        return image.flip(-2 if vertical else -1)
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image[::-1] if vertical else image[:, ::-1])
    image_size(image)
    return image


def on_image(sample: Any, fn: Any) -> Any:
    """``fn`` on the image: the sample itself, or the first element of an ``(image, label, ...)``
    tuple (the layout ``decode_image`` and ``ImageFolder`` use), keeping the other elements."""
    if isinstance(sample, tuple) and not hasattr(sample, "_fields"):
        return (fn(sample[0]), *sample[1:])
    return fn(sample)
