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
executor's row and its idle workers in the Ray executor's. A second table splits the tree's CPU
per sample by role (the driver, the actors or worker processes, the raylets, the GCS, Ray's
other processes; psutil over the tree around each measured round): on two cores shared by all
of them, a loader's rate is bounded by 2 cores / its tree's CPU per sample.

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
    """``make`` whose iteration leaves this process's CPU seconds in ``_DRIVER[0]`` and the
    tree's by role in ``_ROLES[0]`` (the harness's own work around the iteration left out)."""

    def wrapped() -> Iterable[Any]:
        me = psutil.Process()
        tree_before = tree_cpu()
        before = me.cpu_times()
        try:
            yield from make()
        finally:
            after = me.cpu_times()
            _DRIVER[0] = (after.user - before.user) + (after.system - before.system)
            # the driver's own reading: the tree's readings around it cost the driver too
            _ROLES[0] = {**cpu_by_role(tree_before, tree_cpu()), "driver": _DRIVER[0]}

    return wrapped


_DRIVER = [0.0]
_ROLES: list[dict[str, float]] = [{}]
ROLES = ("driver", "actors / workers", "raylets", "gcs_server", "other Ray processes")


def _role(proc: psutil.Process, me: int) -> str | None:
    """What a process of this tree is, for the CPU split (None: the harness's memory sampler)."""
    if proc.pid == me:
        return "driver"
    name = proc.name()
    if name == "raylet":
        return "raylets"
    if name == "gcs_server":
        return "gcs_server"
    command = " ".join(proc.cmdline()[:4])
    if "tree_pss" in command:
        return None
    if any(actor in name or actor in command for actor in ("MapActor", "MapBatches", "MapWorker")):
        return "actors / workers"  # ours, Ray Data's
    if name.startswith("ray::") or "/ray/" in command or "ray." in command:
        return "other Ray processes"  # idle Ray workers, the log monitor, agents
    return "actors / workers"  # the process executor's workers


def tree_cpu() -> dict[int, tuple[str, float]]:
    """This process tree's CPU seconds: pid -> (role, seconds)."""
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            role = _role(proc, me.pid)
            times = proc.cpu_times()
        except psutil.Error:
            continue
        if role is not None:
            out[proc.pid] = (role, times.user + times.system)
    return out


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two :func:`tree_cpu` readings (a process started between
    them counts from zero; one that ended is missed)."""
    spent = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        spent[role] += seconds - before.get(pid, (role, 0.0))[1]
    return spent


Measured = tuple[Result, float, dict[str, float]]


def _measure(name: str, make: Callable[[], Iterable[Any]]) -> Measured:
    """One round: the harness's numbers, the driver's CPU seconds per sample and the tree's
    CPU seconds per sample by role."""
    result = measure_once(name, _driver_cpu(make))
    roles = _ROLES[0]
    samples = max(result.samples, 1)
    per_sample = _DRIVER[0] / samples
    print(
        f"{name}: {result.samples_per_s:,.0f} samples/s, driver {per_sample * 1e6:,.0f} us/sample, "
        + ", ".join(f"{role} {cpu / samples * 1e6:,.0f}" for role, cpu in roles.items()),
        file=sys.stderr,
    )
    return result, per_sample, {role: cpu / samples for role, cpu in roles.items()}


def _best(rounds: list[Measured]) -> Measured:
    return max(rounds, key=lambda measured: measured[0].samples_per_s)


def roles_table(measured: list[Measured], cores: int) -> list[str]:
    """The tree's CPU per sample by role, and the rate ``cores`` cores bound it to."""
    head = "| loader | " + " | ".join(ROLES) + " | tree | bound: cores / tree (samples/s) |"
    lines = [head, "|---" * (len(ROLES) + 3) + "|"]
    for result, _, roles in measured:
        tree = sum(roles.values())
        cells = " | ".join(f"{roles[role] * 1e6:,.0f}" for role in ROLES)
        bound = cores / tree if tree > 0 else 0.0
        lines.append(f"| {result.name} | {cells} | {tree * 1e6:,.0f} | {bound:,.0f} |")
    return lines


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
        runs: list[list[Measured]] = [[], []]
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
    results = [r for r, _, _ in measured]
    (proc_r, proc_cpu, proc_roles), (ray_r, ray_cpu, ray_roles), (data_r, _, _) = measured
    cores = psutil.cpu_count() or 1
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
        *(f"| {r.name} | {cpu * 1e6:,.0f} |" for r, cpu, _ in measured),
        "",
        f"CPU per sample by process role (us; psutil over the tree, all on this machine's {cores} cores):",
        "",
        *roles_table(measured, cores),
        "",
        f"tree CPU per sample, ray / process: **{sum(ray_roles.values()) / max(sum(proc_roles.values()), 1e-12):.2f}**"
        " (on shared cores, the ray / process rate is bounded by its inverse)",
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
