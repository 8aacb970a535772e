"""Process pool for CPU-bound map stages: ``.map(fn, executor="process")``.

The ``"process"`` executor kind is listed with the others in ``aioloader/_run/executors.py``.

- ``executor.py``: the executor a map stage uses; crash redo policy, default pool size, the
  ``worker_init`` spec and the build-time pickling check.
- ``pool.py``: persistent worker processes, the I/O thread, crash and deadline detection, close.
- ``shm.py``: results' arrays and tensors through reused shared-memory segments.
- ``_child.py``: the worker process's main loop.
"""

from aioloader.workers.executor import (
    MAX_ATTEMPTS,
    ProcessExecutor,
    ProcessMapSpec,
    default_worker_memory,
    default_workers,
    process_map_spec,
)
from aioloader.workers.pool import ProcessPool

__all__ = [
    "MAX_ATTEMPTS",
    "ProcessExecutor",
    "ProcessMapSpec",
    "ProcessPool",
    "default_worker_memory",
    "default_workers",
    "process_map_spec",
]
