"""Map stages on a Ray cluster: ``.map(fn, executor="ray", concurrency=..., ray_options={...})``.

Importing this package registers the ``"ray"`` executor kind (``Loader.map`` imports it for
``executor="ray"``). Ray itself is imported only when a stage uses it: ``pip install aioloader[ray]``.

- ``executor.py``: the executor a map stage uses (the process executor's policy on an actor
  pool), the ``ray_options`` spec and its build-time checks, connecting to the cluster.
- ``pool.py``: the stage's actors: start, dispatch, deaths, deadlines, close.
- ``_actor.py``: what an actor runs on the cluster.

See docs/distributed-decoding.md.
"""

from aioloader._run.executors import register_executor
from aioloader.ray.executor import INSTALL_HINT, RayExecutor, RayMapSpec, make_ray_executor, ray_map_spec

register_executor("ray", make_ray_executor)

__all__ = ["INSTALL_HINT", "RayExecutor", "RayMapSpec", "ray_map_spec"]
