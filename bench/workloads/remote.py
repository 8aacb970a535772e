"""Remote shards: the same samples as WebDataset tar shards behind one local object server.

The server (``tests/object_server.py``: aiohttp on 127.0.0.1) adds a first-byte latency of
0, 20 and 100 ms to every GET and sends at most 50 MB/s per connection. Two workloads: JPEGs
decoded and resized to 224 (CPU-bound here) and pre-decoded float32 arrays of ~150 KB with no
decode (I/O-bound). Each contender reads one epoch; the table gives samples/s after the first
batch, the time to that batch, peak memory over the process tree (PSS), the bytes the server
sent over the dataset's bytes, and for aioloader the first batch after a resume from the middle
of the epoch (and the bytes that resumed run fetched over the bytes still to read).

aioloader decodes in 2 threads (Pillow and numpy release the GIL), so the fresh loader of a
resume measures the read path rather than the start of a process pool.

Anchors: the ``webdataset`` package in torch ``DataLoader(num_workers=2)`` (one ``curl`` per
shard), and Mosaic Streaming / LitData when they are installed (the ``bench`` extra); a
missing one is named in the report, not measured.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import aioloader as al
from aioloader.io import Retry
from aioloader.transforms import decode_image
from bench.harness import measure_once
from bench.workloads.jpeg import CACHE, SIZE, make_images

BATCH = 32
SHARDS = 8
LINK = 50e6  # bytes/s per connection
_DECODE = decode_image(size=SIZE)


def decode_jpeg(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    return _DECODE.decode(sample["jpg"]), int(sample["cls"])


def decode_array(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    return torch.from_numpy(np.load(io.BytesIO(sample["npy"]))), int(sample["cls"])


def _jpeg_samples(n: int):
    root = make_images(n)
    files = sorted(p for p in root.rglob("*.jpg"))
    for i, path in enumerate(files):
        yield {"__key__": f"s{i:06d}", "jpg": path.read_bytes(), "cls": i % 10}


def _array_samples(n: int):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield {"__key__": f"s{i:06d}", "npy": rng.random((192, 200), dtype=np.float32), "cls": i % 10}


def _shards(kind: str, n: int) -> Path:
    folder = CACHE / f"remote-{kind}-{n}"
    if not (folder / "index.json").exists():
        samples = _jpeg_samples(n) if kind == "jpeg" else _array_samples(n)
        al.sources.write_shards(samples, str(folder / "train-%06d.tar"), max_count=-(-n // SHARDS))
    return folder


def _wds_loader(urls: list[str], decode: Any) -> Any:
    import webdataset as wds

    dataset = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker, empty_check=False)
        .map(decode)
        .batched(BATCH)
    )
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)


def _aio_loader(url: str, decode: Any, **options: Any) -> al.Loader:
    retry = Retry(timeout_s=30.0)
    return al.Loader.from_source(al.sources.WebDataset(url, retry=retry), **options).map(
        decode, executor="thread", concurrency=2
    ).batch(BATCH)


def _row(name: str, result: Any, sent: int, data: int, extra: str = "") -> str:
    after = (result.samples - BATCH) / max(1e-9, result.elapsed_s - result.first_batch_s)
    return (
        f"| {name} | {after:,.0f} | {result.first_batch_s:.3f} | {result.peak_mb:,.0f} | "
        f"{sent / data:.3f} | {extra} |"
    )


def _resume(make: Any, server: Any, half: int, data: int) -> str:
    """First batch after a resume from batch ``half``, and bytes fetched by the resumed run."""
    with make() as loader:
        it = iter(loader)
        for _ in range(half):
            next(it)
        state = loader.state_dict()
    server.bytes_sent = 0
    with make() as loader:
        loader.load_state_dict(state)
        started = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - started
        rest = sum(1 for _ in it)
    return f"resume: first batch {first:.3f}s, fetched {server.bytes_sent / data:.2f} of the data ({rest + 1} batches)"


def _anchor_notes() -> list[str]:
    notes = []
    for module, name in (("streaming", "Mosaic Streaming"), ("litdata", "LitData")):
        try:
            __import__(module)
        except ImportError:
            notes.append(f"{name}: not installed here, not measured")
    return notes


def _section(kind: str, n: int, latencies: list[float]) -> str:
    from tests.object_server import ObjectServer

    folder = _shards(kind, n)
    names = sorted(p.name for p in folder.glob("*.tar"))
    decode = decode_jpeg if kind == "jpeg" else decode_array
    lines = [
        f"### remote {kind}: {n:,} samples in {len(names)} shards, {LINK / 1e6:.0f} MB/s per connection",
        "",
        "| latency / loader | samples/s after first batch | first batch (s) | peak mem (MB) | fetched / data | |",
        "|---|---|---|---|---|---|",
    ]
    with ObjectServer(bytes_per_s=LINK) as server:
        for name in [*names, "index.json"]:
            server.objects[name] = (folder / name).read_bytes()
        data = sum(len(server.objects[name]) for name in names)
        url = server.url(f"train-{{000000..{len(names) - 1:06d}}}.tar")
        urls = [server.url(name) for name in names]
        for latency in latencies:
            server.latency_s = latency
            tag = f"{latency * 1000:.0f} ms"
            server.bytes_sent = 0
            wds_result = measure_once("webdataset", lambda: _wds_loader(urls, decode))
            lines.append(_row(f"{tag}: webdataset, torch DL w=2", wds_result, server.bytes_sent, data))
            with _aio_loader(url, decode) as loader:
                server.bytes_sent = 0
                result = measure_once("aioloader", lambda loader=loader: iter(loader))
                sent = server.bytes_sent
            note = _resume(lambda: _aio_loader(url, decode), server, result.batches // 2, data)
            lines.append(_row(f"{tag}: aioloader stream, threads=2", result, sent, data, note))
            lines.append(
                f"| {tag}: ratio aioloader / webdataset | "
                f"{result.samples / max(1e-9, result.elapsed_s - result.first_batch_s) / max(1e-9, wds_result.samples / max(1e-9, wds_result.elapsed_s - wds_result.first_batch_s)):.2f}x | | | | |"
            )
            if latency == 0.02:
                index = server.url("index.json")
                indexed = al.Loader.from_source(
                    al.sources.WebDataset(index=index), shuffle=True, seed=0
                ).map(decode, executor="thread", concurrency=2).batch(BATCH)
                with indexed:
                    server.bytes_sent = 0
                    shuffled = measure_once("global", lambda indexed=indexed: iter(indexed))
                    lines.append(
                        _row(f"{tag}: aioloader shuffle=True (ranged reads)", shuffled, server.bytes_sent, data)
                    )
    return "\n".join([*lines, "", *_anchor_notes()])


def run(quick: bool = False) -> str:
    n_jpeg = 400 if quick else 4000
    n_array = 200 if quick else 2000
    latencies = [0.0, 0.02, 0.1]
    return _section("jpeg", n_jpeg, latencies) + "\n\n" + _section("array", n_array, latencies)
