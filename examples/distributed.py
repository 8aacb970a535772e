"""A two-rank torch.distributed run (gloo, CPU): each rank reads its own shard.

The script starts two processes itself. In each, ``Loader.from_source`` takes rank and world
size from the initialised process group and shards the keys before any read: with
``shard_policy="uneven"`` the two ranks together see every sample exactly once; with the
default ``"drop"`` they yield the same number of batches (so DDP never waits on a rank).

    python examples/distributed.py
"""

from __future__ import annotations

import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import aioloader as al

SAMPLES = 1001  # odd on purpose: the ranks cannot split it evenly
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        data = np.arange(SAMPLES, dtype=np.int64)
        for policy in ("uneven", "drop"):
            loader = al.Loader.from_source(data, shuffle=True, seed=0, shard_policy=policy).batch(50)
            with loader:
                loader.set_epoch(1)
                seen = torch.cat(list(loader))
            everyone: list = [None] * WORLD
            dist.all_gather_object(everyone, (len(seen), seen.tolist()))
            if rank == 0:
                keys = [k for _, ks in everyone for k in ks]
                print(
                    f"{policy:>6}: per-rank samples {[n for n, _ in everyone]}, "
                    f"distinct {len(set(keys))} of {SAMPLES}, repeats {len(keys) - len(set(keys))}"
                )
                if policy == "uneven":
                    assert sorted(keys) == list(range(SAMPLES))
                else:
                    assert everyone[0][0] == everyone[1][0] and len(set(keys)) == len(keys)
    finally:
        dist.destroy_process_group()


def main() -> int:
    mp.spawn(rank_main, args=(free_port(),), nprocs=WORLD, join=True)
    print("both ranks done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
