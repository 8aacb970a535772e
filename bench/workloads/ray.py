"""Map stages on Ray: JPEG decode + resize 224, batch 32, on a two-node simulated cluster.

Side by side in one run: ``executor="process"`` on this machine (2 workers), ``executor="ray"``
(2 actors, one per node), and Ray Data as the anchor (``from_items`` of the shuffled paths +
``map_batches`` reading and decoding + ``iter_torch_batches``), all with the same decode
function as the jpeg workload and its images. Reported beside the harness's numbers: the
driver's own CPU per sample (this process only: what the trainer pays; Ray's core-worker
threads in it count, the cluster's processes do not). Peak memory is the tree's PSS, the
simulated cluster included (its raylets, object stores and workers are children of this
process); the cluster runs through every row, and the two aioloader loaders stay open through
their alternating rounds (best of three each), so the idle actors count in the process
executor's row and its idle workers in the Ray executor's.

Ray must never bind this machine's external address nor probe a public DNS server, so this
workload re-executes itself inside a private network namespace with only loopback
(``unshare -n``, ``ip link set lo up``; root needed), with ``RAY_USAGE_STATS_ENABLED=0`` and no
dashboard. Not part of ``--workload all``.
"""

from __future__ import annotations

import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import torch

import aioloader as al
from aioloader.transforms import decode_image
from bench.harness import Result, measure_once, table
from bench.workloads.jpeg import BATCH, SIZE, make_images

REPO = Path(__file__).resolve().parents[2]
_INSIDE = "AIOLOADER_RAY_NETNS"
NODE = {"num_cpus": 1, "object_store_memory": 200 * 2**20}


def run(quick: bool = False) -> str:
    if os.environ.get(_INSIDE) != "1":
        return in_namespace("bench.workloads.ray", quick)
    return _run(quick)


def in_namespace(module: str, quick: bool) -> str:
    """Run ``python -m module [--quick]`` in a private loopback-only network namespace (Ray
    must never see this machine's network); its stdout."""
    inner = [sys.executable, "-m", module, *(["--quick"] if quick else [])]
    env = {**os.environ, _INSIDE: "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + shlex.join(inner)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"{module} failed in its network namespace:\n{done.stdout}\n{done.stderr[-4000:]}"
        )
    return done.stdout.strip()


class ReadDecodeBatch:
    """Ray Data's ``map_batches`` function: read and decode a batch of paths (as our actors do
    with read fusion), returning numpy columns."""

    def __init__(self) -> None:
        self.decode = decode_image(size=SIZE)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        images = np.empty((len(batch["path"]), 3, SIZE, SIZE), dtype=np.uint8)
        for i, path in enumerate(batch["path"]):
            with open(path, "rb") as f:
                images[i] = self.decode(f.read()).numpy()
        return {"image": images, "label": batch["label"]}


def _driver_cpu(make: Callable[[], Iterable[Any]]) -> Callable[[], Iterable[Any]]:
    """``make`` whose iteration leaves this process's CPU seconds in ``_DRIVER[0]``."""

    def wrapped() -> Iterable[Any]:
        me = psutil.Process()
        before = me.cpu_times()
        try:
            yield from make()
        finally:
            after = me.cpu_times()
            _DRIVER[0] = (after.user - before.user) + (after.system - before.system)

    return wrapped


_DRIVER = [0.0]


def _measure(name: str, make: Callable[[], Iterable[Any]]) -> tuple[Result, float]:
    """One round: the harness's numbers and the driver's CPU seconds per sample."""
    result = measure_once(name, _driver_cpu(make))
    per_sample = _DRIVER[0] / max(result.samples, 1)
    print(
        f"{name}: {result.samples_per_s:,.0f} samples/s, driver {per_sample * 1e6:,.0f} us/sample",
        file=sys.stderr,
    )
    return result, per_sample


def _best(rounds: list[tuple[Result, float]]) -> tuple[Result, float]:
    return max(rounds, key=lambda measured: measured[0].samples_per_s)


def _run(quick: bool) -> str:
    import ray
    from ray.cluster_utils import Cluster

    n = 320 if quick else 1504
    rounds = 1 if quick else 3
    root = make_images(n)
    source = al.sources.ImageFolder(root)
    decode = decode_image(size=SIZE)
    head = {**NODE, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    process = ray_loader = None
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        process = (
            al.Loader.from_source(source, shuffle=True, seed=0)
            .map(decode, executor="process", concurrency=2)
            .batch(BATCH)
        )
        ray_loader = (
            al.Loader.from_source(source, shuffle=True, seed=0)
            .map(decode, executor="ray", concurrency=2, ray_options={"scheduling_strategy": "SPREAD"})
            .batch(BATCH)
        )
        items = [
            {"path": str(source.root / f), "label": t}
            for f, t in zip(source.files, source.targets, strict=True)
        ]
        # shuffled here, as keys, like the loaders: Ray Data's random_shuffle needs CPUs for its
        # tasks while the map actors hold both of this cluster's
        random.Random(0).shuffle(items)

        def ray_data() -> Iterable[Any]:
            dataset = ray.data.from_items(items).map_batches(
                ReadDecodeBatch, batch_size=BATCH, concurrency=2, num_cpus=1
            )
            for batch in dataset.iter_torch_batches(batch_size=BATCH):
                yield batch["image"]

        for loader in (process, ray_loader):  # the pool and the actors start before they are measured
            epoch = iter(loader)
            next(epoch)
            epoch.close()
        # the two loaders' rounds alternate, so the load of a shared machine drifting between
        # them weighs on both; then both close (Ray Data needs the CPUs the actors hold)
        names = (
            "aioloader executor=process (2 workers, this machine)",
            "aioloader executor=ray (2 actors, 2 nodes)",
        )
        runs: list[list[tuple[Result, float]]] = [[], []]
        for _ in range(rounds):
            for i, (name, loader) in enumerate(zip(names, (process, ray_loader), strict=True)):
                runs[i].append(_measure(name, lambda loader=loader: iter(loader)))
        process.close()
        ray_loader.close()
        data_name = "Ray Data map_batches + iter_torch_batches"
        measured = [
            _best(runs[0]),
            _best(runs[1]),
            _best([_measure(data_name, ray_data) for _ in range(rounds)]),
        ]
    finally:
        for loader in (process, ray_loader):
            if loader is not None:
                loader.close()
        ray.shutdown()
        cluster.shutdown()
    results = [r for r, _ in measured]
    (proc_r, proc_cpu), (ray_r, ray_cpu), (data_r, _) = measured
    lines = [
        table(
            f"ray: {n:,} JPEGs 320x240, decode + resize {SIZE}, batch {BATCH}, "
            "two simulated nodes of 1 CPU on this machine",
            results,
            [proc_r.name],
        ),
        "",
        "| loader | driver CPU per sample (us) |",
        "|---|---|",
        *(f"| {r.name} | {cpu * 1e6:,.0f} |" for r, cpu in measured),
        "",
        f"executor=ray / executor=process: **{ray_r.samples_per_s / proc_r.samples_per_s:.2f}x** "
        f"(target >= 0.9); / Ray Data: **{ray_r.samples_per_s / data_r.samples_per_s:.2f}x** (target >= 1); "
        f"driver CPU per sample, ray / process: **{ray_cpu / max(proc_cpu, 1e-12):.2f}** (target <= 0.5)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    started = time.perf_counter()
    torch.set_num_threads(1)
    print(run(quick="--quick" in sys.argv[1:]))
    print(f"\n(ray workload: {time.perf_counter() - started:.0f}s)", file=sys.stderr)
