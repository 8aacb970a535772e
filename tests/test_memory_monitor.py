"""MemoryMonitor: psutil numbers, the budget check, argument errors."""

from __future__ import annotations

import psutil
import pytest

import aioloader as al


def test_stats_report_system_memory() -> None:
    monitor = al.MemoryMonitor(max_memory_usage=0.5)
    monitor.start_monitoring()
    stats = monitor.update()
    assert {"used_gb", "available_gb", "percent"} <= stats.keys()
    total = psutil.virtual_memory().total / 2**30
    assert 0 < stats["used_gb"] <= total and 0 < stats["available_gb"] <= total
    assert 0 <= stats["percent"] <= 100
    assert stats["peak_used_gb"] >= stats["used_gb"] - 1e-9
    assert monitor.get_memory_stats()["used_gb"] == stats["used_gb"]
    blob = bytearray(64 << 20)
    after = monitor.update()
    assert after["peak_process_gb"] >= stats["process_gb"]
    del blob


def test_memory_constraint() -> None:
    monitor = al.MemoryMonitor(max_memory_usage=0.5)
    available = psutil.virtual_memory().available
    assert monitor.check_memory_constraint(0)
    assert monitor.check_memory_constraint(1 << 20)
    assert not monitor.check_memory_constraint(available)
    assert not monitor.check_memory_constraint(10 * psutil.virtual_memory().total)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_memory_usage"):
        al.MemoryMonitor(max_memory_usage=1.5)
    with pytest.raises(ValueError, match="max_memory_usage"):
        al.MemoryMonitor(max_memory_usage=0)
    with pytest.raises(TypeError, match="max_memory_usage"):
        al.MemoryMonitor(max_memory_usage="half")
    with pytest.raises(ValueError, match="nbytes"):
        al.MemoryMonitor().check_memory_constraint(-1)
    with pytest.raises(TypeError, match="nbytes"):
        al.MemoryMonitor().check_memory_constraint(1.5)
