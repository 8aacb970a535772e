"""The seed API's datasets, built on :mod:`aioloader.sources`.

Each dataset is a torch map-style ``Dataset`` (``torch.utils.data.DataLoader`` works on it) and
an aioloader source (``Loader.from_source(dataset)`` works on it): item ``i`` is
``dataset.sample_fn(dataset.source[i])``, where ``source`` is an ``al.sources`` object doing all
the reading (in the chosen :class:`~aioloader.compat.config.LoadingMode`) and ``sample_fn`` a
small picklable function turning a raw item into the seed's sample (decode + transform, tokenize
+ pad, rows to tensors). :class:`~aioloader.compat.dataloader.EfficientDataLoader` uses the two
parts apart: the source read by the engine, ``sample_fn`` as a concurrent map stage.
"""

from __future__ import annotations

import io
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from aioloader._spec import is_picklable
from aioloader.compat.config import LoadingMode
from aioloader.device import IMAGENET_MEAN, IMAGENET_STD
from aioloader.errors import DataCorruptionError
from aioloader.monitor.memory import MemoryMonitor, check_fraction
from aioloader.sources import HDF5, Array, ImageFolder, JsonLines, TextLines
from aioloader.sources._modes import ModalSource
from aioloader.transforms import Compose, Normalize, Resize, ToFloat, Tokenize, decode_image

__all__ = [
    "BaseDataset",
    "ImageDataset",
    "TextDataset",
    "HDF5Dataset",
    "MemoryEfficientDataset",
    "default_image_transform",
]

PROCESS_MIN_LINES = 20_000  # TextDataset: tokenize in processes from this many lines on
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _loading_mode(value: Any, argument: str = "loading_mode") -> LoadingMode:
    try:
        return LoadingMode(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in LoadingMode)
        raise ValueError(f"{argument} must be a LoadingMode or one of {choices}, got {value!r}") from None


def _image_size(value: Any) -> tuple[int, int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"image_size must be an int or a (height, width) pair of ints, got {value!r}")
    if min(value) < 1:
        raise ValueError(f"image_size must be positive, got {value!r}")
    return int(value[0]), int(value[1])


def _tensor(value: Any) -> torch.Tensor:
    """A row (array, numpy scalar, memory-mapped view) as a tensor owning writable memory."""
    array = np.asarray(value)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def default_image_transform(image_size: int | tuple[int, int] = (224, 224)) -> Compose:
    """The seed's default: resize to ``image_size``, to a float tensor in [0, 1], ImageNet
    normalisation."""
    return Compose([Resize(_image_size(image_size)), ToFloat(), Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# -- sample functions (picklable, holding no source) -----------------------------------------
class ImageSample:
    """``(bytes, label)`` or ``bytes`` -> ``(transform(rgb_pil_image), label)`` or the image."""

    def __init__(self, transform: Callable[[Any], Any] | None) -> None:
        self.transform = transform

    def __call__(self, raw: Any) -> Any:
        data, rest = (raw[0], raw[1:]) if isinstance(raw, tuple) else (raw, None)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = opened.convert("RGB")
        except _IMAGE_ERRORS as exc:
            path, key = getattr(data, "path", None), getattr(data, "key", None)
            raise DataCorruptionError(
                f"ImageDataset: file {path!r} (key {key!r}) is not a decodable image "
                f"({type(exc).__name__}: {exc})",
                key=key,
            ) from exc
        if self.transform is not None:
            image = self.transform(image)
        return image if rest is None else (image, *rest)

    def __repr__(self) -> str:
        return f"ImageSample({self.transform!r})"


class TextSample:
    """A line -> ``{"input_ids", "attention_mask"}``, int64 tensors of ``max_length`` (the seed's
    ``padding="max_length", truncation=True``), padded with the tokenizer's ``pad_token_id``."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenize = Tokenize(tokenizer, max_length=max_length)
        self.max_length = max_length
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, numbers.Integral) else 0

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        ids = self.tokenize.encode(text)
        input_ids = torch.full((self.max_length,), self.pad_id, dtype=torch.int64)
        mask = torch.zeros(self.max_length, dtype=torch.int64)
        if ids:
            input_ids[: len(ids)] = torch.as_tensor(ids, dtype=torch.int64)
            mask[: len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def __repr__(self) -> str:
        return f"TextSample({self.tokenize.tokenizer!r}, max_length={self.max_length})"


class RowsToTensors:
    """An array row (or a tuple of aligned rows) -> a tensor (or a tuple of tensors)."""

    def __call__(self, raw: Any) -> Any:
        if isinstance(raw, tuple):
            return tuple(_tensor(v) for v in raw)
        return _tensor(raw)

    def __repr__(self) -> str:
        return "RowsToTensors()"


class _MappedStream:
    """``fn`` over a source's sequential stream: what a streaming-mode dataset hands the engine."""

    def __init__(self, source: ModalSource, fn: Callable[[Any], Any] | None) -> None:
        self.source = source
        self.fn = fn

    def __iter__(self) -> Iterator[Any]:
        fn = self.fn
        for raw in self.source.stream():
            yield raw if fn is None else fn(raw)


# -- datasets ----------------------------------------------------------------------------------
class BaseDataset(Dataset):
    """A map-style dataset over an ``al.sources`` object: item ``i`` is
    ``sample_fn(source[i])`` (``source[i]`` when ``sample_fn`` is None).

    ``preferred_executor`` is where :class:`EfficientDataLoader` runs ``sample_fn`` when it has
    workers ("thread" when the work releases the GIL, "process" when it holds it). In
    ``LoadingMode.STREAMING`` there is no random access: iterate the dataset (or give it to
    ``Loader.from_source``, which streams it).
    """

    preferred_executor = "auto"

    def __init__(self, source: ModalSource, sample_fn: Callable[[Any], Any] | None = None) -> None:
        if not isinstance(source, ModalSource):
            raise TypeError(f"source must be an al.sources file source, got {type(source).__name__}")
        if sample_fn is not None and not callable(sample_fn):
            raise TypeError(f"sample_fn must be callable or None, got {sample_fn!r}")
        self.source = source
        self.sample_fn = sample_fn

    @property
    def loading_mode(self) -> LoadingMode:
        return LoadingMode(self.source.mode)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        raw = self.source[index]
        return raw if self.sample_fn is None else self.sample_fn(raw)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Items at ``indices`` with one read of the source (torch's batched fetch)."""
        raws = self.source.__getitems__(indices)
        fn = self.sample_fn
        return list(raws) if fn is None else [fn(raw) for raw in raws]

    def __iter__(self) -> Iterator[Any]:
        return iter(_MappedStream(self.source, self.sample_fn))

    def __aioloader_source__(self) -> Any:
        """``Loader.from_source(dataset)``: the dataset itself, or its stream when streaming."""
        if self.source.mode == LoadingMode.STREAMING:
            return _MappedStream(self.source, self.sample_fn)
        return self

    def cache_stats(self) -> dict[str, Any] | None:
        """The source's cache statistics in ``LoadingMode.CACHED`` (``None`` otherwise)."""
        return self.source.cache_stats()

    def close(self) -> None:
        """Close the file handles this process holds."""
        self.source.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


class ImageDataset(BaseDataset):
    """Images under ``data_path`` (``root/<class>/<file>``) as ``(image, label)``: decoded to RGB
    and transformed by ``transform`` (default :func:`default_image_transform`: resize to
    ``image_size``, to tensor, ImageNet normalisation). In ``LoadingMode.CACHED`` up to
    ``cache_size`` files' bytes are kept in memory (an LRU, bounded in bytes)."""

    preferred_executor = "thread"  # Pillow releases the GIL while decoding and resizing

    def __init__(
        self,
        data_path: str | os.PathLike[str],
        image_size: int | tuple[int, int] = (224, 224),
        transform: Callable[[Any], Any] | None = None,
        loading_mode: LoadingMode | str = LoadingMode.LAZY,
        cache_size: int = 1000,
    ) -> None:
        mode = _loading_mode(loading_mode)
        self.image_size = _image_size(image_size)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {transform!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral) or cache_size < 1:
            raise ValueError(f"cache_size must be an int >= 1, got {cache_size!r}")
        self.cache_size = int(cache_size)
        self.transform = transform if transform is not None else default_image_transform(self.image_size)
        if mode == LoadingMode.CACHED:
            source = _cached_image_folder(data_path, self.cache_size)
        else:
            source = ImageFolder(data_path, mode=mode.value)
        super().__init__(source, ImageSample(self.transform))

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.source.class_to_idx

    @property
    def targets(self) -> list[int]:
        return self.source.targets

    @property
    def image_paths(self) -> list[Path]:
        return [self.source.root / f for f in self.source.files]


def _cached_image_folder(data_path: str | os.PathLike[str], cache_size: int) -> ImageFolder:
    """A cached ImageFolder whose byte budget holds about ``cache_size`` average files."""
    listing = ImageFolder(data_path, mode="lazy")
    sizes = [os.stat(listing.root / f).st_size for f in listing.files]
    wanted = cache_size * (sum(sizes) / len(sizes) + 256)
    available = MemoryMonitor().get_memory_stats()["available_gb"] * 2**30
    fraction = min(1.0, max(wanted / max(available, 1.0), 1e-9))
    return ImageFolder(data_path, mode="cached", max_memory_usage=fraction)


class TextDataset(BaseDataset):
    """The lines of the text file(s) at ``data_path``, tokenized by ``tokenizer`` (a Hugging
    Face tokenizer, anything with ``encode(text)`` or a callable returning ids; ``None``:
    characters) into ``{"input_ids", "attention_mask"}`` padded/truncated to ``max_length``.

    With workers, :class:`EfficientDataLoader` tokenizes in processes when the tokenizer pickles
    and the file has at least :data:`PROCESS_MIN_LINES` lines; otherwise inline or in threads,
    as measured (``executor="auto"``)."""

    def __init__(
        self,
        data_path: str | os.PathLike[str],
        tokenizer: Any = None,
        max_length: int = 512,
        loading_mode: LoadingMode | str = LoadingMode.LAZY,
    ) -> None:
        mode = _loading_mode(loading_mode)
        if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        sample_fn = TextSample(tokenizer, self.max_length)
        super().__init__(TextLines(data_path, mode=mode.value), sample_fn)
        # Pure-Python tokenizers hold the GIL: processes, when the tokenizer can travel there
        # and the file is long enough to repay a pool's start (about a second per worker).
        big = mode != LoadingMode.STREAMING and len(self.source) >= PROCESS_MIN_LINES
        self.preferred_executor = "process" if big and is_picklable(sample_fn) else "auto"


class HDF5Dataset(BaseDataset):
    """Rows of ``dataset_name`` in the HDF5 file ``data_path`` as tensors; with ``label_name``,
    ``(row, label)`` pairs from two aligned datasets."""

    preferred_executor = "inline"  # rows to tensors is cheap; the reads are whole row ranges

    def __init__(
        self,
        data_path: str | os.PathLike[str],
        dataset_name: str = "data",
        loading_mode: LoadingMode | str = LoadingMode.LAZY,
        *,
        label_name: str | None = None,
    ) -> None:
        mode = _loading_mode(loading_mode)
        if not isinstance(dataset_name, str) or not dataset_name:
            raise TypeError(f"dataset_name must be a non-empty str, got {dataset_name!r}")
        if label_name is not None and (not isinstance(label_name, str) or not label_name):
            raise TypeError(f"label_name must be a non-empty str or None, got {label_name!r}")
        self.dataset_name = dataset_name
        self.label_name = label_name
        names = [dataset_name] if label_name is None else [dataset_name, label_name]
        super().__init__(HDF5(data_path, names, mode=mode.value), RowsToTensors())


class MemoryEfficientDataset(BaseDataset):
    """A dataset that picks its loading mode from the memory budget.

    ``data_path``: a ``.npy`` file (rows as tensors), an HDF5 file (rows of ``dataset_name``,
    or of its only dataset), a ``.jsonl`` file (records), another text file (lines) or a folder
    of images (uint8 CHW tensors, with labels when there are class sub-folders).
    ``loading_mode=None`` loads everything into memory when it fits within ``max_memory_usage``
    of the available memory, else reads lazily; an explicit mode is used as given.
    """

    def __init__(
        self,
        data_path: str | os.PathLike[str],
        max_memory_usage: float = 0.8,
        loading_mode: LoadingMode | str | None = None,
        *,
        dataset_name: str | None = None,
    ) -> None:
        self.max_memory_usage = check_fraction(max_memory_usage, "max_memory_usage")
        self.memory_monitor = MemoryMonitor(self.max_memory_usage)
        path = Path(data_path)
        if loading_mode is None:
            try:
                source, sample_fn = _open_any(path, LoadingMode.EAGER, self.max_memory_usage, dataset_name)
            except MemoryError:
                source, sample_fn = _open_any(path, LoadingMode.LAZY, self.max_memory_usage, dataset_name)
        else:
            mode = _loading_mode(loading_mode)
            source, sample_fn = _open_any(path, mode, self.max_memory_usage, dataset_name)
        if isinstance(source, ImageFolder):
            self.preferred_executor = "thread"
        super().__init__(source, sample_fn)

    def get_memory_stats(self) -> dict[str, float]:
        """The memory monitor's current sample (see :class:`~aioloader.MemoryMonitor`)."""
        return self.memory_monitor.update()


def _only_dataset(path: Path) -> str:
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    if len(names) != 1:
        raise ValueError(f"dataset_name: {str(path)!r} holds datasets {sorted(names)}; name the one to read")
    return names[0]


def _open_any(
    path: Path, mode: LoadingMode, budget: float, dataset_name: str | None
) -> tuple[ModalSource, Callable[[Any], Any] | None]:
    """The source (and sample function) for ``path``, chosen by its kind."""
    kwargs = {"mode": mode.value, "max_memory_usage": budget}
    suffix = path.suffix.lower()
    if path.is_dir():
        return ImageFolder(path, **kwargs), decode_image()
    if suffix == ".npy":
        return Array(path, **kwargs), RowsToTensors()
    if suffix in _HDF5_SUFFIXES:
        name = dataset_name if dataset_name is not None else _only_dataset(path)
        return HDF5(path, name, **kwargs), RowsToTensors()
    if suffix in (".jsonl", ".ndjson"):
        return JsonLines(path, **kwargs), None
    return TextLines(path, **kwargs), None
