"""Sample transforms: decoding, resizing, cropping, flipping, normalising, composing.

Randomness is drawn per sample from (seed, epoch, key), so augmentation is reproducible whatever
the concurrency or executor. One module per family; this file only re-exports.
"""

from aioloader.transforms.check import Check
from aioloader.transforms.compose import Compose, OnField
from aioloader.transforms.decode import decode_image
from aioloader.transforms.geometry import (
    CenterCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    Resize,
)
from aioloader.transforms.mix import CutMix, MixUp
from aioloader.transforms.tensor import Normalize, ToFloat
from aioloader.transforms.text import Tokenize

__all__: list[str] = [
    "decode_image",
    "Compose",
    "OnField",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "ToFloat",
    "Normalize",
    "MixUp",
    "CutMix",
    "Check",
    "Tokenize",
]
