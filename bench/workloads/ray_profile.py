"""Where the driver's CPU goes in the ray workload: ``python -m bench.workloads.ray_profile``.

Runs the ray workload's two aioloader loaders (process and Ray executors, same images, same
two-node simulated cluster, in the same loopback-only network namespace) for
``AIOLOADER_PROFILE_EPOCHS`` measured epochs each (3; py-spy at ``AIOLOADER_PROFILE_RATE``
samples a second, 250: on a loaded machine more epochs and a higher rate steady the split),
and prints per loader: samples/s, the driver's CPU per sample split by thread
(the event loop's, Ray's core-worker and gRPC threads, the pool's), the actor calls per second
and the driver's CPU per call, the whole tree's CPU per sample by process role (raylets, GCS,
actors or workers), and, when ``py-spy`` is
installed, the functions the driver's threads were sampled in (own time, then inclusive).
A diagnostic, not part of ``python -m bench``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import aioloader as al
from aioloader.transforms import decode_image
from bench.harness import _batch_len
from bench.workloads.jpeg import BATCH, SIZE, make_images
from bench.workloads.ray import _INSIDE, NODE, ROLES, cpu_by_role, in_namespace, tree_cpu

EPOCHS = int(os.environ.get("AIOLOADER_PROFILE_EPOCHS", "3"))  # measured epochs per loader
RATE = os.environ.get("AIOLOADER_PROFILE_RATE", "250")  # py-spy's samples per second


def _threads() -> dict[int, tuple[str, float]]:
    """This process's threads: tid -> (name, CPU seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    python = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (python.get(int(tid), name), (int(fields[11]) + int(fields[12])) / ticks)
    return out


def _group(name: str) -> str:
    for prefix in ("aioloader-ray", "aioloader-pool", "aioloader-loop", "aioloader", "grpc", "ray_", "worker.io", "Thread-"):
        if name.startswith(prefix):
            return prefix + "*"
    return name


def _profile(name: str, loader: al.Loader) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    raw = Path(tempfile.mkdtemp()) / "spy.txt"
    recorder = None
    if Path(spy).exists():
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(os.getpid()), "--rate", RATE, "--nonblocking", "--threads",
             "--format", "raw", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # attached before the epochs start
    calls_before = _calls(loader)
    tree_before = tree_cpu()
    before = _threads()
    started = time.perf_counter()
    samples = 0
    firsts = []
    for _ in range(EPOCHS):
        epoch_started = time.perf_counter()
        first = None
        for batch in loader:
            if first is None:
                first = time.perf_counter() - epoch_started
                firsts.append(first)
            samples += _batch_len(batch)
    elapsed = time.perf_counter() - started
    after = _threads()
    roles = cpu_by_role(tree_before, tree_cpu())
    calls = _calls(loader) - calls_before
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    per_group: Counter[str] = Counter()
    for tid, (thread, cpu) in after.items():
        per_group[_group(thread)] += cpu - before.get(tid, (thread, 0.0))[1]
    total = sum(per_group.values())
    lines = [
        f"## {name}: {samples / elapsed:,.0f} samples/s, driver {total / samples * 1e6:,.1f} us/sample",
        *(f"- {group}: {cpu / samples * 1e6:,.1f} us/sample" for group, cpu in per_group.most_common() if cpu > 0),
        "first batch of each epoch (s): " + ", ".join(f"{first:.3f}" for first in firsts),
        "tree CPU per sample by role: "
        + ", ".join(f"{role} {roles[role] / samples * 1e6:,.1f} us" for role in ROLES)
        + f"; total {sum(roles.values()) / samples * 1e6:,.1f} us",
    ]
    stages = [s for s in loader.stats()["stages"] if s["name"].startswith("map")]
    lines += [f"stage {s['name']}: executor {s['executor']}, fused batch {s.get('fused')}, reads {s.get('reads')}" for s in stages]
    if calls:
        ray_threads = sum(cpu for group, cpu in per_group.items() if not group.startswith("aioloader"))
        lines.append(
            f"actor calls: {calls} ({calls / elapsed:,.1f}/s, {samples / calls:,.0f} samples each); driver CPU "
            f"per call {total / calls * 1e3:,.2f} ms, of which Ray's and other non-aioloader threads "
            f"{ray_threads / calls * 1e3:,.2f} ms"
        )
    if raw.exists():
        lines += _hot(raw)
    return "\n".join(lines)


def _calls(loader: al.Loader) -> int:
    """Chunks the loader's Ray actors have run so far (0 for other executors)."""
    try:
        stages = loader.stats()["stages"]
    except Exception:  # no run yet
        return 0
    return sum(actor["chunks"] for stage in stages for actor in stage.get("actors") or ())


def _hot(raw: Path, top: int = 25) -> list[str]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        thread = _group(frames[0].split(" ")[0].strip('"'))
        own[f"{thread} | {frames[-1]}"] += count
        for frame in set(frames[1:]):
            inclusive[f"{thread} | {frame}"] += count
    lines = [f"py-spy: {total} samples (active threads)", "own:"]
    lines += [f"  {count / total:6.1%} {frame}" for frame, count in own.most_common(top)]
    lines += ["inclusive:"]
    lines += [f"  {count / total:6.1%} {frame}" for frame, count in inclusive.most_common(top)]
    return lines


def _run(quick: bool) -> str:
    import ray
    from ray.cluster_utils import Cluster

    n = 320 if quick else 1504
    source = al.sources.ImageFolder(make_images(n))
    decode = decode_image(size=SIZE)
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    loaders: list[al.Loader] = []
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        options: list[tuple[str, dict[str, Any]]] = [
            ("executor=process", {"executor": "process"}),
            ("executor=ray", {"executor": "ray", "ray_options": {"scheduling_strategy": "SPREAD"}}),
        ]
        for _, extra in options:
            loader = (
                al.Loader.from_source(source, shuffle=True, seed=0)
                .map(decode, concurrency=2, **extra)
                .batch(BATCH)
            )
            loaders.append(loader)
            for _ in loader:  # a warm epoch: pools started, chunk sizes timed
                pass
        return "\n\n".join(_profile(name, loader) for (name, _), loader in zip(options, loaders, strict=True))
    finally:
        for loader in loaders:
            loader.close()
        ray.shutdown()
        cluster.shutdown()


def run(quick: bool = False) -> str:
    if os.environ.get(_INSIDE) != "1":
        return in_namespace("bench.workloads.ray_profile", quick)
    return _run(quick)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(run(quick="--quick" in sys.argv[1:]))
