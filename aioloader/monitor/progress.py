"""What the Loader does per delivered value when asked: a tqdm progress bar and feeding a
:class:`~aioloader.monitor.performance.DataLoaderPerformanceMonitor`.

Both are opt-in (``Loader.options(progress=True, monitor=m)``); without them iteration pays
nothing. The bar appears only on iterations longer than its delay (1 s for ``progress=True``), so
short loops (tests, evaluation) stay quiet; its total is ``len(loader)`` when known.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

__all__ = ["Observer", "check_progress", "make_observer"]

DEFAULT_DELAY_S = 1.0


def check_progress(value: Any) -> float | None:
    """``progress``: True (bar after 1 s), False/None (no bar), or a delay in seconds (>= 0)."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_DELAY_S
    if not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"progress must be True, False or a delay in seconds >= 0, got {value!r}")
    return float(value)


class Observer:
    """Counts each value the consumer receives into a bar and/or a performance monitor."""

    def __init__(self, delay: float | None, monitor: Any, total: int | None, desc: str) -> None:
        self._bar = None
        if delay is not None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="batch", delay=delay, leave=False)
        self._monitor = monitor
        if monitor is not None and not monitor.running:
            monitor.start()

    def hand_out(self, values: Iterator[Any], keys: list[Any]) -> Iterator[Any]:
        """``values`` (a block's, in order) with ``keys``: each counted once it was received."""
        bar, monitor = self._bar, self._monitor
        for value, key in zip(values, keys, strict=False):
            yield value
            if bar is not None:
                bar.update(1)
            if monitor is not None:
                monitor.record_batch(len(key) if isinstance(key, list) else 1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_observer(extras: dict[str, Any], total: int | None, desc: str) -> Observer | None:
    """An :class:`Observer` for the options in ``extras``, or None when nothing is asked."""
    delay = extras.get("progress")
    monitor = extras.get("monitor")
    if delay is None and monitor is None:
        return None
    return Observer(delay, monitor, total, desc)
