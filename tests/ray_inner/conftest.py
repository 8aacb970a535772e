"""The Ray cluster cases run only inside a private loopback-only network namespace, started by
``tests/test_ray.py`` (never collected by the main run: see ``cases.py``). A two-node simulated
cluster (``ray.cluster_utils.Cluster``, one CPU and a 100 MB object store each) lives for the
module; Ray's own processes outlive single tests, so the leak check here looks at the loader's
threads only, and each case checks that its actors are gone."""

from __future__ import annotations

import os

import pytest

from tests.conftest import _loader_threads, wait_threads_gone

IN_NAMESPACE = os.environ.get("AIOLOADER_RAY_NETNS") == "1"
if not IN_NAMESPACE:  # the main run collects nothing here (see tests/test_ray.py)
    collect_ignore_glob = ["*.py"]

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(autouse=True)
def no_leaks():
    before = _loader_threads()
    yield
    alive = wait_threads_gone(before)
    assert not alive, f"loader threads left running: {sorted(t.name for t in alive)}"


@pytest.fixture(scope="module")
def cluster():
    if not IN_NAMESPACE:  # Ray must never start outside the loopback-only namespace
        raise RuntimeError("tests/ray_inner runs only inside the network namespace made by tests/test_ray.py")
    import ray
    from ray.cluster_utils import Cluster

    head = {
        **NODE,
        "include_dashboard": False,
        # a removed node is declared dead within ~5 s, not the default 15 s; a shorter period
        # risks declaring a live node dead on a loaded machine, its heartbeats late
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                           "health_check_failure_threshold": 5},
    }  # fmt: skip
    made = Cluster(initialize_head=True, head_node_args=head)
    try:
        made.add_node(**NODE)
        made.wait_for_nodes()
        ray.init(
            address=made.address, namespace="aioloader-tests", include_dashboard=False, log_to_driver=False
        )
        yield made
    finally:
        ray.shutdown()
        made.shutdown()
