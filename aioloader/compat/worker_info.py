"""torch's worker contract in the aio backend's worker processes: ``get_worker_info()`` and seeds.

torch's DataLoader gives each worker process a ``WorkerInfo`` (``id``, ``num_workers``,
``seed``, ``dataset``), returned there by ``torch.utils.data.get_worker_info()``, and seeds
``random``, ``torch`` and ``numpy`` with it before ``worker_init_fn`` runs; datasets use it to
open per-worker handles or to shard. :class:`TorchWorkerInit` does the same as the
``worker_init`` of the ``executor="process"`` sample stage of
:class:`~aioloader.compat.EfficientDataLoader`: in each worker as it starts, and in a
replacement after a crash (which takes the id and seed of the worker it replaces, so its
generators start again from that seed).

- ``id``: 0 .. ``num_workers - 1``; ``num_workers``: the pool's size (``num_workers``, at most
  :func:`~aioloader.compat.config.optimal_num_workers` processes).
- ``dataset``: the dataset object the worker reads (for an
  :class:`~aioloader.compat.datasets.BaseDataset`, whose workers only run ``sample_fn``, a copy
  of the dataset; ``None`` when it cannot be pickled).
- ``seed``: ``base_seed + id``, as torch. ``base_seed`` comes from a generator seeded with
  ``generator_seed`` when the config has one (as torch's ``DataLoader(generator=...)``: the two
  backends give the workers the same seeds), else from torch's default generator when the
  loader is first iterated, so ``torch.manual_seed(s)`` before that makes it reproducible.
  The pool lives as long as the loader (torch's ``persistent_workers=True``): the seeds are
  drawn once, not per epoch.

Random draws inside ``__getitem__`` (``random``, ``numpy.random``, ``torch.rand``) differ from
torch's. torch deals the batches to its workers in turn, so each draw comes from its worker's
seeded stream; aioloader hands each task to whichever worker is free. The sample stage then
runs one task per batch, the collate included (fusion, see :mod:`aioloader._run.fusion`), and
before each batch the worker's generators are seeded again from the loader's seed, the epoch and
the batch's position: the draws are reproducible (after ``torch.manual_seed(s)`` before the
loader is built, or with ``generator_seed``) whichever worker runs the batch, but are not
torch's. Where a batch is not one task (a ``collate_fn`` that cannot be pickled runs in the main
process, and the samples go to the workers one task at a time), draws continue the worker's
stream and depend on which worker fetched which sample: not reproducible from run to run. For
augmentations that must not depend on the engine, draw from a generator seeded by the sample's
index and the epoch.

Threads have no WorkerInfo (``get_worker_info()`` is None there, as in torch's main process):
the sample stage of a dataset that cannot be pickled, of an ``ImageDataset``, and a stage with
``executor="auto"`` (which chooses its executor while running).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data._utils import worker as torch_worker

__all__ = ["TorchWorkerInit", "draw_base_seed", "seed_worker"]


def draw_base_seed(generator: torch.Generator | None = None) -> int:
    """A base seed for the workers, drawn as torch's DataLoader draws one (from ``generator``,
    or torch's default generator when it is None)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def _numpy_seed(base_seed: int, worker_id: int) -> Any:
    """numpy's seed in worker ``worker_id``: torch's own (``_generate_state``) where it has one."""
    generate = getattr(torch_worker, "_generate_state", None)
    if generate is None:  # pragma: no cover - an older torch
        return (base_seed + worker_id) % 2**32
    return generate(base_seed, worker_id)


def seed_worker(base_seed: int, worker_id: int) -> int:
    """Seed ``random``, ``torch`` and ``numpy.random`` as torch seeds its worker ``worker_id``;
    return the worker's seed (``base_seed + worker_id``)."""
    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(_numpy_seed(base_seed, worker_id))
    return seed


class TorchWorkerInit:
    """``worker_init(worker_id)`` for a process pool: seed the worker and set what
    ``torch.utils.data.get_worker_info()`` returns in it (see the module's docstring).

    ``base_seed`` may be set after the pool's spec is built, until the pool starts (the first
    iteration); left None, each worker draws one from the OS (not reproducible)."""

    def __init__(self, dataset: Any, num_workers: int, base_seed: int | None = None) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.base_seed = base_seed

    def __call__(self, worker_id: int) -> None:
        base = self.base_seed
        if base is None:
            base = int.from_bytes(os.urandom(8)) >> 1  # 63 bits, as torch's draw
        seed = seed_worker(base, worker_id)
        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=worker_id, num_workers=self.num_workers, seed=seed, dataset=self.dataset
        )

    def __repr__(self) -> str:
        return f"TorchWorkerInit({type(self.dataset).__name__}, num_workers={self.num_workers})"
