"""Where the driver's CPU goes, natively: ``python -m bench.workloads.ray_perf [process|ray]``.

Runs one of the ray workload's aioloader loaders (same images, the same two-node simulated
cluster, the same loopback-only network namespace) for a warm epoch, then records the driver
with ``perf record`` (its own process only: Ray's C++ threads, the kernel's work for them, and
the Python threads) over :data:`EPOCHS` measured epochs, and prints ``perf report`` split by
thread and by symbol. A diagnostic, not part of ``python -m bench``; needs ``perf``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import aioloader as al
from aioloader.transforms import decode_image
from bench.harness import _batch_len
from bench.workloads.jpeg import BATCH, SIZE, make_images
from bench.workloads.ray import _INSIDE, NODE, in_namespace

EPOCHS = int(os.environ.get("AIOLOADER_PROFILE_EPOCHS", "4"))


def _report(data: Path, sort: str, top: int) -> list[str]:
    done = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort, "--percent-limit", "0.7"],
        capture_output=True, text=True,
    )  # fmt: skip
    rows = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")]
    return rows[:top]


def _run(kind: str) -> str:
    import ray
    from ray.cluster_utils import Cluster

    source = al.sources.ImageFolder(make_images(1504))
    decode = decode_image(size=SIZE)
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    loader = None
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        extra = {"ray_options": {"scheduling_strategy": "SPREAD"}} if kind == "ray" else {}
        loader = (
            al.Loader.from_source(source, shuffle=True, seed=0)
            .map(decode, concurrency=2, executor=kind, **extra)
            .batch(BATCH)
        )
        for _ in loader:  # a warm epoch: pools started, chunk sizes timed
            pass
        data = Path(tempfile.mkdtemp()) / "perf.data"
        recorder = subprocess.Popen(
            ["perf", "record", "-F", "1999", "-p", str(os.getpid()), "-o", str(data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        me = os.times()
        started = time.perf_counter()
        samples = 0
        for _ in range(EPOCHS):
            for batch in loader:
                samples += _batch_len(batch)
        elapsed = time.perf_counter() - started
        after = os.times()
        recorder.send_signal(2)
        recorder.wait(60)
        cpu = (after.user - me.user) + (after.system - me.system)
        lines = [
            f"## executor={kind}: {samples / elapsed:,.0f} samples/s, driver {cpu / samples * 1e6:,.1f} us/sample "
            f"(user {(after.user - me.user) / samples * 1e6:,.1f}, system {(after.system - me.system) / samples * 1e6:,.1f})",
            "by thread:",
            *_report(data, "comm", 20),
            "by thread, object:",
            *_report(data, "comm,dso", 30),
            "by thread, symbol:",
            *_report(data, "comm,dso,sym", 70),
        ]
        return "\n".join(lines)
    finally:
        if loader is not None:
            loader.close()
        ray.shutdown()
        cluster.shutdown()


def run(kind: str = "ray") -> str:
    if os.environ.get(_INSIDE) != "1":
        os.environ["AIOLOADER_PERF_KIND"] = kind
        return in_namespace("bench.workloads.ray_perf", False)
    return _run(os.environ.get("AIOLOADER_PERF_KIND", kind))


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = [a for a in sys.argv[1:] if a in ("process", "ray")]
    print(run(args[0] if args else "ray"))
