"""The JPEG workload out of the trainer's process: in-process against ``in_subprocess()`` and
against the loader service on loopback (target: the service at >= 0.8x in-process).

The pipeline is the JPEG workload's best aioloader contender (files read with async I/O,
decoded per batch in a thread pool), on the same cached images (``bench.workloads.jpeg``).
The service runs as a separate process (``python -m aioloader serve`` with this file as the
spec: :func:`loader` / :func:`loader_quick`), as a trainer would use it; the client receives
each 4.8 MB batch over TCP and decodes it from JSON + raw bytes.

torch DataLoader (2 workers reading and decoding, as in the JPEG workload) is measured in the same
run for the first batch: the in-process Loader starts its threads in its first round ("cold first
batch"); ``in_subprocess()`` and the service have started (and read the files once) before.

This module is also a SPEC file: ``aioloader serve bench/workloads/service.py --attr loader``.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aioloader as al
from bench.harness import compare, table
from bench.workloads.jpeg import BATCH, DecodeBatch, TorchJpegDataset, make_images

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.8


def _spec(n: int) -> al.Loader:
    source = al.sources.ImageFolder(make_images(n))
    threads = max(2, os.cpu_count() or 1)
    return (
        al.Loader.from_source(source, shuffle=True, seed=0)
        .batch(BATCH, collate=al.collate.as_list)
        .map(DecodeBatch(), executor="thread", concurrency=threads)
    )


def loader() -> al.Loader:
    """The spec served by the full run (1500 images)."""
    return _spec(1500)


def loader_quick() -> al.Loader:
    """The spec served by ``--quick`` (300 images)."""
    return _spec(300)


class _ServerProcess:
    """``aioloader serve`` on loopback in a child process; killed on close."""

    def __init__(self, attr: str, token: str, folder: Path) -> None:
        token_file = folder / "token"
        token_file.write_text(token)
        self._log = (folder / "server.log").open("w")
        command = [
            sys.executable,
            "-m",
            "aioloader",
            "serve",
            __file__,
            "--attr",
            attr,
            "--token-file",
            str(token_file),
        ]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True)
        match = re.search(r"on (\S+):(\d+)$", (self.proc.stdout.readline() or "").strip())
        if match is None:
            self.close()
            raise RuntimeError(f"the loader server did not start; see {folder / 'server.log'}")
        self.address = f"{match.group(1)}:{match.group(2)}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


def _torch_loader(dataset: TorchJpegDataset) -> Any:
    from torch import Generator
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2, generator=Generator().manual_seed(0))


def run(quick: bool = False) -> str:
    n = 300 if quick else 1500
    attr = "loader_quick" if quick else "loader"
    token = secrets.token_hex(16)
    in_process = _spec(n)
    isolated = _spec(n).in_subprocess()
    with tempfile.TemporaryDirectory() as folder:
        server = _ServerProcess(attr, token, Path(folder))
        client = None
        try:
            client = al.connect(server.address, token=token)
            dataset = TorchJpegDataset(al.sources.ImageFolder(make_images(n)))
            contenders = [
                ("torch DL w=2", lambda: _torch_loader(dataset)),
                ("in-process", lambda: iter(in_process)),
                ("in_subprocess()", lambda: iter(isolated)),
                ("service, loopback (server process)", lambda: iter(client)),
            ]
            list(isolated)  # warm-up: the child has started and read the files once, as in-process will
            results = compare(contenders, rounds=1 if quick else 3)
        finally:
            if client is not None:
                client.close()
            server.close()
            isolated.close()
            in_process.close()
    by_name = {r.name: r for r in results}
    ratio = by_name["service, loopback (server process)"].samples_per_s / by_name["in-process"].samples_per_s
    verdict = "meets" if ratio >= TARGET else "BELOW"
    return (
        table(f"service: {n:,} JPEGs, decode per batch of {BATCH}, out of process", results, ["in-process"])
        + f"\n\nservice / in-process: **{ratio:.2f}x** ({verdict} the {TARGET}x target)"
    )
