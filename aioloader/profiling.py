"""``aioloader profile``: each map stage of a pipeline alone, at several concurrencies.

The whole pipeline runs first (its samples/s and bottleneck). Then, for each map stage, the
items that reach it are collected once (the pipeline cut before that stage) and the stage's
function runs alone over them at each concurrency. A stage alone much faster than the pipeline
has headroom; the bottleneck's best rate alone is the most the pipeline can gain from it.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from aioloader._run.stages.map import MapSpec
from aioloader.loader import Loader

__all__ = ["load_spec", "profile", "render"]


def load_spec(path: str | Path) -> Loader:
    """The ``loader`` defined by the Python file at ``path``.

    Raises ``FileNotFoundError`` if there is no such file and ``ValueError`` (naming the file)
    if it is not a Python file, fails to run, or defines no ``loader``.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"spec {str(file)!r} does not exist or is not a file")
    spec = importlib.util.spec_from_file_location(f"aioloader_profile_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise ValueError(f"spec {str(file)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any error of the user's file: report it as the spec's
        raise ValueError(
            f"spec {str(file)!r} failed to load: {type(exc).__name__}: {exc}{_where_in(exc, file)}"
        ) from exc
    loader = getattr(module, "loader", None)
    if not isinstance(loader, Loader):
        raise ValueError(f"spec {str(file)!r} must define `loader = al.Loader...`, got {loader!r}")
    return loader


def _where_in(exc: BaseException, file: Path) -> str:
    """`` (line N)``: the innermost line of ``file`` that ``exc`` passed through, if any."""
    target = file.resolve()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve() == target:
            return f" (line {frame.lineno})"
    return ""


def _rate(loader: Loader) -> tuple[float, int, dict[str, Any]]:
    started = time.perf_counter()
    count = 0
    for _ in loader:
        count += 1
    elapsed = max(time.perf_counter() - started, 1e-9)
    return count / elapsed, count, loader.stats()


def profile(loader: Loader, concurrencies: list[int], items: int) -> dict[str, Any]:
    """The pipeline's rate and bottleneck, and each map stage's rate alone per concurrency."""
    whole_rate, _, whole = _rate(loader)
    pipeline = loader.spec
    stages = []
    for index, spec in enumerate(pipeline.stages):
        if not isinstance(spec, MapSpec) or spec.is_async:
            continue
        with Loader(replace(pipeline, stages=pipeline.stages[:index])) as upstream:
            inputs = list(itertools.islice(upstream, items))
        rates = {}
        for concurrency in concurrencies:
            executor = "inline" if concurrency == 1 and spec.executor in ("auto", "inline") else spec.executor
            if executor in ("auto", "inline") and concurrency > 1:
                executor = "thread"
            alone = Loader.from_source(inputs).map(
                spec.fn, executor=executor, concurrency=concurrency, name=spec.name
            )
            with alone:
                rate, _, _ = _rate(alone)
            rates[str(concurrency)] = rate
        stages.append({"name": spec.name, "items": len(inputs), "rate_alone": rates})
    stage_rates = {s["name"]: s["items_out"] / max(whole["elapsed_s"], 1e-9) for s in whole["stages"]}
    return {
        "pipeline_items_per_s": whole_rate,
        "samples_per_s": whole["samples_per_s"],
        "bottleneck": whole["bottleneck"],
        "stages": [{**s, "rate_in_pipeline": stage_rates.get(s["name"], 0.0)} for s in stages],
        "stats": whole,
    }


def render(result: dict[str, Any]) -> str:
    """The profile as a table: items/s alone per concurrency, and headroom over the pipeline."""
    concurrencies = list(result["stages"][0]["rate_alone"]) if result["stages"] else []
    head = f"{'stage':<24}{'in pipeline':>13}" + "".join(f"{'c=' + c:>11}" for c in concurrencies)
    lines = [
        f"pipeline: {result['samples_per_s']:,.0f} samples/s, bottleneck: {result['bottleneck']}",
        "",
        "items/s of each map stage alone (its inputs collected first), by concurrency:",
        head + f"{'headroom':>10}",
        "-" * (len(head) + 10),
    ]
    for stage in result["stages"]:
        best = max(stage["rate_alone"].values(), default=0.0)
        in_pipeline = stage["rate_in_pipeline"]
        headroom = best / in_pipeline if in_pipeline else float("inf")
        cells = "".join(f"{rate:>11,.0f}" for rate in stage["rate_alone"].values())
        lines.append(f"{stage['name'][:23]:<24}{in_pipeline:>13,.0f}{cells}{headroom:>9.1f}x")
    return "\n".join(lines)
