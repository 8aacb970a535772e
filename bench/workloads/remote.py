"""Remote shards: the same samples as WebDataset tar shards behind one local object server.

The server (``tests/object_server.py``: aiohttp on 127.0.0.1, run in a process of its own by
``bench/object_server_process.py``) adds a first-byte latency of 0, 20 and 100 ms to every GET
and sends at most 50 MB/s per connection. Two workloads: JPEGs
decoded and resized to 224 (CPU-bound here) and pre-decoded float32 arrays of ~150 KB with no
decode (I/O-bound). Before each measurement the bench waits (up to 10 s) until no process of
an earlier contender is left (an anchor's workers still ending would compute during it); a
row says how long it waited (from 0.2 s), or names any still running after that. Each contender reads one epoch; the table gives samples/s after the first
batch, the time to that batch, peak memory over the process tree (PSS), the bytes the server
sent over the dataset's bytes, and for aioloader the first batch after a resume from the middle
of the epoch (and the bytes that resumed run fetched over the bytes still to read).

aioloader decodes in 2 threads (Pillow and numpy release the GIL), and in 2 processes: the
workers streaming their shards themselves (``read_in_workers=True``), the parent reading
and parsing the shards for the workers to decode (``False``), and the default (``None``: the
first shard measures which of the two to use; its row names the choice and gives its rate over
the faster of the two rows); the resume is measured with
threads, so its fresh loader measures the read path rather than the start of a process pool.

Anchors: the ``webdataset`` package in torch ``DataLoader(num_workers=2)`` (one ``curl`` per
shard), Mosaic Streaming and LitData (num_workers=2) reading the same samples in their formats
through the same server as an S3 endpoint (:mod:`bench.workloads._remote_anchors`; the
``bench`` extra); one that cannot be imported is named in the report, not measured. The
"decode limit" row is 2 processes decoding the JPEG bytes in memory and nothing else.
"fetched / data" is over the tar shards' bytes for every contender (MDS and LitData files hold
the same samples in slightly fewer bytes: no tar headers).

At 20 ms the indexed source runs a global shuffle (``shuffle=True``, ranged reads of single
samples read ahead along the order): its rate as a fraction of the shard-order stream's (the
same threads), and the order's ``aioloader.order.quality``. For the arrays, aioloader's rows
give the steady state's share of the link's limit: the bytes the server sent after the first
batch, over the seconds after it, over 50 MB/s x the most GETs the server answered at once in
that run (the connections the loader actually used; the server sets no total limit); n/a
where less than a tenth of the bytes came after the first batch (the small --quick data is
read ahead whole within the read budget).
"""

from __future__ import annotations

import io
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

import aioloader as al
from aioloader.io import Retry
from aioloader.order.quality import quality
from aioloader.transforms import decode_image
from bench.harness import measure_once
from bench.object_server_process import ServerProcess
from bench.workloads import _remote_anchors as anchors
from bench.workloads.jpeg import CACHE, SIZE, make_images

BATCH = 32
SHARDS = 8
LINK = 50e6  # bytes/s per connection
_DECODE = decode_image(size=SIZE)


def decode_jpeg(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    return _DECODE.decode(sample["jpg"]), int(sample["cls"])


def decode_array(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    return torch.from_numpy(np.load(io.BytesIO(sample["npy"]))), int(sample["cls"])


def keyed_jpeg(sample: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
    return (*decode_jpeg(sample), int(sample["__key__"][1:]))


def keyed_array(sample: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
    return (*decode_array(sample), int(sample["__key__"][1:]))


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
        wds.WebDataset(
            urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker, empty_check=False
        )
        .map(decode)
        .batched(BATCH)
    )
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)


def _aio_loader(
    url: str, decode: Any, executor: str = "thread", *, read_in_workers: bool | None = None, **options: Any
) -> al.Loader:
    retry = Retry(timeout_s=30.0)
    source = al.sources.WebDataset(url, retry=retry, read_in_workers=read_in_workers)
    return (
        al.Loader.from_source(source, **options)
        .map(decode, executor=executor, concurrency=2)
        .batch(BATCH)
    )


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


LINK_NOTE = (
    "link: bytes sent after the first batch / (s after the first batch x 50 MB/s x the most GETs "
    "in flight at once)"
)


SETTLE_S = 10.0  # the most a measurement waits for an earlier contender's processes to end


def _settle(server: Any) -> str:
    """Wait (up to SETTLE_S) until no process of an earlier contender is left in this process
    tree (an anchor's workers, its downloader, still ending), so none computes during the next
    measurement; returns a note naming those still there after that."""
    keep = {server._process.pid}
    started = time.monotonic()
    while True:
        stray = [p for p in psutil.Process().children(recursive=True) if p.pid not in keep]
        stray = [p for p in stray if _alive(p)]
        waited = time.monotonic() - started
        if not stray or waited >= SETTLE_S:
            break
        time.sleep(0.05)
    if stray:
        return f"{len(stray)} processes of an earlier contender still running"
    return f"waited {waited:.1f}s for an earlier contender's processes to end" if waited >= 0.2 else ""


def _alive(process: Any) -> bool:
    """Whether ``process`` is a contender's, still running (not multiprocessing's resource
    tracker or fork server, which stay for the interpreter's life and compute nothing)."""
    try:
        command = " ".join(process.cmdline())
        return process.status() != psutil.STATUS_ZOMBIE and not any(
            helper in command for helper in ("resource_tracker", "forkserver")
        )
    except psutil.Error:
        return False


class _Counted:
    """One measured epoch with the server's bytes: in all, and after the first batch."""

    def __init__(self, server: Any, name: str, make: Any, consume: Any = None) -> None:
        self.stray = _settle(server)
        at_first: list[int] = []

        def take(batch: Any) -> None:
            if not at_first:
                at_first.append(server.bytes_sent)
            if consume is not None:
                consume(batch)

        server.bytes_sent = 0
        self.result = measure_once(name, make, consume=take)
        self.sent = server.bytes_sent
        self.steady_bytes = self.sent - (at_first[0] if at_first else 0)
        self.connections, _ = server.in_flight()

    def link(self) -> str:
        """The steady state's bytes/s as a fraction of the link's limit: LINK per connection x
        the most GETs in flight at once."""
        if self.steady_bytes < 0.1 * self.sent:  # nothing left to measure the link by
            before = 1 - self.steady_bytes / max(1, self.sent)
            return f"link: n/a ({before:.0%} of the bytes came before the first batch)"
        seconds = max(1e-9, self.result.elapsed_s - self.result.first_batch_s)
        share = self.steady_bytes / seconds / (LINK * max(1, self.connections))
        return f"link: {share:.2f} of {LINK / 1e6:.0f} MB/s x {self.connections} connections"


def _shuffled(server: Any, index: str, kind: str, data: int, stream: Any) -> str:
    """The global shuffle's row: rate, and as a fraction of the shard-order stream's (after
    the first batch, and over the whole epoch); quality."""
    decode = keyed_jpeg if kind == "jpeg" else keyed_array
    keys: list[int] = []
    indexed = (
        al.Loader.from_source(al.sources.WebDataset(index=index), shuffle=True, seed=0)
        .map(decode, executor="thread", concurrency=2)
        .batch(BATCH)
    )
    with indexed:
        counted = _Counted(server, "global", lambda: iter(indexed), consume=lambda b: keys.extend(b[2].tolist()))
    result = counted.result
    note = (
        f"{_rate(result) / max(1e-9, _rate(stream)):.2f}x the shard-order rate (whole epoch "
        f"{result.samples_per_s / max(1e-9, stream.samples_per_s):.2f}x), quality {quality(keys):.3f}"
    )
    if kind == "array":
        note += ", " + counted.link()
    if counted.stray:
        note += ", " + counted.stray
    return _row("20 ms: aioloader shuffle=True (ranged reads, read ahead)", result, counted.sent, data, note)


def _choice_note(choice: dict[str, Any] | None, rate: float, best: dict[str, float]) -> str:
    """What the default (``read_in_workers=None``) measured on its first shard and chose, and
    its rate over the faster of the two process rows of the same run."""
    faster = max(best["aioloader processs, workers read"], best["aioloader processs, parent reads"])
    if choice is None:
        return f"chose nothing (no measure); {rate / max(1e-9, faster):.2f}x the faster mode"
    who = "workers read" if choice["workers_read"] else "parent reads"
    return (
        f"chose {who} ({choice['sample_bytes'] / 1e3:.0f} KB a sample, fn {choice['fn_s'] * 1e3:.2f} ms CPU); "
        f"{rate / max(1e-9, faster):.2f}x the faster mode"
    )


def _rate(result: Any) -> float:
    return (result.samples - BATCH) / max(1e-9, result.elapsed_s - result.first_batch_s)


def _decode_count(blobs: list[bytes]) -> int:
    for blob in blobs:
        _DECODE.decode(blob)
    return len(blobs)


def _ceiling(folder: Path) -> float:
    """JPEGs/s of 2 processes doing nothing but decode_image on the shards' JPEG bytes (in
    memory: no reads, no batching, no transfer of images)."""
    blobs = [s["jpg"] for s in _read_tars(folder)]
    tasks = [blobs[i : i + BATCH] for i in range(0, len(blobs), BATCH)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_count, tasks[:4]))  # started and warm
        started = time.perf_counter()
        done = sum(pool.map(_decode_count, tasks))
        return done / (time.perf_counter() - started)


def _read_tars(folder: Path) -> list[dict[str, Any]]:
    from aioloader.io.tar_stream import SampleGrouper, TarParser

    samples = []
    for path in sorted(folder.glob("*.tar")):
        parser, grouper = TarParser(str(path)), SampleGrouper(str(path))
        found = [s for m in parser.feed(path.read_bytes()) for s in grouper.push(m)] + grouper.finish()
        samples += [s.fields for s in found]
    return samples


def _anchors(
    lines: list[str], tag: str, server: Any, prefix: str, decode: Any, data: int, best: dict[str, float]
) -> None:
    """Mosaic Streaming and LitData rows (when they can run here). A run that fails is a row
    saying how: Mosaic's forked workers share the parent's HTTP connection and read a corrupt
    shard now and then, as the issue reports."""
    endpoint = server.url("").rstrip("/")
    contenders = []
    if anchors.streaming is not None:
        contenders.append(
            (
                "Mosaic Streaming, torch DL w=2",
                "mosaic",
                lambda: anchors.mosaic_loader(f"s3://{prefix}/mds", decode, BATCH),
            )
        )
    if anchors.litdata is not None:
        contenders.append(
            (
                "LitData, StreamingDataLoader w=2",
                "litdata",
                lambda: anchors.litdata_loader(f"s3://{prefix}/litdata", endpoint, decode, BATCH),
            )
        )
    for label, name, make in contenders:
        try:
            counted = _Counted(server, name, make)
        except Exception as exc:  # the anchor's own failure: reported, not measured
            reason = " ".join(str(exc).split())[:160]
            lines.append(f"| {tag}: {label} | failed | | | | {type(exc).__name__}: {reason} |")
            continue
        lines.append(_row(f"{tag}: {label}", counted.result, counted.sent, data, counted.stray))
        best[name] = _rate(counted.result)


def _section(kind: str, n: int, latencies: list[float]) -> str:
    folder = _shards(kind, n)
    names = sorted(p.name for p in folder.glob("*.tar"))
    data = sum((folder / name).stat().st_size for name in names)
    samples = _jpeg_samples(n) if kind == "jpeg" else _array_samples(n)
    others = anchors.write(CACHE / f"{folder.name}-anchors", samples, -(-data // len(names)))
    served = [f"{folder.name}/{name}" for name in [*names, "index.json"]]
    served += [f"{folder.name}-anchors/{name}" for name in others]
    decode = decode_jpeg if kind == "jpeg" else decode_array
    lines = [
        f"### remote {kind}: {n:,} samples in {len(names)} shards, {LINK / 1e6:.0f} MB/s per connection",
        "",
        "| latency / loader | samples/s after first batch | first batch (s) | peak mem (MB) | fetched / data | |",
        "|---|---|---|---|---|---|",
    ]
    with ServerProcess(CACHE, served, bytes_per_s=LINK, prefix=f"{anchors.BUCKET}/") as server:
        anchors.environment(server.url("").rstrip("/"))
        base = f"{anchors.BUCKET}/{folder.name}"
        url = server.url(f"{base}/train-{{000000..{len(names) - 1:06d}}}.tar")
        urls = [server.url(f"{base}/{name}") for name in names]
        for latency in latencies:
            server.latency_s = latency
            tag = f"{latency * 1000:.0f} ms"
            wds = _Counted(server, "webdataset", lambda: _wds_loader(urls, decode))
            lines.append(_row(f"{tag}: webdataset, torch DL w=2", wds.result, wds.sent, data, wds.stray))
            best = {"webdataset": _rate(wds.result)}
            _anchors(lines, tag, server, f"{base}-anchors", decode, data, best)
            modes = (("thread", True), ("process", True), ("process", False), ("process", None))
            for executor, in_workers in modes:
                with _aio_loader(url, decode, executor, read_in_workers=in_workers) as loader:
                    counted = _Counted(server, "aioloader", lambda loader=loader: iter(loader))
                    choice = loader.stats()["stages"][0].get("read_choice")
                result, sent = counted.result, counted.sent
                notes = [note for note in (counted.stray,) if note]
                if kind == "array":
                    notes.append(counted.link())
                if executor == "thread":
                    notes.append(_resume(lambda: _aio_loader(url, decode), server, result.batches // 2, data))
                how = "" if executor == "thread" else (", workers read" if in_workers else ", parent reads")
                if in_workers is None:
                    how = ", default"
                    notes.append(_choice_note(choice, _rate(result), best))
                lines.append(_row(f"{tag}: aioloader stream, {executor} x2{how}", result, sent, data, "; ".join(notes)))
                best[f"aioloader {executor}s{how}"] = _rate(result)
                if executor == "thread":
                    stream = result
            anchor = max(v for k, v in best.items() if not k.startswith("aioloader"))
            ours = max(v for k, v in best.items() if k.startswith("aioloader"))
            lines.append(
                f"| {tag}: ratio best aioloader / best anchor | {ours / max(1e-9, anchor):.2f}x | | | | |"
            )
            if latency == 0.02:
                index = server.url(f"{base}/index.json")
                lines.append(_shuffled(server, index, kind, data, stream))
    if kind == "array":
        lines.append(f"| {LINK_NOTE} | | | | | |")
    if kind == "jpeg":
        lines.append(f"| decode limit: 2 processes, decode only | {_ceiling(folder):,.0f} | | | | |")
    return "\n".join([*lines, "", *([anchors.NOTES] if anchors.NOTES else [])])


def run(quick: bool = False) -> str:
    n_jpeg = 400 if quick else 4000
    n_array = 200 if quick else 2000
    latencies = [0.0, 0.02, 0.1]
    return _section("jpeg", n_jpeg, latencies) + "\n\n" + _section("array", n_array, latencies)
