"""Observability and tuning: per-stage counters and the bottleneck (``stats``), the run's time
series (``timeline``), memory and CPU of the loader's processes (``resources``, ``memory``),
``Loader.report()`` (``report``), progress bars and the performance monitor (``progress``,
``performance``), executor placement and concurrency tuning (``autotune``), and what drives them
during a run (``observe``)."""

from aioloader.monitor.performance import DataLoaderPerformanceMonitor
from aioloader.monitor.stats import ErrorLog, StageStats, bottleneck, pipeline_stats

__all__ = ["DataLoaderPerformanceMonitor", "ErrorLog", "StageStats", "bottleneck", "pipeline_stats"]
