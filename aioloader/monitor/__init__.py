"""Observability: per-stage counters, queue occupancy, and the bottleneck they point to."""

from aioloader.monitor.stats import ErrorLog, StageStats, pipeline_stats

__all__ = ["StageStats", "ErrorLog", "pipeline_stats"]
