"""Map stages on a Ray cluster: ``.map(fn, executor="ray", concurrency=..., ray_options={...})``.

The ``"ray"`` executor kind is listed with the others in ``aioloader/_run/executors.py``, which
imports this package when a stage first uses it. Ray itself is imported only then (and by
``Loader.map``'s checks): ``pip install aioloader[ray]``.

- ``executor.py``: the executor a map stage uses (the process executor's policy on an actor
  pool), the ``ray_options`` spec and its build-time checks, connecting to the cluster.
- ``pool.py``: the stage's actors: start, dispatch, deaths, deadlines, close.
- ``_actor.py``: what an actor runs on the cluster.

See docs/distributed-decoding.md.
"""

from aioloader.ray.executor import INSTALL_HINT, RayExecutor, RayMapSpec, ray_map_spec

__all__ = ["INSTALL_HINT", "RayExecutor", "RayMapSpec", "ray_map_spec"]
