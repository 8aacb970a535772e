"""The process executor with real worker processes: order, persistence across epochs, arrays
through shared memory, worker_init, build-time refusal of unpicklable functions, and clean stops.

Functions given to workers live at module level (they must pickle by reference). A worker
imports this module to unpickle them: torch is imported only where used (``decode``), so workers
of the other functions start without it (a second or more each on 2 cores).
"""

from __future__ import annotations

import gc
import os
import pickle
import time

import numpy as np
import psutil
import pytest

import aioloader as al
from aioloader.workers import ProcessExecutor

from .conftest import run_with_repo

SHAPE = (256, 200, 3)  # 153 600 bytes: over the shared-memory threshold


def image(key: int) -> np.ndarray:
    """A deterministic image for ``key``: every pixel depends on the key and its position."""
    h, w, c = SHAPE
    grid = np.arange(h * w * c, dtype=np.uint32).reshape(SHAPE)
    return ((grid * 7 + key * 131) % 251).astype(np.uint8)


def decode(key: int) -> dict:
    import torch

    return {"img": image(key), "t": torch.from_numpy(image(key + 1)), "pid": os.getpid(), "key": key}


def square(x: int) -> int:
    return x * x


def block_on_key(x: int) -> int:
    if x == 40:
        time.sleep(600)  # ended by close(), which must not wait for it
    return x


_WORKER_ID: int | None = None


def remember_worker(worker_id: int) -> None:
    global _WORKER_ID
    _WORKER_ID = worker_id


def worker_identity(_: int) -> tuple[int | None, int]:
    return _WORKER_ID, os.getpid()


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _segments() -> set[str]:
    return {
        n for n in os.listdir("/dev/shm") if n.startswith(f"aioloader_{os.getpid()}_")
    }  # this process's pools


def _pool_pids(loader: al.Loader) -> list[int]:
    pools = [r for name, r in loader._runtime.resources.items() if name.startswith("process-pool:")]
    return sorted(pid for pool in pools for pid in pool.pids)


def test_big_arrays_round_trip_pixel_by_pixel_on_the_same_pool_across_epochs():
    import torch

    segments_before = _segments()
    loader = (
        al.Loader.from_source(range(96), shuffle=True, seed=3)
        .map(decode, executor="process", concurrency=2)
        .batch(8)
    )
    pids_by_epoch = []
    with loader:
        for _ in range(2):
            keys_seen, pids = [], set()
            for batch in loader:
                assert batch["img"].shape == (8, *SHAPE) and batch["img"].dtype == torch.uint8
                for row, key in enumerate(batch["key"].tolist()):
                    assert np.array_equal(batch["img"][row].numpy(), image(key)), f"key {key}"
                    assert np.array_equal(batch["t"][row].numpy(), image(key + 1)), f"key {key}"
                keys_seen += batch["key"].tolist()
                pids |= set(batch["pid"].tolist())
            assert sorted(keys_seen) == list(range(96))
            pids_by_epoch.append((pids, _pool_pids(loader)))
            assert _segments() - segments_before, "results should come back through shared memory"
        (first, pool_first), (second, pool_second) = pids_by_epoch
        assert len(pool_first) == 2 and pool_first == pool_second  # the same processes both epochs
        assert first | second <= set(pool_first)  # (a worker slow to start may sit out an epoch)
    assert not _children()
    assert _segments() == segments_before


def test_order_is_deterministic_and_matches_inline():
    expected = [x * x for x in al.Loader.from_source(range(3000), shuffle=True, seed=1)]
    with al.Loader.from_source(range(3000), shuffle=True, seed=1).map(
        square, executor="process", concurrency=2
    ) as loader:
        assert list(loader) == expected
        stage = next(s for s in loader.stats()["stages"] if s["name"] == "map(square)")
        assert stage["executor"] == "process" and stage["workers"] == 2


async def test_async_iteration_with_processes():
    async with al.Loader.from_source(range(500)).map(square, executor="process", concurrency=1) as loader:
        got = [x async for x in loader]
        assert got == [x * x for x in range(500)]
        got = [x async for x in loader]  # second epoch, same pool
        assert got == [x * x for x in range(500)]
    assert not _children()


def test_worker_init_runs_in_each_worker():
    loader = al.Loader.from_source(range(400)).map(
        worker_identity, executor="process", concurrency=2, worker_init=remember_worker
    )
    with loader:
        seen = set(loader)
        pids = _pool_pids(loader)
    by_pid = dict((pid, wid) for wid, pid in seen)
    assert set(by_pid) <= set(pids)
    assert set(by_pid.values()) <= {0, 1} and None not in by_pid.values()


def test_unpicklable_function_is_refused_when_building():
    with pytest.raises(TypeError, match=r"fn .*cannot be sent to worker processes.*pickle"):
        al.Loader.from_source(range(3)).map(lambda x: x, executor="process")
    with pytest.raises(TypeError, match=r"worker_init .*cannot be pickled"):
        al.Loader.from_source(range(3)).map(square, executor="process", worker_init=lambda i: None)
    with pytest.raises(ValueError, match="worker_init"):
        al.Loader.from_source(range(3)).map(square, executor="thread", worker_init=remember_worker)


_INTERACTIVE = """
import aioloader as al
def double(x):
    return 2 * x
try:
    al.Loader.from_source(range(8)).map(double, executor="process")
except TypeError as exc:
    print("refused:", exc)
loader = al.Loader.from_source(range(64)).map(double).batch(8)  # auto must not pick processes
with loader:
    print("auto:", sum(int(x) for b in loader for x in b))
"""


@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_a_function_of_an_interactive_main_is_refused_for_processes(how):
    """A notebook, ``python -c`` or stdin: pickling a __main__ function succeeds (by name), but
    spawned workers cannot import it; refused when the pipeline is built, not at run time."""
    import subprocess
    import sys

    args = [sys.executable, "-c", _INTERACTIVE] if how == "-c" else [sys.executable, "-"]
    done = subprocess.run(
        args, input=None if how == "-c" else _INTERACTIVE, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "refused: fn 'double' cannot be sent to worker processes" in done.stdout
    assert "interactive __main__" in done.stdout
    assert "auto: 4032" in done.stdout


_GUARDED = """
import aioloader as al

def double(x):
    return 2 * x

if __name__ == "__main__":
    def triple(x):
        return 3 * x

    def total(batch):
        return sum(batch)

    try:
        al.Loader.from_source(range(8)).map(triple, executor="process")
    except TypeError as exc:
        print("refused:", exc)
    # the map goes to processes; the collate must stay here (it was fused into the workers,
    # which failed to start: they import the script without running this block)
    loader = al.Loader.from_source(range(32)).map(double, executor="process", concurrency=2)
    with loader.batch(8, collate=total) as batched:
        print("batches:", list(batched))

    class Boxed(int):  # a sample only this process can unpickle
        pass

    samples = [Boxed(i) if i == 5 else i for i in range(16)]
    skipping = al.Loader.from_source(samples).map(double, executor="process", concurrency=2, on_error="skip", max_failures=1)
    with skipping:
        print("skipped:", list(skipping) == [2 * i for i in range(16) if i != 5], skipping.stats()["errors"][0]["key"])
"""


def test_names_bound_under_the_main_guard_stay_out_of_worker_processes(tmp_path):
    """A script's workers import it as a module, without running its main block: a function
    defined there pickles by name here and is missing there. fn is refused when the pipeline
    is built; a collate stays in the parent instead of being fused into the workers; a sample
    of a class defined there fails alone (the whole chunk failed, with no key)."""
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(_GUARDED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: fn 'triple' cannot be sent to worker processes" in done.stdout
    assert "if __name__ == '__main__':" in done.stdout
    assert "batches: [56, 184, 312, 440]" in done.stdout
    assert "skipped: True 5" in done.stdout  # a sample the workers cannot unpickle fails alone


def test_a_function_of_a_packages_main_module_is_refused_for_processes(tmp_path):
    """``python -m pkg`` runs pkg/__main__.py, which multiprocessing's children skip: its
    functions pickle by name and are missing in the workers, which failed to start."""
    import sys

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(_INTERACTIVE)
    done = run_with_repo([sys.executable, "-m", "pkg"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "refused: fn 'double' cannot be sent to worker processes" in done.stdout
    assert "a package's __main__ module" in done.stdout
    assert "auto: 4032" in done.stdout


_STDIN_MAIN = """
import operator
import aioloader as al
with al.Loader.from_source(range(8)).map(operator.neg, executor="process", concurrency=1) as loader:
    print("pool:", sum(loader))
with al.Loader.from_source(range(8)).map(operator.neg).in_subprocess() as loader:
    print("in_subprocess:", sum(loader))
"""


def test_a_script_read_from_stdin_runs_module_functions_in_processes():
    """A __main__ read from stdin names its file "<stdin>": the children tried to run it as
    the main module, failed, and exited with code 0, so every pool failed to start ("worker
    processes die before they are ready"), even for a function of a module."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-"], input=_STDIN_MAIN, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "pool: -28" in done.stdout and "in_subprocess: -28" in done.stdout


def test_a_pool_whose_work_cannot_be_pickled_starts_no_worker():
    from aioloader.workers.pool import ProcessPool

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        ProcessPool(lambda values: values, workers=2)
    assert not _children()  # the children were started before the pickle failed


def test_default_pool_size_rule():
    from aioloader.workers import default_workers

    cores = len(os.sched_getaffinity(0))
    expected = max(1, int(0.75 * cores + 0.5))
    if psutil.virtual_memory().available < 4 * 2**30:
        expected = min(expected, 2)
    assert default_workers() == expected


def test_breaking_out_keeps_the_pool_and_close_ends_it():
    loader = al.Loader.from_source(range(10_000)).map(decode, executor="process", concurrency=2).batch(4)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    pids = _pool_pids(loader)
    assert len(pids) == 2
    for batch in loader:  # the next epoch, on the same pool
        assert batch["key"].tolist() == [0, 1, 2, 3]
        break
    assert _pool_pids(loader) == pids
    started = time.monotonic()
    loader.close()
    assert time.monotonic() - started < 2.0
    assert not _children() and not _segments()


def test_exception_in_training_loop_stops_everything():
    with (
        pytest.raises(RuntimeError, match="training step failed"),
        al.Loader.from_source(range(10_000))
        .map(decode, executor="process", concurrency=2)
        .batch(4) as loader,
    ):
        for i, _ in enumerate(loader):
            if i == 2:
                raise RuntimeError("training step failed")
    assert not _children() and not _segments()


def test_close_while_a_worker_is_stuck_is_prompt():
    loader = al.Loader.from_source(range(100)).map(block_on_key, executor="process", concurrency=2)
    iterator = iter(loader)
    assert [next(iterator) for _ in range(10)] == list(range(10))  # key 40 is now stuck
    started = time.monotonic()
    loader.close()
    assert time.monotonic() - started < 2.0
    assert not _children() and not _segments()


def test_a_dropped_loader_is_cleaned_by_its_finalizer():
    loader = al.Loader.from_source(range(200)).map(decode, executor="process", concurrency=1)
    assert len(list(loader)) == 200
    assert _children()
    del loader
    gc.collect()
    assert not _children() and not _segments()


async def test_executor_without_a_loader_owns_its_pool():
    from functools import partial

    from aioloader._run.executors import apply_items
    from aioloader._spec import MapSpec

    executor = ProcessExecutor(MapSpec(name="bare", fn=square, concurrency=1), None)
    try:
        results, failures, busy = await executor.run(partial(apply_items, square), [1, 2, 3], None)
        assert results == [1, 4, 9] and failures == [] and busy >= 0
    finally:
        executor.close()
    assert not _children()


def test_the_default_pool_size_is_three_quarters_of_the_cores_and_two_when_memory_is_short():
    from aioloader.workers.executor import default_workers, workers_for

    gib = 2**30
    assert [workers_for(cores, 64 * gib) for cores in (1, 2, 3, 4, 8, 16, 96)] == [1, 2, 2, 3, 6, 12, 72]
    assert [workers_for(cores, 3 * gib) for cores in (1, 2, 8, 96)] == [1, 2, 2, 2]
    assert workers_for(8, 4 * gib) == 6  # 4 GiB available is enough
    assert 1 <= default_workers() <= (os.cpu_count() or 1)
