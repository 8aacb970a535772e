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

from collections.abc import Iterator

import numpy as np

__all__ = ["Bijection", "epoch_permutation", "epoch_rng", "index_dtype"]

ROUNDS = 6  # four (Grain's and TensorFlow's) left quality() varying more over seeds than a true permutation


def _word(value: int) -> np.ndarray:
    """A uint64 constant as a 0-d array: a ufunc takes one with less overhead than a numpy
    scalar, and a pass over a piece is some sixty ufunc calls."""
    return np.array(value, dtype=np.uint64)


_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # splitmix64's: a strong 64-bit avalanche
_M1, _M2 = _word(_MULTIPLIERS[0]), _word(_MULTIPLIERS[1])
_SHIFT = _word(31)
_TOP32 = _word(32)
# positions per pass: its six scratch arrays (64 KB each) stay in the L2 cache and below the
# 128 KB that glibc's malloc maps afresh, and page faults in, on every allocation
_PIECE = 8192
_WALK_ONE_BY_ONE = 32  # fewer values than this to walk: Python ints, not a numpy pass of ~60 calls
_MASK64 = (1 << 64) - 1


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

    __slots__ = (
        "_high", "_key_ints", "_keys", "_low_bits", "_low_mask", "_low_shift", "_n", "_size", "_top_shift",
    )  # fmt: skip

    def __init__(self, n: int, seed: int, epoch: int, *stream: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._n = int(n)
        bits = max(2, (self._n - 1).bit_length())
        self._low_bits = (bits + 1) // 2
        self._high = max(1, -(-self._n // (1 << self._low_bits)))  # B
        self._low_mask = _word((1 << self._low_bits) - 1)
        self._low_shift = _word(self._low_bits)
        self._top_shift = _word(64 - self._low_bits)  # F(q): the mix's top low_bits bits
        self._size = _word(self._high)
        words = np.random.SeedSequence([seed, epoch, *stream, 0xFE15]).generate_state(ROUNDS, np.uint64)
        self._keys = [_word(k) for k in words]
        self._key_ints = [int(k) for k in words]

    def __len__(self) -> int:
        return self._n

    def __call__(self, positions: np.ndarray | range, *, dtype: np.dtype | type = np.uint64) -> np.ndarray:
        """The keys at ``positions`` (integers in ``[0, n)``: an array, or a ``range``, which is
        never built as one), as ``dtype`` (uint64 unless told; :func:`index_dtype` of n holds
        every key)."""
        return self._walk(self._encrypt, self._encrypt_one, positions, np.dtype(dtype))

    def inverse(self, keys: np.ndarray | range, *, dtype: np.dtype | type = np.uint64) -> np.ndarray:
        """The positions of ``keys`` (integers in ``[0, n)``, an array or a ``range``), as
        ``dtype`` (uint64 unless told)."""
        return self._walk(self._decrypt, self._decrypt_one, keys, np.dtype(dtype))

    def _walk(self, step, step_one, values: np.ndarray | range, dtype: np.dtype) -> np.ndarray:
        """``step`` applied until every value is below n, written into one array of ``dtype``.

        The values go through ``step`` in pieces whose scratch arrays are allocated once per
        call and stay in the CPU cache; a range's pieces are made in scratch too, so a call
        allocates its output and nothing else of its size (a fresh array of a large block costs
        more in page faults than the arithmetic on it). The few values that land at or past n
        are walked together at the end (walked per piece, a handful of values cost as many
        numpy calls as the piece), a few of them as Python ints by ``step_one``."""
        flat, shape = self._checked(values)
        if self._n <= 1:  # the only value is 0
            return np.zeros(shape, dtype=dtype)
        out = np.empty(len(flat), dtype=dtype)
        work = _Work(min(len(flat), _PIECE))
        n = np.uint64(self._n)
        walking: list[tuple[np.ndarray, np.ndarray]] = []
        for first, piece in _pieces(flat, work):
            # uint64 keys go straight into the output, others through a scratch array
            image = out[first : first + piece.size] if dtype == np.uint64 else work.image[: piece.size]
            step(piece, image, work)
            if dtype != np.uint64:
                out[first : first + piece.size] = image
            if image.max() >= n:
                again = np.flatnonzero(image >= n)
                walking.append((again + first, image[again]))
        if walking:
            where = np.concatenate([w for w, _ in walking])
            images = np.concatenate([i for _, i in walking])
            if images.size < _WALK_ONE_BY_ONE:
                out[where] = [self._walk_one(step_one, int(image)) for image in images.tolist()]
                return out.reshape(shape)
            again = np.arange(where.size)
            while again.size:  # each image stays on its value's cycle, which comes back below n
                moved = np.empty(again.size, dtype=np.uint64)
                step(images[again], moved, _Work(again.size))
                images[again] = moved
                again = again[moved >= n]
            out[where] = images
        return out.reshape(shape)

    def _walk_one(self, step_one, value: int) -> int:
        """``step_one`` applied to ``value`` until it is below n."""
        while value >= self._n:
            value = step_one(value)
        return value

    def _checked(self, values: np.ndarray | range) -> tuple[np.ndarray | range, tuple[int, ...]]:
        """``values`` flat (a range of positive step as it is, else a uint64 array) and their
        shape, once every value is known to be in ``[0, n)``: past n a walk may never return."""
        if isinstance(values, range) and values.step > 0:
            flat, shape = values, (len(values),)
            lowest, highest = (values[0], values[-1]) if values else (0, 0)
        else:
            values = np.asarray(values)
            # int64 positions are read as uint64 in place: a negative one reads as huge, and fails
            if values.dtype == np.int64:
                flat = values.view(np.uint64).reshape(-1)
            else:
                flat = values.astype(np.uint64, copy=False).reshape(-1)
            shape = values.shape
            lowest, highest = 0, int(flat.max()) if flat.size else 0
        if lowest < 0 or (highest >= self._n and len(flat)):
            bad = lowest if lowest < 0 else highest
            raise IndexError(f"position {bad} out of range for a permutation of {self._n}")
        return flat, shape

    def _split(self, values: np.ndarray, work: _Work) -> tuple[np.ndarray, np.ndarray]:
        low, high = work.low[: values.size], work.high[: values.size]
        np.bitwise_and(values, self._low_mask, out=low)
        np.right_shift(values, self._low_shift, out=high)
        return low, high

    def _join(self, low: np.ndarray, high: np.ndarray, out: np.ndarray) -> None:
        np.left_shift(high, self._low_shift, out=out)
        out |= low

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
            mixed >>= self._top_shift
        else:
            mixed >>= _TOP32
            mixed *= self._size
            mixed >>= _TOP32

    def _encrypt(self, values: np.ndarray, out: np.ndarray, work: _Work) -> None:
        low, high = self._split(values, work)
        mixed, spare = work.mixed[: values.size], work.spare[: values.size]
        size = self._size
        for i in range(len(self._keys)):
            self._round(i, low, high, mixed, spare)
            if i % 2 == 0:  # p ^= F(q)
                low ^= mixed
            else:  # q = (q + G(p)) mod B; both terms are below B, and q - B wraps past q if q < B
                high += mixed
                np.subtract(high, size, out=spare)
                np.minimum(high, spare, out=high)
        self._join(low, high, out)

    def _round_one(self, i: int, half: int) -> int:
        """:meth:`_round` on one Python int (the same 64-bit arithmetic, wrapped by masks)."""
        mixed = ((half ^ self._key_ints[i]) * _MULTIPLIERS[0]) & _MASK64
        mixed ^= mixed >> 31
        mixed = (mixed * _MULTIPLIERS[1]) & _MASK64
        if i % 2 == 0:
            return mixed >> (64 - self._low_bits)
        return (((mixed >> 32) * self._high) & _MASK64) >> 32

    def _encrypt_one(self, value: int) -> int:
        low, high = value & ((1 << self._low_bits) - 1), value >> self._low_bits
        for i in range(len(self._key_ints)):
            if i % 2 == 0:
                low ^= self._round_one(i, high)
            else:
                high += self._round_one(i, low)
                if high >= self._high:
                    high -= self._high
        return high << self._low_bits | low

    def _decrypt_one(self, value: int) -> int:
        low, high = value & ((1 << self._low_bits) - 1), value >> self._low_bits
        for i in reversed(range(len(self._key_ints))):
            if i % 2 == 0:
                low ^= self._round_one(i, high)
            else:
                high -= self._round_one(i, low)
                if high < 0:
                    high += self._high
        return high << self._low_bits | low

    def _decrypt(self, values: np.ndarray, out: np.ndarray, work: _Work) -> None:
        low, high = self._split(values, work)
        mixed, spare = work.mixed[: values.size], work.spare[: values.size]
        size = self._size
        for i in reversed(range(len(self._keys))):
            self._round(i, low, high, mixed, spare)
            if i % 2 == 0:
                low ^= mixed
            else:  # q = (q - G(p)) mod B
                high += size
                high -= mixed
                np.subtract(high, size, out=spare)
                np.minimum(high, spare, out=high)
        self._join(low, high, out)


class _Work:
    """The scratch arrays of one call, reused by its pieces: one array each, so that each stays
    below the size glibc's malloc maps (and unmaps, and faults in again) per allocation."""

    __slots__ = ("high", "image", "low", "mixed", "positions", "spare")

    def __init__(self, size: int) -> None:
        self.low, self.high = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.uint64)
        self.mixed, self.spare = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.uint64)
        self.image, self.positions = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.uint64)


def _pieces(flat: np.ndarray | range, work: _Work) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, values) of each piece: an array's slices, or a range's values made in
    ``work.positions`` (each piece is ``0, step, 2*step, ...`` plus its first value)."""
    if isinstance(flat, np.ndarray):
        for first in range(0, flat.size, _PIECE):
            yield first, flat[first : first + _PIECE]
        return
    steps = np.arange(0, len(work.positions) * flat.step, flat.step, dtype=np.uint64)
    for first in range(0, len(flat), _PIECE):
        size = min(_PIECE, len(flat) - first)
        yield first, np.add(steps[:size], _word(flat[first]), out=work.positions[:size])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on (n, seed, epoch), as one array (what
    ``Permutation().keys`` returns; a run never builds it, see :class:`PermutedKeys`)."""
    return Bijection(n, seed, epoch)(range(n), dtype=index_dtype(n))
