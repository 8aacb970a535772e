"""Review of the loader service and ``in_subprocess()`` from a demanding user's side: what a
remote pipeline error tells the trainer, a batch too big for the client, and a subprocess
loader that is dropped without ``close()`` (its child, reader thread and segments must go)."""

from __future__ import annotations

import gc
import os
import secrets
import time

import numpy as np
import psutil
import pytest
import torch

import aioloader as al
from aioloader.service import RemoteError

TOKEN = secrets.token_hex(16)


def failing(i: int) -> int:
    if i == 4:
        raise KeyError("sample 4 is missing")
    return i


def image(i: int) -> dict:
    # 64 KiB per sample: a batch of 8 travels through a shared-memory segment
    return {"pixels": torch.full((128, 128), i, dtype=torch.float32), "key": i}


def big(i: int) -> torch.Tensor:
    return torch.full((256, 1024), float(i))  # 1 MiB per sample


def _segments(prefix: str) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def test_a_remote_pipeline_error_names_its_stage_and_key():
    loader = al.Loader.from_source(list(range(10))).map(failing).batch(2, collate=al.collate.as_list)
    with (
        loader,
        al.serve(loader, token=TOKEN) as srv,
        al.connect(srv.address, token=TOKEN) as client,
        pytest.raises(RemoteError, match="sample 4 is missing") as info,
    ):
        list(client)
    assert info.value.remote_type == "KeyError"
    assert info.value.stage == "map(failing)"
    assert info.value.key == 4


def test_a_batch_over_max_frame_bytes_names_the_argument():
    loader = al.Loader.from_source(list(range(4))).map(big).batch(2)
    with loader, al.serve(loader, token=TOKEN) as srv:
        with (
            al.connect(srv.address, token=TOKEN, max_frame_bytes=1 << 20) as client,
            pytest.raises(ConnectionError, match="max_frame_bytes"),
        ):
            list(client)
        with al.connect(srv.address, token=TOKEN) as client:  # the server serves the next one
            assert [tuple(b.shape) for b in client] == [(2, 256, 1024)] * 2


def test_an_unclosed_subprocess_loader_is_ended_when_collected():
    sub = al.Loader.from_source(list(range(400))).map(image).batch(8).in_subprocess()
    for _ in sub:
        break
    child = psutil.Process(sub.pid)
    prefix = sub._prefix
    assert _segments(prefix)
    del sub
    gc.collect()
    child.wait(timeout=5)  # the finalizer ended it (raises TimeoutExpired otherwise)
    assert not _segments(prefix)


def test_after_close_the_iterator_raises_at_once_whatever_was_buffered():
    sub = al.Loader.from_source(list(range(400))).map(image).batch(8).in_subprocess(credits=4)
    it = iter(sub)
    next(it)
    deadline = time.monotonic() + 20
    while sub.stats()["batches"] < 5:  # the child filled the 4 credits: batches wait here
        assert time.monotonic() < deadline, "the child did not produce its credited batches"
    sub.stats()  # one more round trip: replies come after the batches sent before them
    sub.close()
    with pytest.raises(RuntimeError, match="the loader was closed"):
        next(it)


def test_after_close_the_client_raises_at_once_whatever_was_buffered():
    loader = al.Loader.from_source(list(range(400))).map(image).batch(8)
    with loader, al.serve(loader, token=TOKEN) as srv:
        client = al.connect(srv.address, token=TOKEN, credits=4)
        it = iter(client)
        next(it)
        deadline = time.monotonic() + 20
        while client.stats()["batches"] < 5:  # 4 more batches wait in the client
            assert time.monotonic() < deadline, "the server did not send the credited batches"
            time.sleep(0.01)
        client.close()
        with pytest.raises(RuntimeError, match="the client is closed"):
            next(it)


def scalars(i: int) -> dict:
    return {"weight": torch.tensor(float(i)), "count": np.array(i), "half": torch.tensor(1.5).bfloat16()}


def test_0_dimensional_tensors_and_arrays_keep_their_shape():
    def collate(items: list) -> dict:  # a batch of scalars, as a loss-weighting collate makes
        return {"weight": torch.tensor(0.5), "count": np.array(len(items)), "items": items}

    loader = al.Loader.from_source(list(range(4))).map(scalars).batch(2, collate=collate)
    with loader, al.serve(loader, token=TOKEN) as srv, al.connect(srv.address, token=TOKEN) as client:
        batches = list(client)
    assert [b["weight"].shape for b in batches] == [torch.Size([])] * 2
    assert [b["count"].shape for b in batches] == [()] * 2
    first = batches[0]["items"][1]
    assert first["weight"].shape == () and first["count"].shape == () and first["half"].shape == ()
    assert first["weight"].item() == 1.0 and first["half"].dtype == torch.bfloat16
