"""Seeded per-epoch permutations of dataset indices as functions of the position.

:class:`Bijection` is a keyed pseudorandom permutation of ``range(n)``, the construction of
Grain's ``index_shuffle`` and ``tf.random_index_shuffle``: a Feistel network whose rounds are
keyed by words drawn from (seed, epoch, stream), over a domain just above ``n`` (a power-of-two
half times a half of about ``sqrt(n)`` values); a position whose image lands at or past ``n`` is
encrypted again until it falls below ``n`` (cycle walking), which keeps the map a bijection of
``range(n)``. It is evaluated with numpy over a whole block of positions at once: the i-th key of
a permutation of 10^10 keys costs what it costs for 10^3, and no array of ``n`` is ever built.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Bijection", "epoch_permutation", "epoch_rng", "index_dtype"]

ROUNDS = 6  # four (Grain's and TensorFlow's) left quality() varying more over seeds than a true permutation
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's multipliers: a strong 64-bit avalanche
_M2 = np.uint64(0x94D049BB133111EB)
_SHIFT = np.uint64(31)
_TOP32 = np.uint64(32)
_PIECE = 8192  # positions per pass: the few arrays of a pass stay in the L2 cache


def index_dtype(n: int) -> np.dtype:
    """The smallest unsigned dtype that holds indices 0..n-1."""
    if n <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """An independent generator for (seed, epoch, *stream); same inputs, same draws."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, *stream])))


class Bijection:
    """A seeded bijection of ``range(n)``: ``b(positions)`` maps an array of positions to keys,
    ``b.inverse(keys)`` back. It depends only on (n, seed, epoch, stream) and holds a few words.

    A value ``x`` is split into a low half ``p = x % A`` (``A`` a power of two, about
    ``sqrt(n)``) and a high half ``q = x // A`` in ``[0, B)``, ``B = ceil(n / A)``; the rounds
    alternate ``p ^= F(q)`` and ``q = (q + G(p)) mod B``, each undone by its mirror. The domain
    ``A * B`` exceeds ``n`` by less than ``A``, so cycle walking (re-encrypting a value that
    lands at or past ``n``) almost never runs, where a domain of the next power of two would
    encrypt up to twice per key.
    """

    __slots__ = ("_high", "_keys", "_low_bits", "_n")

    def __init__(self, n: int, seed: int, epoch: int, *stream: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._n = int(n)
        bits = max(2, (self._n - 1).bit_length())
        self._low_bits = (bits + 1) // 2
        self._high = max(1, -(-self._n // (1 << self._low_bits)))  # B
        self._keys = [
            np.uint64(k)
            for k in np.random.SeedSequence([seed, epoch, *stream, 0xFE15]).generate_state(ROUNDS, np.uint64)
        ]

    def __len__(self) -> int:
        return self._n

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The keys at ``positions`` (integers in ``[0, n)``), as uint64."""
        return self._walk(self._encrypt, positions)

    def inverse(self, keys: np.ndarray) -> np.ndarray:
        """The positions of ``keys`` (integers in ``[0, n)``), as uint64."""
        return self._walk(self._decrypt, keys)

    def _walk(self, step, values: np.ndarray) -> np.ndarray:
        """``step`` applied until every value is below n, in pieces that stay in the CPU cache."""
        values = np.asarray(values)
        # int64 positions are read as uint64 in place: a negative one reads as huge, and fails here
        values = values.view(np.uint64) if values.dtype == np.int64 else values.astype(np.uint64, copy=False)
        if values.size and int(values.max()) >= self._n:  # past n a walk may never come back
            raise IndexError(f"position {int(values.max())} out of range for a permutation of {self._n}")
        if self._n <= 1:
            return values.copy()
        if values.size <= _PIECE:
            return self._walk_piece(step, values)
        flat = values.reshape(-1)
        out = np.empty_like(flat)
        for first in range(0, flat.size, _PIECE):
            out[first : first + _PIECE] = self._walk_piece(step, flat[first : first + _PIECE])
        return out.reshape(values.shape)

    def _walk_piece(self, step, values: np.ndarray) -> np.ndarray:
        """``step`` applied until every value is below n (it stays on the values' cycle)."""
        out = step(values)
        n = np.uint64(self._n)
        again = np.flatnonzero(out >= n)
        while again.size:
            moved = step(out[again])
            out[again] = moved
            again = again[moved >= n]
        return out

    def _split(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = values & np.uint64((1 << self._low_bits) - 1)
        return low, values >> np.uint64(self._low_bits)

    def _join(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        high <<= np.uint64(self._low_bits)
        high |= low
        return high

    def _round(self, i: int, low: np.ndarray, high: np.ndarray, mixed: np.ndarray, spare: np.ndarray) -> None:
        """``mixed`` = round ``i``'s function of the half it reads: a keyed 64-bit mix
        (splitmix64's finaliser, every input bit reaching the high bits), whose top bits are
        ``F(q)`` (``low_bits`` bits) in even rounds and ``G(p)`` (scaled to [0, B)) in odd ones."""
        np.bitwise_xor(high if i % 2 == 0 else low, self._keys[i], out=mixed)
        mixed *= _M1
        np.right_shift(mixed, _SHIFT, out=spare)
        mixed ^= spare
        mixed *= _M2
        if i % 2 == 0:
            mixed >>= np.uint64(64 - self._low_bits)
        else:
            mixed >>= _TOP32
            mixed *= np.uint64(self._high)
            mixed >>= _TOP32

    def _encrypt(self, values: np.ndarray) -> np.ndarray:
        low, high = self._split(values)
        mixed, spare = np.empty_like(low), np.empty_like(low)
        size = np.uint64(self._high)
        for i in range(len(self._keys)):
            self._round(i, low, high, mixed, spare)
            if i % 2 == 0:  # p ^= F(q)
                low ^= mixed
            else:  # q = (q + G(p)) mod B; both terms are below B, and q - B wraps past q if q < B
                high += mixed
                np.subtract(high, size, out=spare)
                np.minimum(high, spare, out=high)
        return self._join(low, high)

    def _decrypt(self, values: np.ndarray) -> np.ndarray:
        low, high = self._split(values)
        mixed, spare = np.empty_like(low), np.empty_like(low)
        size = np.uint64(self._high)
        for i in reversed(range(len(self._keys))):
            self._round(i, low, high, mixed, spare)
            if i % 2 == 0:
                low ^= mixed
            else:  # q = (q - G(p)) mod B
                high += size
                high -= mixed
                np.subtract(high, size, out=spare)
                np.minimum(high, spare, out=high)
        return self._join(low, high)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on (n, seed, epoch), as one array (what
    ``Permutation().keys`` returns; a run never builds it, see :class:`PermutedKeys`)."""
    return Bijection(n, seed, epoch)(np.arange(n, dtype=np.uint64)).astype(index_dtype(n))
