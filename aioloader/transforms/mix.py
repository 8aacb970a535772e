"""Batch-level augmentation: MixUp and CutMix, after ``.batch(...)``.

A batch is ``(images, labels, ...)`` (or a mapping, with ``fields=("image", "label")``):
``images`` a tensor ``[B, C, H, W]`` (or any ``[B, ...]`` for MixUp), ``labels`` class indices
``[B]`` or soft labels ``[B, num_classes]``. Each sample is mixed with its neighbour in the
batch (``roll(1)``, as torchvision); labels come out as float ``[B, num_classes]`` mixed with the
same weight. The generator of a batch is that of its list of member keys, so a batch's mix is
the same for the same (seed, epoch) whatever the executor.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from aioloader.transforms.compose import resolve_rng


def _soft_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.ndim == 1:
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    if labels.ndim == 2 and labels.shape[1] == num_classes:
        return labels.float()
    raise ValueError(
        f"labels must be [B] class indices or [B, {num_classes}] soft labels, got {tuple(labels.shape)}"
    )


class _BatchMix:
    random = True

    def __init__(
        self, *, alpha: float, num_classes: int, p: float, fields: tuple[Hashable, Hashable]
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.p = float(p)
        self.fields = tuple(fields)

    def mix(self, images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> tuple[Any, Any]:
        raise NotImplementedError

    def __call__(self, batch: Any, rng: np.random.Generator | None = None) -> Any:
        rng = resolve_rng(rng)
        image_field, label_field = self.fields
        images, labels = batch[image_field], batch[label_field]
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected tensors for images and labels")
        labels = _soft_labels(labels, self.num_classes)
        if not images.dtype.is_floating_point:
            images = images.float()
        if rng.random() < self.p and len(images) > 1:
            images, labels = self.mix(images, labels, rng)
        if isinstance(batch, dict):
            return {**batch, image_field: images, label_field: labels}
        out = list(batch)
        out[image_field], out[label_field] = images, labels
        return type(batch)(out) if isinstance(batch, list) else tuple(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, num_classes={self.num_classes}, p={self.p})"


class MixUp(_BatchMix):
    """``lam * x + (1 - lam) * x.roll(1)`` with ``lam ~ Beta(alpha, alpha)``, labels alike."""

    def __init__(
        self,
        *,
        num_classes: int,
        alpha: float = 0.2,
        p: float = 1.0,
        fields: tuple[Hashable, Hashable] = (0, 1),
    ) -> None:
        super().__init__(alpha=alpha, num_classes=num_classes, p=p, fields=fields)

    def mix(self, images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> tuple[Any, Any]:
        lam = float(rng.beta(self.alpha, self.alpha))
        images = images * lam + images.roll(1, 0) * (1.0 - lam)
        labels = labels * lam + labels.roll(1, 0) * (1.0 - lam)
        return images, labels


class CutMix(_BatchMix):
    """Paste a box of the neighbour's image (area ``1 - lam``, ``lam ~ Beta(alpha, alpha)``, at
    a random centre, clipped to the image); labels mixed by the box's actual area."""

    def __init__(
        self,
        *,
        num_classes: int,
        alpha: float = 1.0,
        p: float = 1.0,
        fields: tuple[Hashable, Hashable] = (0, 1),
    ) -> None:
        super().__init__(alpha=alpha, num_classes=num_classes, p=p, fields=fields)

    def mix(self, images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> tuple[Any, Any]:
        if images.ndim < 3:
            raise ValueError(f"CutMix: images must be [B, ..., H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2], images.shape[-1]
        lam = float(rng.beta(self.alpha, self.alpha))
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = images.roll(1, 0)[..., top:bottom, left:right]
        kept = 1.0 - (bottom - top) * (right - left) / (height * width)
        labels = labels * kept + labels.roll(1, 0) * (1.0 - kept)
        return images, labels
