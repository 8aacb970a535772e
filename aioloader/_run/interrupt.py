"""Whether Ctrl-C has reached an ``asyncio.run()`` of this process.

``asyncio.run`` (an ``asyncio.Runner``) takes SIGINT itself: it cancels its main task, and
raises ``KeyboardInterrupt`` only once that task has ended. An async consumer therefore sees a
cancellation, like any other, and its clean-up must not wait for calls blocked in threads
(which cannot be stopped) or the process outlives the 2 s of guarantee 6.
"""

from __future__ import annotations

import asyncio
import signal


def interrupted() -> bool:
    """True once the ``asyncio.Runner`` whose SIGINT handler is installed has received Ctrl-C."""
    handler = signal.getsignal(signal.SIGINT)
    # the Runner installs functools.partial(runner._on_sigint, main_task=...) and counts the
    # interrupts in _interrupt_count (Python 3.11-3.13)
    runner = getattr(getattr(handler, "func", None), "__self__", None)
    return isinstance(runner, asyncio.Runner) and getattr(runner, "_interrupt_count", 0) > 0
