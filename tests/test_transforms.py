"""al.transforms: per-sample randomness from (seed, epoch, key) through the map stage, the image
transforms on every image kind, batch mixing, and the tokenisation hook."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import aioloader as al
from aioloader.order.sample_rng import WithRng, key_rng
from aioloader.transforms import (
    CenterCrop,
    Compose,
    CutMix,
    MixUp,
    Normalize,
    OnField,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    Resize,
    ToFloat,
    Tokenize,
)


class Images:
    """A map-style dataset of ``(uint8 CHW image, index)`` pairs (picklable, deterministic)."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.images = torch.from_numpy(rng.integers(0, 256, (n, 3, 24, 32), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], index


AUGMENT = Compose(
    [RandomResizedCrop(12, scale=(0.2, 1.0)), RandomHorizontalFlip(), RandomVerticalFlip(), ToFloat()]
)


def augmented(
    executor: str, *, epoch: int = 0, seed: int = 0, shuffle: bool = False, **map_options: Any
) -> dict:
    """``{index: augmented image}`` for one epoch."""
    loader = al.Loader.from_source(Images(48), shuffle=shuffle, seed=seed).map(
        AUGMENT, executor=executor, **map_options
    )
    with loader:
        loader.set_epoch(epoch)
        return {index: image for image, index in loader}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_augmentation_is_identical_across_executors_and_concurrency() -> None:
    inline = augmented("inline")
    assert same(inline, augmented("thread", concurrency=4))
    assert same(inline, augmented("thread", concurrency=3, ordered=False))
    assert same(inline, augmented("auto"))


def test_augmentation_is_identical_in_process_workers_in_every_epoch() -> None:
    try:
        import aioloader.workers  # noqa: F401 - registers executor="process"
        from aioloader._run.executors import external_executor
    except ImportError as exc:  # pragma: no cover - the process pool is built separately
        pytest.skip(f"process executor not importable: {exc}")
    if external_executor("process") is None:  # pragma: no cover
        pytest.skip("process executor not registered")
    images = [np.asarray(image.permute(1, 2, 0)) for image, _ in (Images(24)[i] for i in range(24))]
    augment = Compose([RandomResizedCrop(12, scale=(0.2, 1.0)), RandomHorizontalFlip()])

    def run(executor: str) -> list[list[np.ndarray]]:
        """Two epochs on one Loader: the process pool, started in epoch 0, serves epoch 1 too."""
        with al.Loader.from_source(images, seed=4).map(augment, executor=executor, concurrency=2) as loader:
            return [list(loader) for _ in range(2)]

    inline, process = run("inline"), run("process")
    for epoch in range(2):
        assert len(process[epoch]) == len(images)
        assert all(np.array_equal(a, b) for a, b in zip(inline[epoch], process[epoch], strict=True))
    # a new epoch draws anew in the workers too (they once kept epoch 0's generator)
    assert sum(np.array_equal(a, b) for a, b in zip(process[0], process[1], strict=True)) < len(images) // 4


def test_augmentation_differs_between_epochs_and_seeds_and_repeats_per_epoch() -> None:
    epoch0 = augmented("inline", epoch=0)
    epoch1 = augmented("inline", epoch=1)
    assert sum(torch.equal(epoch0[k], epoch1[k]) for k in epoch0) < len(epoch0) // 4
    assert same(epoch1, augmented("thread", epoch=1, concurrency=4))
    assert not same(epoch0, augmented("inline", seed=1))


def test_augmentation_follows_the_key_not_the_position() -> None:
    """What makes it survive a resume: a sample's draws depend on its key alone."""
    plain = augmented("inline", epoch=2)
    shuffled = augmented("inline", epoch=2, shuffle=True)
    assert same(plain, shuffled)
    loader = al.Loader.from_source(Images(48)).filter(lambda s: s[1] % 3 == 0).map(AUGMENT)
    with loader:
        loader.set_epoch(2)
        filtered = {index: image for image, index in loader}
    assert all(torch.equal(filtered[k], plain[k]) for k in filtered)


def test_batch_level_mixup_is_deterministic_per_epoch() -> None:
    def mixed(executor: str, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = (
            al.Loader.from_source(Images(32))
            .map(ToFloat())
            .batch(8)
            .map(MixUp(num_classes=32, alpha=0.4), executor=executor, concurrency=2)
        )
        with loader:
            loader.set_epoch(epoch)
            return list(loader)

    first = mixed("inline", 0)
    for (a, la), (b, lb) in zip(first, mixed("thread", 0), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(first, mixed("inline", 1), strict=True))


def test_random_map_rejects_async_transforms() -> None:
    class AsyncRandom:
        random = True

        async def __call__(self, sample: Any, rng: Any) -> Any:
            return sample

    with pytest.raises(TypeError, match="random transform must be sync"):
        al.Loader.from_source([1]).map(AsyncRandom())


def test_plain_functions_marked_random_get_a_generator() -> None:
    def jitter(x: float, rng: np.random.Generator) -> float:
        return x + rng.random()

    jitter.random = True  # type: ignore[attr-defined]
    with al.Loader.from_source([0.0] * 4, seed=5).map(jitter) as loader:
        out = list(loader)
    assert out == [jitter(0.0, key_rng(5, 0, k)) for k in range(4)]


# -- per-sample generators --------------------------------------------------------------------


def test_key_rng_streams_are_distinct_and_reproducible() -> None:
    keys = [0, 1, 2**40, (0, 1), (1, 0), [1], [1, 0, 0], "a", ("a", 1), -1]  # lists encode as tuples
    draws = [tuple(key_rng(0, 0, k).integers(0, 2**62, 2)) for k in keys]
    assert len(set(draws)) == len(keys)
    assert draws == [tuple(key_rng(0, 0, k).integers(0, 2**62, 2)) for k in keys]
    assert key_rng(0, 0, 1).random() != key_rng(0, 1, 1).random() != key_rng(1, 0, 1).random()


def test_transforms_and_the_rng_wrapper_pickle() -> None:
    for t in (
        AUGMENT,
        Resize(8),
        Normalize([0.5], [0.5]),
        MixUp(num_classes=3),
        CutMix(num_classes=3),
        Tokenize(),
    ):
        clone = pickle.loads(pickle.dumps(t))
        assert type(clone) is type(t)
    wrapper = pickle.loads(pickle.dumps(WithRng(AUGMENT, 3)))
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    assert torch.equal(wrapper((7, image, 4)), AUGMENT(image, key_rng(3, 4, 7)))


# -- image transforms -------------------------------------------------------------------------


def kinds(height: int = 20, width: int = 30) -> list[Any]:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return [Image.fromarray(array), array, torch.from_numpy(array.transpose(2, 0, 1).copy())]


def size_of(image: Any) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size[1], image.size[0]
    if isinstance(image, np.ndarray):
        return image.shape[:2]
    return tuple(image.shape[-2:])


@pytest.mark.parametrize("image", kinds(), ids=["pil", "array", "tensor"])
def test_geometry_keeps_the_kind_and_gives_the_size(image: Any) -> None:
    rng = np.random.default_rng(1)
    assert size_of(Resize(10)(image)) == (10, 15)  # shorter side, aspect kept
    assert size_of(Resize((7, 9))(image)) == (7, 9)
    assert size_of(CenterCrop(8)(image)) == (8, 8)
    crop = RandomResizedCrop((12, 14))(image, rng)
    assert type(crop) is type(image) and size_of(crop) == (12, 14)
    flipped = RandomHorizontalFlip(p=1.0)(image, rng)
    assert type(flipped) is type(image)
    assert np.array_equal(np.asarray(ToFloat()(flipped)), np.asarray(ToFloat()(image)).copy()[:, :, ::-1])
    assert RandomVerticalFlip(p=0.0)(image, rng) is image


def test_resize_values_match_between_kinds() -> None:
    pil, array, tensor = kinds()
    from_array = torch.from_numpy(Resize((10, 15))(array).transpose(2, 0, 1).copy())
    from_tensor = Resize((10, 15))(tensor)
    assert torch.equal(from_array, from_tensor)
    from_pil = ToFloat(scale=False)(Resize((10, 15))(pil))
    assert (from_pil - from_tensor.float()).abs().mean() < 3  # Pillow's filter differs slightly


def test_random_resized_crop_box_stays_inside_and_is_reproducible() -> None:
    crop = RandomResizedCrop(8)
    for key in range(50):
        top, left, h, w = crop.box(20, 30, key_rng(0, 0, key))
        assert top >= 0 and top + h <= 20 and left >= 0 and left + w <= 30 and h > 0 and w > 0
        assert (top, left, h, w) == crop.box(20, 30, key_rng(0, 0, key))


def test_transforms_apply_to_the_image_of_a_tuple_and_on_field() -> None:
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    out, label = Resize(10)((image, 5))
    assert out.shape == (3, 10, 15) and label == 5
    sample = {"img": image, "y": 1}
    out = OnField(Compose([RandomResizedCrop(6), ToFloat()]), "img")(sample, np.random.default_rng(0))
    assert out["img"].shape == (3, 6, 6) and out["y"] == 1
    assert OnField(RandomResizedCrop(6), "img").random


def test_to_float_and_normalize() -> None:
    image = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    x = ToFloat()(image)
    assert x.dtype == torch.float32 and torch.all(x == 1.0)
    normalized = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])(x)
    assert torch.allclose(normalized, torch.full((3, 2, 2), 2.0))
    batch = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])(torch.zeros(4, 3, 2, 2))
    assert torch.allclose(batch, torch.full((4, 3, 2, 2), -2.0))
    with pytest.raises(TypeError, match="ToFloat"):
        Normalize([0.5], [0.5])(image)
    with pytest.raises(ValueError, match="std"):
        Normalize([0.5], [0.0])


def test_mixup_and_cutmix_mix_labels_with_the_image_weight() -> None:
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    labels = torch.arange(4)
    for mix in (MixUp(num_classes=4, alpha=1.0), CutMix(num_classes=4, alpha=1.0)):
        out, soft = mix((images, labels), np.random.default_rng(3))
        assert out.shape == images.shape and soft.shape == (4, 4)
        assert torch.allclose(soft.sum(1), torch.ones(4))
        # sample i mixes itself and i-1 with weights matching the mean pixel value
        expected = soft @ torch.arange(4.0)
        assert torch.allclose(out.mean(dim=(1, 2, 3)), expected, atol=1e-5)
    out, soft = MixUp(num_classes=4, p=0.0)((images, labels), np.random.default_rng(0))
    assert torch.equal(out, images) and torch.equal(soft, torch.eye(4))


def test_argument_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="size"):
        Resize(0)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="p must"):
        RandomHorizontalFlip(p=2)
    with pytest.raises(ValueError, match="interpolation"):
        Resize(8, interpolation="cubic-ish")
    with pytest.raises(ValueError, match="num_classes"):
        MixUp(num_classes=0)
    with pytest.raises(TypeError, match="transforms"):
        Compose(Resize(8))


# -- tokenisation ----------------------------------------------------------------------------


class WordTokenizer:
    """A stand-in with the Hugging Face calling convention: ``__call__`` returns a mapping."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str) -> dict[str, list[int]]:
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}


class EncodeTokenizer:
    def encode(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]


def test_tokenize_fallback_callable_and_encode() -> None:
    assert Tokenize()("héllo") == [104, 233, 108, 108, 111]
    assert Tokenize(max_length=2)("hello") == [104, 101]
    assert Tokenize(WordTokenizer())("a b a c") == [1, 2, 1, 3]
    assert Tokenize(EncodeTokenizer(), max_length=2)("aa bbb c") == [2, 3]
    assert Tokenize(lambda s: torch.tensor([[1, 2, 3]]))("x") == [1, 2, 3]
    assert Tokenize(field="text")({"text": "ab", "y": 1}) == {"y": 1, "input_ids": [97, 98]}
    with pytest.raises(TypeError, match="str"):
        Tokenize()(b"bytes")
    with pytest.raises(ValueError, match="max_length"):
        Tokenize(max_length=0)


def test_tokenize_then_pad_in_a_loader() -> None:
    lines = ["one two", "three", "four five six seven"]
    loader = al.Loader.from_source(lines).map(Tokenize(max_length=5)).batch(3, collate=al.collate.pad)
    with loader:
        (batch,) = list(loader)
    assert batch.values.shape == (3, 5)
    assert batch.lengths.tolist() == [5, 5, 5]
