"""Workloads: each module exposes ``run(quick: bool) -> str`` returning a markdown section."""
