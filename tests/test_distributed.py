"""A real torch.distributed run: 3 gloo ranks on this machine, rank and world size taken from
the process group, checking the union of keys and equal step counts (what DDP needs). One
process group runs a loader per shard policy (three torch.distributed processes in all, not three
per policy); each policy's test checks its own loader's results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    import aioloader as al

    rank, world, init, policies, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    results = {}
    for policy in policies.split(","):
        loader = al.Loader.from_source(range(1001), shuffle=True, seed=3, shard_policy=policy).batch(16)
        keys, steps = [], 0
        with loader:
            for batch in loader:
                keys.extend(batch.tolist())
                steps += 1
        gathered = [None] * world
        dist.all_gather_object(gathered, {"keys": keys, "steps": steps, "len": len(loader)})
        results[policy] = gathered
    if rank == 0:
        json.dump(results, open(out, "w"))
    dist.destroy_process_group()
    """
)


POLICIES = ["drop", "pad", "uneven"]


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory) -> dict:
    """Each policy's per-rank results from one run of 3 gloo ranks (every process exited)."""
    tmp_path = tmp_path_factory.mktemp("gloo")
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    init = f"file://{tmp_path / 'rendezvous'}"
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "3", init, ",".join(POLICIES), str(out)], env=env
        )
        for r in range(3)
    ]
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0, 0]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_three_gloo_ranks(gloo_results, policy):
    ranks = gloo_results[policy]
    keys = [k for r in ranks for k in r["keys"]]
    steps = [r["steps"] for r in ranks]
    assert [r["len"] for r in ranks] == steps
    if policy == "uneven":
        assert sorted(keys) == list(range(1001))
    elif policy == "drop":
        assert len(set(steps)) == 1 and len(set(keys)) == len(keys) == 999
    else:
        assert len(set(steps)) == 1 and set(keys) == set(range(1001)) and len(keys) == 1002
    # each rank got a disjoint share (up to padding)
    assert len(set(ranks[0]["keys"]) & set(ranks[1]["keys"])) <= (1 if policy == "pad" else 0)
