"""Sample transforms: decoding, resizing, cropping, flipping, normalising, composing.

Randomness is drawn per sample from (seed, epoch, key), so augmentation is reproducible whatever
the concurrency or executor. One module per family; this file only re-exports.
"""

__all__: list[str] = []
