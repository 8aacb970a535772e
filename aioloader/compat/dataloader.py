"""``EfficientDataLoader``: the seed's loader, on the aioloader engine or on torch's DataLoader.

``backend="aio"`` (default) maps a :class:`~aioloader.compat.config.DataLoaderConfig` onto a
:class:`~aioloader.Loader`:

==========================  =================================================================
config                      Loader
==========================  =================================================================
num_workers                 the sample stage's executor and concurrency (0: inline; else the
                            dataset's ``preferred_executor``, "process" for a plain dataset;
                            processes at most :func:`optimal_num_workers`)
prefetch_factor             ``.prefetch(prefetch_factor x max(1, num_workers))`` batches
memory_efficient            ``.prefetch(1)``
shuffle, generator_seed     ``from_source(shuffle=..., seed=...)`` (a reservoir for streams);
                            no seed: one drawn from torch's generator, as torch does
custom_sampler              an ``al.order`` sampler as is, a torch sampler converted
                            (:mod:`aioloader.compat.samplers`), a DistributedSampler as rank,
                            world size, seed and shuffle, and its epoch (below)
custom_batch_sampler        a stream of index lists, each fetched and collated in the sample stage
batch_size, drop_last,      ``.batch(batch_size, collate=collate_fn or al.collate.stack,
collate_fn                  drop_last=drop_last)``
pin_memory (CUDA only)      ``.to_device(pin_memory_device, non_blocking=non_blocking)``
persistent_workers          always: pools live as long as the loader
==========================  =================================================================

A ``DistributedSampler``'s epoch: the DDP idiom ``sampler.set_epoch(e)`` before an epoch works
as on torch. Each iteration takes the sampler's epoch when it has changed since the loader last
took it; ``loader.set_epoch(e)`` sets the sampler's epoch too, so whichever of the two was called
last decides. With neither called, each iteration moves to the next epoch by itself, as
:class:`~aioloader.Loader` does (torch would repeat the epoch); so ``sampler.set_epoch(e)`` with
the ``e`` the loader last took does not repeat that epoch: ``loader.set_epoch(e)`` does. Each
rank's share of an epoch is that of aioloader's own permutation, not torch's: the ranks together
cover the dataset exactly as torch's do, but not with the same indices per rank.

Worker processes (the sample stage with ``executor="process"``) get torch's ``WorkerInfo`` from
``torch.utils.data.get_worker_info()`` and seeded ``random``/``torch``/``numpy`` generators, as
torch's workers. Tasks go to whichever worker is free, so random draws inside ``__getitem__``
are not torch's: reproducible when each batch is one task (a picklable ``collate_fn``), not
otherwise (see :mod:`aioloader.compat.worker_info`).

``backend="torch"`` builds the seed's ``torch.utils.data.DataLoader`` from the same config, so
the two can be compared on the same data (on unshuffled data they yield equal batches).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, get_worker_info

from aioloader._exit import close_at_exit
from aioloader._spec import is_picklable
from aioloader.collate import stack
from aioloader.compat.config import DataLoaderConfig, optimal_num_workers
from aioloader.compat.datasets import BaseDataset
from aioloader.compat.samplers import OrderSampler, is_key_order, key_order
from aioloader.compat.worker_info import TorchWorkerInit, draw_base_seed
from aioloader.loader import Loader
from aioloader.monitor.memory import MemoryMonitor

__all__ = ["EfficientDataLoader", "BACKENDS"]

BACKENDS = ("aio", "torch")
_STREAM_BUFFER_BATCHES = 8  # reservoir size for shuffling a stream, in batches
_MIN_STREAM_BUFFER = 256
logger = logging.getLogger("aioloader.compat")


# -- helpers shared by the backends ----------------------------------------------------------
def _is_indexable(dataset: Any) -> bool:
    if isinstance(dataset, BaseDataset):
        return dataset.source.mode != "streaming"
    if isinstance(dataset, IterableDataset):
        return False
    return hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


def _batch_len(batch: Any) -> int:
    """Samples in a collated batch (the first tensor's first dimension, or the list's length)."""
    while True:
        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0]) if batch.ndim else 1
        if isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], (torch.Tensor, dict)):
            batch = batch[0]
        elif hasattr(batch, "__len__"):
            return len(batch)
        else:
            return 1


def _draw_seed() -> int:
    """A seed from torch's default generator (as torch's DataLoader does without ``generator``):
    reproducible after ``torch.manual_seed``."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


class _Fetch:
    """``dataset[key]``: the sample stage of a plain dataset, run in threads or processes."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, key: int) -> Any:
        return self.dataset[key]

    def __repr__(self) -> str:
        return f"fetch({type(self.dataset).__name__})"


class _FetchBatch:
    """A list of indices (from a batch sampler) -> the collated batch."""

    def __init__(self, dataset: Any, collate: Callable[[list[Any]], Any]) -> None:
        self.dataset = dataset
        self.collate = collate

    def __call__(self, indices: Any) -> Any:
        many = getattr(self.dataset, "__getitems__", None)
        samples = list(many(list(indices))) if many is not None else [self.dataset[i] for i in indices]
        return self.collate(samples)


class _BatchIndices:
    """A batch sampler as a stream (iterated again each epoch)."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.batch_sampler:
            yield [int(i) for i in indices]


class _WorkerShard(IterableDataset):
    """A stream for torch's DataLoader: worker ``w`` of ``W`` keeps the runs of ``batch_size``
    positions numbered ``w, w+W, ...``, so no sample is read twice (a bare IterableDataset is
    read whole by every worker) and, as torch takes batches from its workers in turn, the
    batches come in stream order."""

    def __init__(self, dataset: Any, batch_size: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, me = (1, 0) if info is None else (info.num_workers, info.id)
        size = self.batch_size
        if isinstance(self.dataset, BaseDataset):
            fn = self.dataset.sample_fn
            for position, raw in enumerate(self.dataset.source.stream()):
                if position // size % workers == me:
                    yield raw if fn is None else fn(raw)
            return
        for position, item in enumerate(self.dataset):
            if position // size % workers == me:
                yield item


# -- the aio backend -------------------------------------------------------------------------
def _aio_loader(dataset: Any, config: DataLoaderConfig) -> tuple[Loader, TorchWorkerInit | None]:
    """The Loader for ``config``, and the ``worker_init`` of its worker processes (None when
    it has none)."""
    workers = config.workers
    collate = config.collate_fn or stack
    init = None
    if config.custom_batch_sampler is not None:
        loader = Loader.from_source(_BatchIndices(config.custom_batch_sampler), rank=0, world_size=1)
        executor = "thread" if workers > 0 else "inline"
        loader = loader.map(
            _FetchBatch(dataset, collate),
            executor=executor,
            concurrency=workers if workers > 0 else None,
            name="fetch_batch",
        )
    else:
        loader, init = _sample_stages(dataset, config, workers)
        loader = loader.batch(config.batch_size, collate=collate, drop_last=config.drop_last)
    depth = 1 if config.memory_efficient else (config.prefetch_factor or 2) * max(1, workers)
    loader = loader.prefetch(depth)
    if config.pin_memory:  # DataLoaderConfig has turned it off where CUDA is missing
        loader = loader.to_device(config.pin_memory_device or "cuda", non_blocking=config.non_blocking)
    return loader, init


def _sample_stages(
    dataset: Any, config: DataLoaderConfig, workers: int
) -> tuple[Loader, TorchWorkerInit | None]:
    """Source, order and sample stage (everything before batching), and the ``worker_init``
    of the sample stage's processes (None without processes)."""
    seed = config.generator_seed if config.generator_seed is not None else _draw_seed()
    sampler = config.custom_sampler
    if isinstance(dataset, BaseDataset):
        source, fn, executor = dataset.source, dataset.sample_fn, dataset.preferred_executor
    elif _is_indexable(dataset) and workers > 0:
        source, fn = range(len(dataset)), _Fetch(dataset)
        executor = "process" if is_picklable(fn) else "thread"
    else:
        source, fn, executor = dataset, None, "inline"
    if workers == 0:
        executor = "inline"
    indexable = _is_indexable(dataset)
    if isinstance(sampler, DistributedSampler):
        loader = Loader.from_source(
            source,
            shuffle=indexable and sampler.shuffle,
            seed=int(sampler.seed),
            rank=int(sampler.rank),
            world_size=int(sampler.num_replicas),
            shard_policy="drop" if sampler.drop_last else "pad",
        )
    elif indexable:
        shuffle = key_order(sampler, len(dataset)) if sampler is not None else config.shuffle
        loader = Loader.from_source(source, shuffle=shuffle, seed=seed, rank=0, world_size=1)
    else:
        if sampler is not None:
            raise ValueError("custom_sampler needs an indexable dataset; this one is a stream")
        loader = Loader.from_source(source, seed=seed, rank=0, world_size=1)
        if config.shuffle:
            loader = loader.shuffle(max(_MIN_STREAM_BUFFER, _STREAM_BUFFER_BATCHES * config.batch_size))
    init = None
    if fn is not None:
        if executor == "process":  # processes beyond the cores only cost start-up time and memory
            workers = min(workers, optimal_num_workers())
            init = _worker_init(dataset, fn, workers, config.generator_seed)
        concurrency = workers if executor in ("thread", "process", "auto") and workers > 0 else None
        loader = loader.map(fn, executor=executor, concurrency=concurrency, name="sample", worker_init=init)
    return loader, init


def _worker_init(dataset: Any, fn: Any, workers: int, generator_seed: int | None) -> TorchWorkerInit:
    """What sets up torch's ``WorkerInfo`` in each of ``workers`` processes running ``fn``. Its
    base seed comes from ``generator_seed`` as torch's ``DataLoader(generator=...)`` draws it,
    else it is drawn at the first iteration (:meth:`EfficientDataLoader._prepare_iteration`)."""
    base_seed = None
    if generator_seed is not None:
        base_seed = draw_base_seed(torch.Generator().manual_seed(generator_seed))
    return TorchWorkerInit(_worker_dataset(dataset, fn), workers, base_seed)


def _worker_dataset(dataset: Any, fn: Any) -> Any:
    """``WorkerInfo.dataset``: the dataset ``fn`` reads (the pool pickles ``fn`` and the init
    together, so a worker holds one copy of it), else a copy of ``dataset`` (None when it
    cannot be pickled)."""
    if isinstance(fn, _Fetch):
        return fn.dataset
    return dataset if is_picklable(dataset) else None


# -- the torch backend -----------------------------------------------------------------------
def _torch_loader(dataset: Any, config: DataLoaderConfig) -> DataLoader:
    workers = config.workers
    kwargs: dict[str, Any] = {
        "num_workers": workers,
        "collate_fn": config.collate_fn,
        "pin_memory": config.pin_memory,
    }
    if config.pin_memory and config.pin_memory_device:
        kwargs["pin_memory_device"] = config.pin_memory_device
    if workers > 0:
        kwargs["persistent_workers"] = config.persistent_workers
        kwargs["prefetch_factor"] = 1 if config.memory_efficient else (config.prefetch_factor or 2)
    if config.generator_seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(config.generator_seed)
    if config.custom_batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=config.custom_batch_sampler, **kwargs)
    batching = {"batch_size": config.batch_size, "drop_last": config.drop_last}
    if not _is_indexable(dataset):
        if config.custom_sampler is not None:
            raise ValueError("custom_sampler needs an indexable dataset; this one is a stream")
        return DataLoader(_WorkerShard(dataset, config.batch_size), **batching, **kwargs)
    sampler = config.custom_sampler
    if sampler is not None:
        if is_key_order(sampler):
            seed = config.generator_seed if config.generator_seed is not None else _draw_seed()
            sampler = OrderSampler(sampler, len(dataset), seed)
        return DataLoader(dataset, sampler=sampler, **batching, **kwargs)
    return DataLoader(dataset, shuffle=config.shuffle, **batching, **kwargs)


def _shutdown_torch_workers(loader: DataLoader) -> None:
    """Stop the persistent workers of a torch DataLoader now (torch does it only when the
    loader is garbage collected)."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def _performance_monitor() -> Any:
    """A new :class:`~aioloader.monitor.performance.DataLoaderPerformanceMonitor`."""
    from aioloader.monitor.performance import DataLoaderPerformanceMonitor

    return DataLoaderPerformanceMonitor()


# -- the loader ------------------------------------------------------------------------------
class EfficientDataLoader:
    """Batches of ``dataset`` as ``config`` says, on ``backend`` "aio" or "torch".

    Each iteration is one epoch; ``len()`` is the number of batches per epoch; ``get_stats()``
    returns the last epoch's timing (``enable_monitoring``), totals, memory and, on the aio
    backend, the per-stage pipeline statistics. Close it (or use ``with``) to stop its workers.
    """

    def __init__(self, dataset: Any, config: DataLoaderConfig | None = None, backend: str = "aio") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        if config is None:
            config = DataLoaderConfig(pin_memory=torch.cuda.is_available())
        if not isinstance(config, DataLoaderConfig):
            raise TypeError(f"config must be a DataLoaderConfig, got {type(config).__name__}")
        self.dataset = dataset
        self.config = config
        self.backend = backend
        self._memory = MemoryMonitor(config.max_memory_usage)
        self._monitor = _performance_monitor() if config.enable_monitoring else None
        self._epochs = 0
        self._batches = 0
        self._samples = 0
        self._closed = False
        self._worker_init: TorchWorkerInit | None = None
        self._sampler_epoch: int | None = None  # the DistributedSampler epoch last taken
        self.loader: Loader | DataLoader
        if backend == "torch":
            self.loader = _torch_loader(dataset, config)
        else:
            self.loader, self._worker_init = _aio_loader(dataset, config)

    # -- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self._closed:
            raise RuntimeError("EfficientDataLoader is closed")
        self._prepare_iteration()
        return close_at_exit(self._iterate())

    def _iterate(self) -> Iterator[Any]:
        started, batches, samples = self._begin_epoch()
        inner = iter(self.loader)
        try:
            for batch in inner:
                n = _batch_len(batch)
                batches, samples = batches + 1, samples + n
                self._count(n)
                yield batch
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()
            del inner
            self._end_epoch(started, batches, samples)

    def __aiter__(self) -> AsyncIterator[Any]:
        if self.backend != "aio":
            raise TypeError("async iteration needs backend='aio'")
        if self._closed:
            raise RuntimeError("EfficientDataLoader is closed")
        self._prepare_iteration()
        return self._aiterate()

    async def _aiterate(self) -> AsyncIterator[Any]:
        started, batches, samples = self._begin_epoch()
        try:
            async for batch in self.loader:  # type: ignore[union-attr]
                n = _batch_len(batch)
                batches, samples = batches + 1, samples + n
                self._count(n)
                yield batch
        finally:
            self._end_epoch(started, batches, samples)

    def _prepare_iteration(self) -> None:
        """As a new iterator is made (aio backend): take the DistributedSampler's epoch, and
        draw the workers' base seed from torch's generator the first time (as torch's DataLoader
        does as it makes an iterator)."""
        if not isinstance(self.loader, Loader):
            return
        self._follow_sampler_epoch()
        init = self._worker_init
        if init is not None and init.base_seed is None:  # before the pool starts
            init.base_seed = draw_base_seed()

    def _distributed_sampler(self) -> DistributedSampler | None:
        sampler = self.config.custom_sampler
        return sampler if isinstance(sampler, DistributedSampler) else None

    def _follow_sampler_epoch(self) -> None:
        """The next iteration runs the DistributedSampler's epoch when it has changed since the
        loader last took it (``sampler.set_epoch(e)``, the DDP idiom)."""
        sampler = self._distributed_sampler()
        if sampler is None or not isinstance(self.loader, Loader):
            return
        epoch = int(sampler.epoch)
        if self.loader.resuming:  # the loaded state's epoch comes first
            self._sampler_epoch = epoch
            return
        if epoch != self._sampler_epoch:
            self.loader.set_epoch(epoch)
            self._sampler_epoch = epoch

    def _begin_epoch(self) -> tuple[float, int, int]:
        if self._monitor is not None:
            self._monitor.start()
        self._memory.start_monitoring()
        return time.perf_counter(), 0, 0

    def _count(self, n: int) -> None:
        self._batches += 1
        self._samples += n
        if self._monitor is not None:
            self._monitor.record_batch(n)

    def _end_epoch(self, started: float, batches: int, samples: int) -> None:
        if self._monitor is not None:
            self._monitor.stop()
        self._memory.update()
        self._epochs += 1
        if self.config.log_loading_stats:
            elapsed = time.perf_counter() - started
            rate = samples / elapsed if elapsed > 0 else 0.0
            logger.info(
                "%s backend, epoch %d: %d batches, %d samples in %.2fs (%.0f samples/s)",
                self.backend,
                self._epochs - 1,
                batches,
                samples,
                elapsed,
                rate,
            )

    def __len__(self) -> int:
        if self.config.custom_batch_sampler is not None:
            return len(self.config.custom_batch_sampler)
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (the shuffle order) of the next iteration. A ``DistributedSampler``
        in the config is set to it too (on both backends), so this call and
        ``sampler.set_epoch`` are one setting: the later call decides."""
        if isinstance(self.loader, Loader):
            self.loader.set_epoch(epoch)
            sampler = self._distributed_sampler()
            if sampler is not None:
                sampler.set_epoch(int(epoch))
                self._sampler_epoch = int(epoch)
            return
        for holder in (self.loader.sampler, getattr(self.loader.batch_sampler, "sampler", None)):
            set_epoch = getattr(holder, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
                return

    # -- state (aio backend) ---------------------------------------------------------------
    def _aio(self, what: str) -> Loader:
        if not isinstance(self.loader, Loader):
            raise TypeError(f"{what} needs backend='aio' (torch's DataLoader has no resumable state)")
        return self.loader

    def state_dict(self) -> dict[str, Any]:
        """Where the consumer is (see :meth:`aioloader.Loader.state_dict`); aio backend only.
        Resuming in a new process needs ``generator_seed`` set (the same order)."""
        return self._aio("state_dict").state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._aio("load_state_dict").load_state_dict(state)

    # -- observability ---------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """``backend``, ``epochs``, ``batches``, ``samples`` (totals), ``batch_size``,
        ``num_workers``, the last epoch's timing from the performance monitor (``total_time``,
        ``avg_batch_time``, ``batches_per_second``, ``avg_memory_usage``, ``avg_cpu_usage``)
        when monitoring is on, ``memory`` (see :class:`~aioloader.MemoryMonitor`), and on the
        aio backend ``pipeline`` (:meth:`aioloader.Loader.stats`)."""
        stats: dict[str, Any] = {
            "backend": self.backend,
            "epochs": self._epochs,
            "batches": self._batches,
            "samples": self._samples,
            "batch_size": self.config.batch_size,
            "num_workers": self.config.workers,
        }
        if self._monitor is not None:
            stats.update(self._monitor.get_stats())
        stats["memory"] = self._memory.get_memory_stats()
        if isinstance(self.loader, Loader):
            stats["pipeline"] = self.loader.stats()
        return stats

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every worker, thread and pool of this loader. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if isinstance(self.loader, Loader):
            self.loader.close()
        else:
            _shutdown_torch_workers(self.loader)

    def __enter__(self) -> EfficientDataLoader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EfficientDataLoader({type(self.dataset).__name__}, backend={self.backend!r})"
