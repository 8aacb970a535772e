"""Classify a user's source as indexable, iterable or async iterable, once, at build time."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aioloader.sources._dataset_reader import dataset_reader


@dataclass(frozen=True, slots=True)
class IndexableSource:
    """Random access by integer key, and what the run may use of the source besides.

    The implicit read stage uses, in order of preference: ``aget(key)`` (a coroutine method:
    async file or network I/O, run on the loop with ``read_concurrency`` reads in flight,
    default 16), ``__getitems__(keys)`` (the torch batched-fetch protocol: one call per block,
    e.g. a whole HDF5 row range), else ``__getitem__(key)``. Every other part of the protocol
    is optional and read here, once, so the run never probes the source: ``worker_reader()``,
    ``read_failures`` (the read's own ``(on_error, max_failures)``), ``aclose_io()`` and
    ``read_ahead(keys)``: given the run's keys in the order the read stage will ask for them
    (an iterator of key arrays), an object whose ``aget(key)`` replaces ``aget`` for that run
    and whose ``aclose()`` the run awaits at its end, or None (an indexed ``WebDataset`` reads
    the samples of a global shuffle ahead of the consumer, :mod:`aioloader.io.read_ahead`).
    """

    obj: Any
    length: int
    get_one: Callable[[int], Any]
    get_many: Callable[[list[int]], list[Any]] | None
    aget_one: Callable[[int], Awaitable[Any]] | None = None
    read_concurrency: int = 16
    # a picklable keys -> items function for a pool worker to read its own items, or None: the
    # source's ``worker_reader()`` (a protocol any source may offer; aioloader._run.read_fusion)
    worker_reader: Callable[[list[int]], list[Any]] | None = None
    # a user's dataset read the same way in a worker (an explicit executor="process" stage
    # after the source uses it; aioloader.sources._dataset_reader)
    dataset_reader: Any = None
    # the source's own read policy, ``(on_error, max_failures)``, as an indexed WebDataset's
    # ``on_error``; None: the first map's (aioloader._run.graph.read_policy)
    read_failures: tuple[str, int | float] | None = None
    # closes the connections the reads opened on a run's loop, awaited when the run ends
    aclose_io: Callable[[], Awaitable[None]] | None = None
    # the source's read of a run's keys ahead, in their order: keys -> a reader or None
    read_ahead: Callable[[Iterator[np.ndarray]], Any] | None = None


@dataclass(frozen=True, slots=True)
class IterableSource:
    """A sync iterable; keys are stream positions. ``one_shot`` when it is its own iterator."""

    obj: Iterable[Any]
    one_shot: bool


@dataclass(frozen=True, slots=True)
class AsyncIterableSource:
    obj: AsyncIterable[Any]
    one_shot: bool


@dataclass(frozen=True, slots=True)
class ShardStreamSource:
    """Shards streamed in a per-epoch shard order, each rank reading its own
    (``aioloader._run.stages.shard_source``): an object with ``num_shards``, ``urls`` and an
    async ``stream(shards, *, skip, report)``, such as a ``WebDataset`` without an index."""

    obj: Any
    # what a process map's workers stream the shards from, or None (the parent streams): the
    # source's ``worker_stream()``, read here once (aioloader._run.stages.shard_map)
    worker_stream: Any = None


AdaptedSource = IndexableSource | IterableSource | AsyncIterableSource | ShardStreamSource


def _is_torch_iterable_dataset(obj: Any) -> bool:
    try:
        from torch.utils.data import IterableDataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, IterableDataset)


def adapt(source: Any) -> AdaptedSource:
    """Classify ``source``; raise ``TypeError`` naming the argument when it is neither kind.

    An object may say what to adapt in its place with ``__aioloader_source__()`` (a file source
    in streaming mode hands over its sequential stream view)."""
    hook = getattr(type(source), "__aioloader_source__", None)
    if hook is not None:
        source = hook(source)
    if hasattr(source, "num_shards") and inspect.isasyncgenfunction(getattr(type(source), "stream", None)):
        make_stream = getattr(source, "worker_stream", None)
        return ShardStreamSource(source, make_stream() if callable(make_stream) else None)
    if hasattr(source, "__aiter__"):
        return AsyncIterableSource(source, one_shot=hasattr(source, "__anext__"))
    if _is_torch_iterable_dataset(source):
        return IterableSource(source, one_shot=False)
    if isinstance(source, (str, bytes, bytearray, Mapping)):
        raise TypeError(
            f"source must be indexable (__len__ + __getitem__ by int) or iterable; "
            f"a {type(source).__name__} is not a dataset"
        )
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        length = len(source)
        get_many = getattr(source, "__getitems__", None)
        aget = getattr(source, "aget", None)
        aget = aget if aget is not None and inspect.iscoroutinefunction(aget) else None
        concurrency = getattr(source, "read_concurrency", 16)
        make_reader = getattr(source, "worker_reader", None)
        reader = make_reader() if callable(make_reader) else None
        return IndexableSource(
            source,
            length,
            source.__getitem__,
            get_many,
            aget,
            concurrency,
            reader,
            dataset_reader(source),
            read_failures=getattr(source, "read_failures", None),
            aclose_io=getattr(source, "aclose_io", None),
            read_ahead=getattr(source, "read_ahead", None) if aget is not None else None,
        )
    if hasattr(source, "__iter__"):
        return IterableSource(source, one_shot=hasattr(source, "__next__"))
    raise TypeError(
        "source must be indexable (__len__ + __getitem__), an iterable or an async iterable, "
        f"got {type(source).__name__}"
    )
