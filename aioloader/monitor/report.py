"""``Loader.report()``: the numbers of ``Loader.stats()`` as a readable text table."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]

_COLUMNS = (
    ("stage", "<", 22),
    ("executor", "<", 9),
    ("conc", ">", 5),
    ("in", ">", 9),
    ("out", ">", 9),
    ("rate/s", ">", 10),
    ("busy", ">", 6),
    ("util", ">", 6),
    ("wait in", ">", 9),
    ("wait out", ">", 9),
    ("queue", ">", 11),
    ("errors", ">", 7),
)


def _row(cells: list[str]) -> str:
    return "  ".join(
        f"{cell:{align}{width}}" for cell, (_, align, width) in zip(cells, _COLUMNS, strict=True)
    )


def _stage_cells(stage: dict[str, Any], bottleneck: str | None) -> list[str]:
    name = stage["name"] if len(stage["name"]) <= 20 else stage["name"][:19] + "~"
    if stage["name"] == bottleneck:
        name = "*" + name
    queue = f"{stage['queue_mean']:.1f}/{stage['queue_max']}/{stage['queue_capacity']}"
    return [
        name,
        str(stage["executor"]),
        str(stage.get("concurrency", stage["workers"])),
        f"{stage['items_in']:,}",
        f"{stage['items_out']:,}",
        f"{stage['rate']:,.0f}",
        f"{stage['busy']:.0%}",
        f"{stage['utilization']:.0%}",
        f"{stage['wait_input_s']:.2f}s",
        f"{stage['wait_output_s']:.2f}s",
        queue,
        str(stage["errors"]),
    ]


def render(stats: dict[str, Any]) -> str:
    """A table of ``stats`` (one row per stage, the bottleneck starred) and a summary."""
    first = stats["time_to_first_batch_s"]
    lines = [
        f"{stats['samples']:,} samples, {stats['batches']:,} batches in {stats['elapsed_s']:.2f}s: "
        f"{stats['samples_per_s']:,.0f} samples/s, {stats['batches_per_s']:,.1f} batches/s, "
        f"first batch {'-' if first is None else f'{first * 1000:.1f} ms'}",
    ]
    memory = stats.get("memory") or {}
    if memory:
        cpu = stats.get("cpu_percent")
        lines.append(
            f"memory {memory['rss_mb']:,.0f} MB RSS over {memory['processes']} process(es) "
            f"({memory['percent']:.1f}% of the machine), CPU {0.0 if cpu is None else cpu:.0f}%"
        )
    lines.append("")
    lines.append(_row([name for name, _, _ in _COLUMNS]))
    lines.append("-" * len(lines[-1]))
    for stage in stats["stages"]:
        lines.append(_row(_stage_cells(stage, stats["bottleneck"])))
    for stage in stats["stages"]:
        actors = stage.get("actors")
        if actors:  # a Ray stage (aioloader.ray)
            nodes = {a["node"] for a in actors if a["node"]}
            busy = sum(a["busy_s"] for a in actors)
            replaced = sum(a["replaced"] for a in actors)
            lines.append(
                f"{stage['name']}: {len(actors)} Ray actor(s) on {len(nodes)} node(s), busy {busy:.2f}s"
                + (f", {replaced} replaced" if replaced else "")
            )
    for stage in stats["stages"]:
        if stage.get("reads"):
            lines.append(
                f"{stage['reads']}: runs in the workers of {stage['name']} (counted in its busy time)"
            )
    consumer = stats.get("consumer")
    if consumer is not None:
        note = " (bottleneck)" if stats["bottleneck"] == "consumer" else ""
        lines.append(
            f"consumer: waited {consumer['wait_s']:.2f}s for data, busy {consumer['utilization']:.0%}{note}"
        )
    lines.append(f"bottleneck: {stats['bottleneck']}   (queue: mean/max/capacity in blocks)")
    if stats["error_count"]:
        lines.append(f"errors: {stats['error_count']} skipped")
        for entry in stats["errors"][:5]:
            lines.append(f"  {entry['stage']} key {entry['key']!r}: {entry['type']}: {entry['message']}")
    tuned = stats.get("autotune")
    if tuned:
        lines.append("autotune: " + ", ".join(f"{k}: {v}" for k, v in tuned.items()))
    return "\n".join(lines)
