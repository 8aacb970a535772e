"""``torch.utils.data.get_worker_info()`` in the aio backend's worker processes, as in torch's.

Real worker processes, no mocks: each item reports what the worker that fetched it saw.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.worker import _generate_state

import aioloader as al
from aioloader.workers.executor import default_workers

WORKERS = 2
POOL = min(WORKERS, default_workers())  # the compat layer caps processes at the cores
# Until a worker process is ready (a second or more: it imports torch) the others take every
# task: tests that need work from a given worker run epochs until it has some, within this.
READY_WITHIN_S = 60.0


class Probe(Dataset):
    """Item ``i``: the WorkerInfo its worker sees, and one draw from each global generator.
    With ``crash_dir``, fetching ``crash_key`` kills its worker the first time (across
    processes: a marker file made with O_EXCL)."""

    def __init__(self, n: int, crash_dir: Path | None = None, crash_key: int = -1) -> None:
        self.n = n
        self.crash_dir = None if crash_dir is None else str(crash_dir)
        self.crash_key = crash_key

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        info = get_worker_info()
        if i == self.crash_key and self.crash_dir is not None:
            _crash_once(self.crash_dir, i, info)
        if info is None:
            return {"i": i, "info": None}
        return {
            "i": i,
            "info": (info.id, info.num_workers, info.seed),
            "same_dataset": info.dataset is self,
            "pid": os.getpid(),
            "torch": torch.rand(()).item(),
            "numpy": float(np.random.rand()),
            "random": random.random(),
        }


def _crash_once(marker_dir: str, key: int, info: Any) -> None:
    """Kill this worker the first time (across processes: a marker file made with O_EXCL),
    leaving its pid and worker id in the marker."""
    try:
        fd = os.open(Path(marker_dir) / str(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()} {-1 if info is None else info.id}".encode())
    os.close(fd)
    os._exit(3)


def as_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collate: the samples as they are."""
    return samples


def config(**changes: Any) -> al.DataLoaderConfig:
    base = {
        "batch_size": 4,
        "num_workers": WORKERS,
        "pin_memory": False,
        "shuffle": False,
        "collate_fn": as_rows,
        "log_loading_stats": False,
    }
    return al.DataLoaderConfig(**{**base, **changes})


def rows_of(loader: al.EfficientDataLoader) -> list[dict[str, Any]]:
    return [row for batch in loader for row in batch]


def base_seed(rows: list[dict[str, Any]]) -> int:
    """The one base seed of the workers that made ``rows`` (seed = base seed + worker id)."""
    bases = {row["info"][2] - row["info"][0] for row in rows}
    assert len(bases) == 1, bases
    return bases.pop()


def assert_torch_worker_info(rows: list[dict[str, Any]]) -> None:
    """Every row was fetched in a worker whose WorkerInfo is torch's: its id among the pool's,
    the pool's size, seed = base seed + id (one base seed), the dataset object it reads."""
    assert all(row["info"] is not None for row in rows), "get_worker_info() was None in a worker"
    base = base_seed(rows)
    for row in rows:
        worker, workers, seed = row["info"]
        assert workers == POOL and 0 <= worker < POOL and seed == base + worker
        assert row["same_dataset"]


def worker_starts(base: int, workers: list[int]) -> list[dict[str, Any]]:
    """Each in a fresh process (started together): run the compat layer's worker_init as the
    pool does, then report the WorkerInfo and the first draws of the global generators."""
    root = Path(__file__).resolve().parents[1]
    procs = []
    for worker in workers:
        code = (
            "import json, random, numpy as np, torch\n"
            "from torch.utils.data import get_worker_info\n"
            "from aioloader.compat.worker_info import TorchWorkerInit\n"
            "from tests.test_compat_worker_info import Probe\n"
            f"TorchWorkerInit(Probe(3), num_workers=4, base_seed={base})({worker})\n"
            "info = get_worker_info()\n"
            "draws = [(torch.rand(()).item(), float(np.random.rand()), random.random()) for _ in range(3)]\n"
            "print(json.dumps([[info.id, info.num_workers, info.seed, type(info.dataset).__name__], draws]))\n"
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    started = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        info, draws = json.loads(out)
        started.append({"info": tuple(info), "draws": [tuple(d) for d in draws]})
    return started


def test_get_worker_info_in_worker_processes():
    with al.EfficientDataLoader(Probe(40), config()) as loader:
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            epoch = rows_of(loader)
            assert sorted(row["i"] for row in epoch) == list(range(40))
            rows += epoch
            if len({row["pid"] for row in rows}) == POOL:
                break
    assert_torch_worker_info(rows)
    ids = {row["pid"]: row["info"][0] for row in rows}
    assert len(ids) == POOL and sorted(ids.values()) == list(range(POOL))  # one id per worker


def test_worker_seeds_follow_generator_seed_as_torchs_workers():
    """With ``generator_seed`` the base seed comes from that generator, as torch's
    ``DataLoader(generator=...)``: the aio workers get the torch backend's worker seeds."""
    seeds = {}
    for global_seed, backend in ((0, "aio"), (1, "aio"), (2, "torch")):
        torch.manual_seed(global_seed)
        with al.EfficientDataLoader(Probe(8), config(generator_seed=7), backend=backend) as loader:
            seeds[global_seed] = base_seed(rows_of(loader))
    assert seeds[0] == seeds[1] == seeds[2]


def test_worker_generators_are_seeded_as_torchs():
    """The worker_init seeds ``torch``, ``numpy`` and ``random`` as torch's workers do (the
    same values for the same base seed and id) and sets the WorkerInfo (in fresh processes)."""
    base = 2**62 + 12345
    started = worker_starts(base, [0, 3])
    for worker, start in zip([0, 3], started, strict=True):
        seed = base + worker
        assert start["info"] == (worker, 4, seed, "Probe")
        torch_stream = torch.Generator().manual_seed(seed)
        numpy_stream = np.random.RandomState(_generate_state(base, worker))
        random_stream = random.Random(seed)
        expected = [
            (torch.rand((), generator=torch_stream).item(), numpy_stream.rand(), random_stream.random())
            for _ in range(3)
        ]
        assert start["draws"] == expected
    assert started[0]["draws"] != started[1]["draws"]


def test_draws_in_getitem_follow_the_seed_not_the_worker():
    """Which worker fetches a sample varies, but each batch reseeds its worker's generators
    from the loader's seed, the epoch and the batch's position: after ``torch.manual_seed``
    the same draws for each sample, run after run; a new seed, new draws. And the workers'
    base seed comes from torch's generator: ``torch.manual_seed`` before the loader makes it
    reproducible (the same three runs check both)."""

    def run(global_seed: int) -> tuple[int, list[tuple[float, float, float]]]:
        torch.manual_seed(global_seed)
        with al.EfficientDataLoader(Probe(40), config()) as loader:
            rows = sorted(rows_of(loader), key=lambda row: row["i"])
        return base_seed(rows), [(row["torch"], row["numpy"], row["random"]) for row in rows]

    (seed, first), (seed_again, again), (other_seed, other) = run(0), run(0), run(1)
    assert seed == seed_again and seed != other_seed  # the workers' seeds follow torch.manual_seed
    assert again == first
    assert other != first


def test_a_replacement_worker_gets_worker_info(tmp_path):
    """The worker that replaces a crashed one has its id, and the same WorkerInfo."""
    with al.EfficientDataLoader(Probe(12, tmp_path, crash_key=5), config()) as loader:
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            epoch = rows_of(loader)
            assert sorted(row["i"] for row in epoch) == list(range(12))
            rows += epoch
            crashed_pid, crashed_id = map(int, (tmp_path / "5").read_text().split())
            replacement = [r for r in rows if r["info"][0] == crashed_id and r["pid"] != crashed_pid]
            if replacement:
                break
    assert replacement, "the replacement worker got no work"
    assert_torch_worker_info(rows)


def test_no_worker_info_without_worker_processes():
    with al.EfficientDataLoader(Probe(8), config(num_workers=0)) as loader:
        rows = rows_of(loader)
    assert [row["info"] for row in rows] == [None] * 8
