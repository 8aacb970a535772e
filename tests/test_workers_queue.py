"""The pool queues one task ahead in each worker's pipe: what that must not change.

A task waiting behind one that kills its worker never started, so it runs once on the
replacement (not counted as a crash, not run twice); a waiting task's timeout counts from when
its worker starts it, not from when it was queued; a task too large to fit in the pipe next to
the running one waits in the parent instead (the send would block). Workers run with one
OpenMP/MKL thread, as torch DataLoader's do.
"""

from __future__ import annotations

import os
from pathlib import Path

from aioloader.workers import wire
from aioloader.workers.pool import TASKS_PER_WORKER, ProcessPool


def _run(values: list) -> tuple[list, list, float]:
    """The chunk function: ("exit", _) kills the worker, ("sleep", s) sleeps, ("log", path)
    appends this pid to a file, ("env", name) returns an environment variable."""
    import time

    results = []
    for kind, arg in values:
        if kind == "exit":
            os._exit(3)
        elif kind == "sleep":
            time.sleep(arg)
            results.append(arg)
        elif kind == "log":
            with open(arg, "a") as f:
                f.write(f"{os.getpid()}\n")
            results.append(os.getpid())
        elif kind == "env":
            results.append(os.environ.get(arg))
        elif kind == "digest":  # big inputs, travelling out of band
            import hashlib

            results.append(hashlib.sha256(memoryview(arg).cast("B")).hexdigest())
        elif kind == "torch_threads":
            import torch

            results.append(torch.get_num_threads())
    return results, [], 0.0


def _submit(pool: ProcessPool, *values: tuple, timeout: float | None = None):
    return pool.submit(wire.pack(list(values)), timeout)


def test_a_task_queued_behind_a_crash_runs_once_on_the_replacement(tmp_path: Path):
    log = tmp_path / "runs.log"
    pool = ProcessPool(_run, workers=1, name="queue")
    try:
        assert TASKS_PER_WORKER >= 2
        doomed = _submit(pool, ("sleep", 0.2), ("exit", None))
        behind = _submit(pool, ("log", str(log)))
        assert doomed.result(30).kind == "crash"
        outcome = behind.result(30)
        assert outcome.kind == "ok"
        assert log.read_text().splitlines() == [str(outcome.value[0][0])]  # ran exactly once
    finally:
        pool.close()


def test_a_queued_tasks_timeout_counts_from_its_start():
    pool = ProcessPool(_run, workers=1, name="queue")
    try:
        first = _submit(pool, ("sleep", 0.6))
        # queued behind 0.6 s of work: a clock started at submission would expire at 0.3 s
        second = _submit(pool, ("sleep", 0.0), timeout=0.3)
        assert first.result(30).kind == "ok"
        assert second.result(30).kind == "ok"
        late = _submit(pool, ("sleep", 5.0), timeout=0.3)
        assert late.result(30).kind == "timeout"
        assert _submit(pool, ("sleep", 0.0)).result(30).kind == "ok"  # a fresh worker took over
    finally:
        pool.close()


def test_a_task_too_large_for_the_pipe_waits_instead_of_blocking():
    pool = ProcessPool(_run, workers=1, name="queue")
    try:
        ballast = "x" * (4 << 20)  # larger than any pipe buffer: a blocking send would hang
        first = _submit(pool, ("sleep", 0.3), ("env", ballast))
        second = _submit(pool, ("env", ballast))
        third = _submit(pool, ("sleep", 0.0))
        assert [f.result(60).kind for f in (first, second, third)] == ["ok", "ok", "ok"]
    finally:
        pool.close()


def test_workers_run_one_openmp_thread():
    pool = ProcessPool(_run, workers=1, name="queue")
    try:
        outcome = _submit(pool, ("env", "OMP_NUM_THREADS"), ("torch_threads", None)).result(60)
        assert outcome.kind == "ok"
        assert outcome.value[0] == ["1", 1]
    finally:
        pool.close()


def test_large_inputs_travel_out_of_band_intact(tmp_path: Path):
    import hashlib

    import numpy as np

    from aioloader.sources.images import FileBytes

    array = np.random.default_rng(0).integers(0, 255, size=(3 << 20), dtype=np.uint8)  # 3 MiB
    raw = FileBytes(os.urandom(200_000), str(tmp_path / "x.jpg"), 7)
    payload = wire.pack([("digest", array), ("digest", raw), ("digest", b"small")])
    assert len(payload.buffers) == 2 and payload.nbytes > array.nbytes + len(raw)
    pool = ProcessPool(_run, workers=1, name="queue")
    try:
        outcome = pool.submit(payload).result(60)
    finally:
        pool.close()
    assert outcome.kind == "ok"
    expected = [hashlib.sha256(bytes(x)).hexdigest() for x in (array.tobytes(), raw, b"small")]
    assert outcome.value[0] == expected


def _double_in_place(values: list) -> tuple[list, list, float]:
    for array in values:
        array *= 2  # inputs must arrive writable, as they do when pickled in band
    return [int(a.sum()) for a in values], [], 0.0


def test_large_input_arrays_arrive_writable():
    import numpy as np

    pool = ProcessPool(_double_in_place, workers=1, name="queue")
    try:
        arrays = [np.ones(100, dtype=np.int64), np.ones(1 << 16, dtype=np.int64)]  # in and out of band
        outcome = pool.submit(wire.pack(arrays)).result(60)
    finally:
        pool.close()
    assert outcome.kind == "ok", outcome
    assert outcome.value[0] == [200, 2 << 16]


def test_a_task_queued_behind_a_timeout_is_not_a_crash(tmp_path: Path):
    log = tmp_path / "runs.log"
    pool = ProcessPool(_run, workers=1, name="queue")
    try:
        hung = _submit(pool, ("sleep", 30.0), timeout=0.3)
        behind = _submit(pool, ("log", str(log)))
        assert hung.result(30).kind == "timeout"
        assert behind.result(30).kind == "ok"
        assert len(log.read_text().splitlines()) == 1
    finally:
        pool.close()


def test_submitting_to_a_closed_pool_touches_no_other_pool():
    closed = ProcessPool(_run, workers=1, name="closed")
    closed.close()
    live = ProcessPool(_run, workers=1, name="live")  # may reuse the closed pool's descriptors
    try:
        assert _submit(closed, ("sleep", 0.0)).result(10).kind == "error"
        assert [_submit(live, ("sleep", 0.0)).result(30).kind for _ in range(3)] == ["ok"] * 3
    finally:
        live.close()


def _pid_after(values: list) -> tuple[list, list, float]:
    """Sleep, then say which worker ran the task."""
    import time

    time.sleep(values[0])
    return [os.getpid()], [], 0.0


def test_a_spread_pool_deals_tasks_in_turn_while_its_workers_start():
    """Four 1 s tasks submitted as the pool starts: each worker gets two (stream fusion's
    shards), where a plain pool gives the first worker ready all four it may hold (unless
    both are ready at the same moment)."""
    pool = ProcessPool(_pid_after, workers=2, name="spread", tasks_per_worker=4, spread=True)
    try:
        futures = [pool.submit(wire.pack([1.0])) for _ in range(4)]
        pids = [future.result(60).value[0][0] for future in futures]
    finally:
        pool.close()
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2], pids
