"""``executor="ray"``: build-time checks here; the cluster cases (``tests/ray_inner/cases.py``)
in a child pytest inside a private network namespace with only loopback (``unshare -n``), so
Ray never binds this machine's external address nor probes a public DNS server. Ray is never
initialised in this process."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aioloader as al
from tests.conftest import run_with_repo

REPO = Path(__file__).resolve().parents[1]


def square(x: int) -> int:
    return x * x


def test_without_ray_the_error_says_how_to_get_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # what an environment without Ray sees
        "import aioloader as al\n"
        "try:\n"
        "    al.Loader.from_source([1]).map(abs, executor='ray')\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    done = run_with_repo([sys.executable, "-c", code], cwd=tmp_path)
    assert "ImportError: executor='ray' needs Ray: pip install aioloader[ray]" in done.stdout, done.stderr


def test_ray_options_are_checked_at_build_time() -> None:
    pytest.importorskip("ray")
    source = al.Loader.from_source([1, 2])
    with pytest.raises(ValueError, match="ray_options is only used with executor='ray'"):
        source.map(square, executor="thread", ray_options={"num_cpus": 1})
    with pytest.raises(ValueError, match="ray_options: 'lifetime' cannot be set"):
        source.map(square, executor="ray", ray_options={"lifetime": "detached"})
    with pytest.raises(ValueError, match="ray_options"):
        source.map(square, executor="ray", ray_options={"num_cpu": 1})  # a typo
    with pytest.raises(TypeError, match="ray_options must be a dict"):
        source.map(square, executor="ray", ray_options=[("num_cpus", 1)])
    spec = source.map(
        square, executor="ray", worker_init=print, ray_options={"num_cpus": 0.5}
    )._pipeline.stages[-1]
    assert spec.actor_options == {"num_cpus": 0.5} and spec.worker_init is print


def test_max_worker_memory_is_each_actors_limit() -> None:
    """Before: executor='ray' refused max_worker_memory."""
    pytest.importorskip("ray")
    source = al.Loader.from_source([1, 2])

    def limit(**options):
        return source.map(square, executor="ray", **options)._pipeline.stages[-1].memory_limit

    assert limit() is None  # Ray's own memory monitor guards the nodes
    assert limit(ray_options={"memory": 2**30}) == 2**30  # what Ray reserved for each actor
    assert limit(ray_options={"memory": 2**30}, max_worker_memory=2**29) == 2**29
    assert limit(max_worker_memory=None, ray_options={"memory": 2**30}) is None
    with pytest.raises(ValueError, match="max_worker_memory must be a number of bytes >= 1"):
        source.map(square, executor="ray", max_worker_memory=0)


def test_chunks_are_cut_to_fit_the_driver_nodes_object_store() -> None:
    """Before: chunks aimed at a fixed time, so fast actors making large results filled the
    driver node's store with waiting chunks (1 s chunks: 4.6x the process executor's driver
    CPU per sample, against 1.6x at 500 ms, on the ray workload)."""
    pytest.importorskip("ray")
    import numpy as np

    from aioloader.ray._actor import result_bytes
    from aioloader.ray.executor import MIN_TASK_S, TARGET_TASK_S, chunk_seconds

    assert chunk_seconds(None, 2, 1e9) == chunk_seconds(200e6, 2, None) == TARGET_TASK_S  # not known yet
    assert chunk_seconds(200e6, 2, 40e6) == TARGET_TASK_S  # 20 MB chunks: 4 per actor fit
    assert chunk_seconds(200e6, 2, 140e6) == pytest.approx(200e6 / 8 / 140e6)  # cut to 25 MB
    assert chunk_seconds(200e6, 64, 140e6) == MIN_TASK_S  # never shorter than this
    batch = torch.zeros(32, 3, 224, 224, dtype=torch.uint8)
    assert result_bytes([batch, batch]) == 2 * batch.numel()
    assert result_bytes([(batch, {"label": np.zeros(32, dtype=np.int64)}), "key"]) == batch.numel() + 256
    assert result_bytes([1, "a"]) == 0


def test_results_are_read_without_a_copy() -> None:
    """What an actor sends as an array becomes a tensor over the same memory (Ray's read-only
    view of its object store), writable, keeping that memory alive."""
    pytest.importorskip("ray")
    import numpy as np

    from aioloader.ray._actor import tensor_in

    array = np.arange(2 * 3 * 224 * 224, dtype=np.float32).reshape(2, 3, 224, 224)
    array.flags.writeable = False
    address = array.ctypes.data
    tensor = tensor_in(("array", array))
    del array
    assert tensor.data_ptr() == address and tensor.shape == (2, 3, 224, 224)
    tensor += 1
    assert tensor[1, 2, 223, 223].item() == 2 * 3 * 224 * 224
    small = np.arange(24).reshape(2, 12)  # a copy of its own (it may be Ray's inline memory)
    small.flags.writeable = False
    assert tensor_in(("array", small)).data_ptr() != small.ctypes.data
    strided = np.arange(200_000).reshape(1000, 200)[:, ::2]
    strided.flags.writeable = False
    assert tensor_in(("array", strided)).tolist() == strided.tolist()


def test_indexed_parquet_rows_are_read_by_the_actors_reader(tmp_path: Path) -> None:
    """What a Ray actor runs to read its keys of an indexed ParquetShards (read fusion; on a
    cluster in tests/ray_inner): the read stage's rows, one read per row group. Before: an
    indexed ParquetShards offered no reader, so its bytes passed through the trainer."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from tests.object_server import ObjectServer

    with ObjectServer() as server:
        for shard in range(2):
            ids = list(range(shard * 10, shard * 10 + 10))
            path = tmp_path / f"p{shard}.parquet"
            pq.write_table(pa.table({"id": ids, "x": [f"row {i}" for i in ids]}), path, row_group_size=4)
            server.objects[path.name] = path.read_bytes()
        dataset = al.sources.ParquetShards([server.url("p0.parquet"), server.url("p1.parquet")], indexed=True)
        with al.Loader.from_source(dataset, shuffle=True, seed=3) as loader:
            expected = list(loader)
        read = dataset.__aioloader_source__().worker_reader()
        assert read.executors == ("ray",)  # processes and threads keep the read stage
        keys = [row["id"] for row in expected]
        before = dict(server.requests)
        assert read(keys[:12]) == expected[:12]
        # footers and the row groups of 12 rows: at most 2 footers + 6 row groups, each one read
        assert sum(server.requests.values()) - sum(before.values()) <= 2 * (2 + 6)
        skipping = al.sources.ParquetShards(server.url("p0.parquet"), indexed=True, on_error="skip")
        assert skipping.__aioloader_source__().worker_reader() is None  # skipping is the read stage's


def _namespace_problem() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return f"cannot make a private network namespace (unshare -n): {probe.stderr.strip()}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_on_a_two_node_ray_cluster() -> None:
    pytest.importorskip("ray")
    problem = _namespace_problem()
    if problem is not None:
        pytest.skip(f"the Ray cluster tests need a loopback-only network namespace: {problem}")
    env = {**os.environ, "AIOLOADER_RAY_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    # each case gets 240 s: starting actors (importing torch in each) took 40-120 s on a loaded 2-core machine
    inner = [sys.executable, "-m", "pytest", "tests/ray_inner/cases.py", "-q", "-x", "-p", "no:cacheprovider",
             "-o", "timeout=240"]  # fmt: skip
    command = "ip link set lo up && exec " + shlex.join(inner)
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=880, cwd=REPO, env=env
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
