"""The remote workload's Mosaic Streaming and LitData contenders: their formats and loaders.

Both read ``s3://`` URLs only, so the bench object server is their S3 endpoint: it answers
path-style GETs and HEADs of ``/<bucket>/<key>`` (signatures are not checked; the credentials
in the environment are placeholders). Each writes the same samples in its own format (MDS
shards, LitData chunks) of about the size of the tar shards, once, next to them.

Neither needs torchvision to read, but both packages declare it, and it does not load against
this torch: they are installed with ``--no-deps`` (the ``bench`` extra lists what they import).
``streaming/__init__`` imports its vision datasets, which import torchvision; an empty
``streaming.vision`` module stands in for them (nothing here uses them). LitData's obstore
client refuses plain HTTP unless allowed; the local endpoint is plain HTTP.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUCKET = "bench"


def _import_anchors() -> tuple[Any, Any, str]:
    notes = []
    sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    try:
        import streaming
    except Exception as exc:  # not installed, or a dependency it imports is missing
        streaming = None
        notes.append(f"Mosaic Streaming: cannot be imported here ({exc}), not measured")
    try:
        import litdata
        import litdata.streaming.downloader as downloader

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # the endpoint is plain HTTP
    except Exception as exc:
        litdata = None
        notes.append(f"LitData: cannot be imported here ({exc}), not measured")
    return streaming, litdata, "; ".join(notes)


streaming, litdata, NOTES = _import_anchors()

if streaming is not None:

    class MosaicSamples(streaming.StreamingDataset):
        """An MDS dataset whose samples go through ``decode``, in the DataLoader's workers."""

        def __init__(self, *, decode: Callable[[dict[str, Any]], Any], **options: Any) -> None:
            super().__init__(**options)
            self.decode = decode

        def __getitem__(self, index: int) -> Any:
            return self.decode(super().__getitem__(index))


def _payload(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's fields as bytes (arrays as .npy, as the tar shards hold them) and its class."""
    out: dict[str, Any] = {"cls": int(sample["cls"])}
    for field, value in sample.items():
        if field in ("__key__", "cls"):
            continue
        if isinstance(value, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, value)
            value = buffer.getvalue()
        out[field] = value
    return out


def write(folder: Path, samples: Iterable[dict[str, Any]], shard_bytes: int) -> list[str]:
    """MDS shards under ``folder/mds`` and LitData chunks under ``folder/litdata`` (once); the
    paths of their files, relative to ``folder``."""
    done = folder / ".complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)  # neither anchor installed: an empty folder
        payloads = [_payload(s) for s in samples]
        fields = {k: "bytes" for k in payloads[0] if k != "cls"}
        if streaming is not None:
            with streaming.MDSWriter(
                out=str(folder / "mds"), columns={**fields, "cls": "int"}, size_limit=shard_bytes
            ) as writer:
                for payload in payloads:
                    writer.write(payload)
        if litdata is not None:
            from litdata.streaming.writer import BinaryWriter

            writer = BinaryWriter(str(folder / "litdata"), chunk_bytes=shard_bytes)
            for i, payload in enumerate(payloads):
                writer.add_item(i, payload)
            writer.done()
            writer.merge()
        done.touch()
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".complete"
    )


def environment(endpoint: str) -> None:
    """Point both clients at the bench endpoint (placeholder credentials)."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        S3_ENDPOINT_URL=endpoint,
    )


def mosaic_loader(remote: str, decode: Callable[[dict[str, Any]], Any], batch: int) -> Any:
    """Mosaic Streaming in torch DataLoader(num_workers=2), a fresh local cache each time."""
    local = tempfile.mkdtemp(prefix="bench-mds-")
    dataset = MosaicSamples(decode=decode, remote=remote, local=local, shuffle=False, batch_size=batch)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=2)


def litdata_loader(remote: str, endpoint: str, decode: Callable[[dict[str, Any]], Any], batch: int) -> Any:
    """LitData's StreamingDataLoader(num_workers=2), a fresh local cache each time."""
    from litdata.streaming.resolver import Dir

    cache = tempfile.mkdtemp(prefix="bench-litdata-")
    dataset = litdata.StreamingDataset(
        input_dir=Dir(path=cache, url=remote), storage_options={"endpoint_url": endpoint}, transform=decode
    )
    return litdata.StreamingDataLoader(dataset, batch_size=batch, num_workers=2)
