"""Geometric image transforms: resize, center crop, random resized crop, random flips.

Each accepts a PIL image, a tensor ``[..., H, W]`` or an array ``[H, W(, C)]`` and returns the
same kind; given an ``(image, label, ...)`` tuple it transforms the image and keeps the rest. The random ones follow the protocol of :mod:`aioloader.transforms.compose`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from aioloader.transforms._image import INTERPOLATIONS, flip, image_size, on_image, resized_crop
from aioloader.transforms.compose import resolve_rng


def _size_pair(size: Any, argument: str) -> tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        pair = (size[0], size[1])
    else:
        raise TypeError(f"{argument} must be an int or a (height, width) pair, got {size!r}")
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"{argument} must be positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


class Resize:
    """Resize to ``size``: an int scales the shorter side to it (aspect kept, as torchvision),
    a ``(height, width)`` pair is exact. Antialiased when shrinking."""

    random = False

    def __init__(self, size: int | tuple[int, int], *, interpolation: str = "bilinear") -> None:
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            if size <= 0:
                raise ValueError(f"size must be > 0, got {size}")
            self.size: int | tuple[int, int] = int(size)
        else:
            self.size = _size_pair(size, "size")
        self.interpolation = _check_interpolation(interpolation)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if isinstance(self.size, tuple):
            return self.size
        short, long = (height, width) if height <= width else (width, height)
        scaled = int(self.size * long / short)
        return (self.size, scaled) if height <= width else (scaled, self.size)

    def __call__(self, sample: Any) -> Any:
        return on_image(sample, self._apply)

    def _apply(self, image: Any) -> Any:
        height, width = image_size(image)
        return resized_crop(image, (0, 0, height, width), self.output_size(height, width), self.interpolation)

    def __repr__(self) -> str:
        return f"Resize({self.size!r})"


class CenterCrop:
    """The central ``size`` crop (an int for a square, or ``(height, width)``)."""

    random = False

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = _size_pair(size, "size")

    def __call__(self, sample: Any) -> Any:
        return on_image(sample, self._apply)

    def _apply(self, image: Any) -> Any:
        height, width = image_size(image)
        h, w = self.size
        if h > height or w > width:
            raise ValueError(f"CenterCrop: crop {self.size} is larger than the image ({height}, {width})")
        box = ((height - h) // 2, (width - w) // 2, h, w)
        return resized_crop(image, box, self.size, "nearest")

    def __repr__(self) -> str:
        return f"CenterCrop({self.size!r})"


class RandomResizedCrop:
    """A crop of random area (``scale`` of the image) and aspect ratio (``ratio``, sampled
    log-uniformly) resized to ``size``; torchvision's algorithm (10 tries, then a center crop)."""

    random = True

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
    ) -> None:
        self.size = _size_pair(size, "size")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio!r}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = _check_interpolation(interpolation)

    def box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, sample: Any, rng: np.random.Generator | None = None) -> Any:
        rng = resolve_rng(rng)

        def apply(image: Any) -> Any:
            height, width = image_size(image)
            return resized_crop(image, self.box(height, width, rng), self.size, self.interpolation)

        return on_image(sample, apply)

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size!r}, scale={self.scale}, ratio={self.ratio})"


class _RandomFlip:
    random = True
    vertical = False

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, sample: Any, rng: np.random.Generator | None = None) -> Any:
        if resolve_rng(rng).random() < self.p:
            return on_image(sample, self._apply)
        return sample

    def _apply(self, image: Any) -> Any:
        return flip(image, vertical=self.vertical)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomHorizontalFlip(_RandomFlip):
    """Mirror left-right with probability ``p``."""


class RandomVerticalFlip(_RandomFlip):
    """Mirror top-bottom with probability ``p``."""

    vertical = True
