"""What one Ray actor call costs the driver: ``python -m bench.workloads.ray_calls``.

On the ray workload's two-node simulated cluster (same loopback-only network namespace), one
actor on the other node answers calls with results of several sizes (an int; one batch of 32
images of 224x224x3 uint8, 4.8 MB; four batches as one array or as a list of four), and the
driver awaits them four ways: ``ObjectRef.future()`` callbacks (what the pool does), one
``ray.get`` per call, ``ray.wait`` on all of them then one ``ray.get``, and two calls in
flight with each result dropped once read (the stores hold only a few). It prints the
driver's CPU per call (this process's, Ray's threads in it included). A second table sets an
actor on the driver's node beside the one on the other node, results of 1, 4 and 8 batches
awaited two in flight, with the raylets' CPU per call beside the driver's: what moving a result
between the nodes' object stores costs, per call and per MB. A diagnostic, not part of
``python -m bench``.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import wait
from typing import Any

import numpy as np
import psutil

from bench.workloads.ray import _INSIDE, NODE, in_namespace

BATCH_BYTES = 32 * 3 * 224 * 224
CALLS = 40


class Answer:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {
            "int": 1,
            "1 batch": np.ones(BATCH_BYTES, dtype=np.uint8),
            "4 batches, one array": np.ones(4 * BATCH_BYTES, dtype=np.uint8),
            "4 batches, a list": [np.ones(BATCH_BYTES, dtype=np.uint8) for _ in range(4)],
            "8 batches, one array": np.ones(8 * BATCH_BYTES, dtype=np.uint8),
        }

    def where(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, what: str, keys: Any) -> Any:
        return self.results[what]


def _cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _futures(actor: Any, what: str, keys: Any) -> None:
    futures = [actor.run.remote(what, keys).future() for _ in range(CALLS)]
    wait(futures)
    for future in futures:
        future.result()


def _get_each(actor: Any, what: str, keys: Any) -> None:
    import ray

    for ref in [actor.run.remote(what, keys) for _ in range(CALLS)]:
        ray.get(ref)


def _few_alive(actor: Any, what: str, keys: Any) -> None:
    """Two calls in flight, each result dropped once read: the stores hold a few results."""
    import ray

    refs = [actor.run.remote(what, keys) for _ in range(2)]
    for _ in range(CALLS):
        ray.get(refs.pop(0))
        refs.append(actor.run.remote(what, keys))
    ray.get(refs)


def _wait_all(actor: Any, what: str, keys: Any) -> None:
    import ray

    refs = [actor.run.remote(what, keys) for _ in range(CALLS)]
    ray.wait(refs, num_returns=len(refs), fetch_local=True)
    ray.get(refs)


def _run(quick: bool) -> str:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    lines = ["| result | awaited by | keys sent as | driver CPU per call (ms) |", "|---|---|---|---|"]
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        head = ray.get_runtime_context().get_node_id()
        other = next(n["NodeID"] for n in ray.nodes() if n["NodeID"] != head and n["Alive"])
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(other, soft=False)
        actor = ray.remote(Answer).options(num_cpus=1, scheduling_strategy=strategy).remote()
        assert ray.get(actor.where.remote()) == other
        key_forms = {"a list of 128 ints": list(range(128)), "an int64 array": np.arange(128)}
        for what in ("int", "1 batch", "4 batches, one array", "4 batches, a list"):
            ways = (("future()", _futures), ("ray.get each", _get_each), ("ray.wait all", _wait_all),
                    ("ray.get, 2 in flight", _few_alive))  # fmt: skip
            for how, call in ways:
                for form, keys in key_forms.items():
                    if form != "a list of 128 ints" and (what != "int" or how != "future()"):
                        continue
                    call(actor, what, keys)  # warm
                    before = _cpu()
                    call(actor, what, keys)
                    per_call = (_cpu() - before) / CALLS
                    lines.append(f"| {what} | {how} | {form} | {per_call * 1e3:.2f} |")
                    print(lines[-1], file=sys.stderr, flush=True)
        here = (
            ray.remote(Answer)
            .options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
            .remote()
        )
        assert ray.get(here.where.remote()) == head
        lines += ["", *_by_node({"the driver's node": here, "the other node": actor})]
    finally:
        ray.shutdown()
        cluster.shutdown()
    return "\n".join(lines)


def _by_node(actors: dict[str, Any]) -> list[str]:
    """Driver and raylet CPU per call, two calls in flight, by where the actor runs."""
    from bench.workloads.ray import cpu_by_role, tree_cpu

    lines = [
        "| actor on | result | driver CPU per call (ms) | raylets CPU per call (ms) | raylets per MB (ms) |",
        "|---|---|---|---|---|",
    ]
    for what, batches in (("1 batch", 1), ("4 batches, one array", 4), ("8 batches, one array", 8)):
        for where, actor in actors.items():
            _few_alive(actor, what, None)  # warm
            before = tree_cpu()
            _few_alive(actor, what, None)
            roles = cpu_by_role(before, tree_cpu())
            driver, raylets = roles["driver"] / CALLS, roles["raylets"] / CALLS
            mb = batches * BATCH_BYTES / 1e6
            lines.append(
                f"| {where} | {what} | {driver * 1e3:.2f} | {raylets * 1e3:.2f} | {raylets / mb * 1e3:.2f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def run(quick: bool = False) -> str:
    if os.environ.get(_INSIDE) != "1":
        return in_namespace("bench.workloads.ray_calls", quick)
    return _run(quick)


if __name__ == "__main__":
    started = time.perf_counter()
    print(run(quick="--quick" in sys.argv[1:]))
    print(f"({time.perf_counter() - started:.0f}s)", file=sys.stderr)
