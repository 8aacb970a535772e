"""The ``executor="ray"`` kind of a map stage: chunks run on a pool of Ray actors.

It is the process executor (:class:`aioloader.workers.executor.ProcessExecutor`) on another pool:
the same chunking, the same crash policy (a chunk whose actor died is redone item by item on a
replacement, each item at most :data:`~aioloader.workers.executor.MAX_ATTEMPTS` times; a fused
batch first whole, with its seed), the same timeouts (the actor is killed, the stage's
``timeout``/``retries`` apply) and the same handling of values that do not pickle. Only the pool
differs: :class:`aioloader.ray.pool.ActorPool`, a Loader resource kept across epochs until
``loader.close()``.

Chunks aim at :data:`TARGET_TASK_S` (500 ms), longer than a process's 10 ms: each actor call
costs the driver 0.5-5 ms of CPU, nearly whatever it carries (submitting it, pulling its result
into the driver node's object store, reading it back), so a chunk must carry many samples for
that share to stay small. Not larger than the driver node's object store holds: an actor holds
two chunks and the reorder window twice the chunks in flight, so up to
:data:`CHUNKS_WAITING_PER_ACTOR` chunks' results per actor may wait there for the trainer, and
past the store Ray spills them and each call costs the driver more. Once the actors have
answered, a chunk's target is cut to what fills its share of the store at the rate they make
result bytes (docs/distributed-decoding.md, section 5: 200 ms, 500 ms and 1 s chunks measured).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioloader._run.stages.map import MapSpec
from aioloader._spec import check_callable, fn_name
from aioloader.workers.executor import START_TIMEOUT_S, ProcessExecutor, check_memory_limit

TARGET_TASK_S = 0.500
MIN_TASK_S = 0.050  # the byte cap never makes chunks shorter than this
CHUNKS_WAITING_PER_ACTOR = 4  # results that may sit in the driver node's store, per actor
QUEUED_PER_ACTOR = 1  # chunks waiting at an actor behind the one it runs
DEFAULT_OPTIONS: dict[str, Any] = {"num_cpus": 1}
_REFUSED_OPTIONS = {
    "lifetime": "actors are owned by the driver, so a trainer that dies leaves none behind",
    "name": "the pool names its actors",
    "namespace": "the pool names its actors",
    "max_restarts": "the pool replaces a dead actor itself (and redoes its chunk)",
    "max_task_retries": "the pool redoes a dead actor's chunk itself",
}

INSTALL_HINT = "executor='ray' needs Ray: pip install aioloader[ray]"


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to get it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray


@dataclass(frozen=True, slots=True)
class RayMapSpec(MapSpec):
    """A map spec for ``executor="ray"``: ``worker_init(worker_id)`` per actor, and the actors'
    Ray options (``num_cpus``, ``resources``, ``scheduling_strategy``, ``runtime_env``...)."""

    worker_init: Callable[[int], None] | None = None
    ray_options: tuple[tuple[str, Any], ...] = ()
    max_worker_memory: int | str | None = "auto"

    @property
    def actor_options(self) -> dict[str, Any]:
        return {**DEFAULT_OPTIONS, **dict(self.ray_options)}

    @property
    def memory_limit(self) -> int | None:
        """Bytes of resident memory past which an actor is replaced: ``max_worker_memory``;
        "auto" is the memory Ray reserved for each actor (``ray_options={"memory": ...}``), or
        none (Ray's own memory monitor then guards the nodes)."""
        if self.max_worker_memory == "auto":
            reserved = dict(self.ray_options).get("memory")
            return int(reserved) if reserved else None
        return self.max_worker_memory  # type: ignore[return-value]


def ray_map_spec(
    spec: MapSpec,
    worker_init: Callable[[int], None] | None,
    ray_options: dict[str, Any] | None,
    *,
    max_worker_memory: int | str | None = "auto",
) -> RayMapSpec:
    """Check at build time what the actors need: Ray, serialisable ``fn`` and ``worker_init``,
    actor options Ray accepts (checked without connecting to a cluster), and the memory limit."""
    ray = require_ray()
    from ray import cloudpickle

    if ray_options is None:
        ray_options = {}
    if not isinstance(ray_options, dict) or not all(isinstance(k, str) for k in ray_options):
        raise TypeError(f"ray_options must be a dict of Ray actor options, got {ray_options!r}")
    for key, why in _REFUSED_OPTIONS.items():
        if key in ray_options:
            raise ValueError(f"ray_options: {key!r} cannot be set ({why})")
    check_memory_limit(max_worker_memory)
    if worker_init is not None:
        check_callable(worker_init, "worker_init")
    for argument, obj in (("fn", spec.fn), ("worker_init", worker_init)):
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            raise TypeError(
                f"{argument} {fn_name(obj)!r} cannot be sent to Ray actors: it cannot be pickled "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    from aioloader.ray._actor import MapActor

    options = {**DEFAULT_OPTIONS, **ray_options}
    try:
        ray.remote(MapActor).options(**options)
    except Exception as exc:
        raise ValueError(f"ray_options: {exc}") from exc
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(MapSpec)}
    return RayMapSpec(
        **fields,
        worker_init=worker_init,
        ray_options=tuple(sorted(ray_options.items())),
        max_worker_memory=max_worker_memory,
    )


def connect() -> Any:
    """Ray, connected: to the cluster the user connected to (``ray.init(address=...)``), else
    as ``ray.init()`` does (``RAY_ADDRESS``, or a local cluster), as Ray Data does."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init()
    return ray


def default_actors(options: dict[str, Any]) -> int:
    """One actor per ``num_cpus`` of the cluster's CPUs (at least 1)."""
    ray = connect()
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per_actor = options.get("num_cpus") or 1
    return max(1, int(cpus // per_actor))


def driver_store_bytes() -> float | None:
    """The object store of the node this process runs on (bytes), or None if Ray does not say."""
    ray = connect()
    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return node.get("Resources", {}).get("object_store_memory")
    return None


def chunk_seconds(store_bytes: float | None, actors: int, bytes_per_s: float | None) -> float:
    """A chunk's target: :data:`TARGET_TASK_S`, cut so that :data:`CHUNKS_WAITING_PER_ACTOR`
    results of every actor fit in the driver node's object store, at least :data:`MIN_TASK_S`."""
    if not store_bytes or not bytes_per_s:
        return TARGET_TASK_S
    fits = store_bytes / (CHUNKS_WAITING_PER_ACTOR * actors) / bytes_per_s
    return max(MIN_TASK_S, min(TARGET_TASK_S, fits))


class RayExecutor(ProcessExecutor):
    """Submits a run's chunks to the stage's actor pool; the pool outlives the run."""

    kind = "ray"
    coalesce = True
    runner = "a Ray actor"
    pool_key = "ray-pool"  # a fused shard stream's pool is another (its work is a shard)

    def __init__(self, spec: MapSpec, runtime: Any) -> None:
        self._spec = spec
        self._runtime = runtime
        self._options = getattr(spec, "actor_options", dict(DEFAULT_OPTIONS))
        connect()
        self.workers = spec.concurrency or default_actors(self._options)
        # under a timeout an actor holds one chunk, so its deadline counts from its start
        self._per_actor = 1 if spec.timeout is not None else 1 + QUEUED_PER_ACTOR
        self.in_flight = self.workers * self._per_actor
        self.tasks_per_worker = self._per_actor  # what a fused shard stream keeps at each actor
        self._pool: Any = None
        self._store_bytes = driver_store_bytes()
        # the pool an earlier run (epoch) of this stage left open: the cost of an item it timed
        kept = None if runtime is None else runtime.resources.get(self._pool_key)
        self._earlier_cost = getattr(kept, "cost_per_item", None)
        self._earlier_bytes_per_s = getattr(kept, "bytes_per_s", None)

    @property
    def _pool_key(self) -> str:
        return f"{self.pool_key}:{self._spec.name}:{self._per_actor}"

    @property
    def cost_per_item(self) -> float | None:
        """An item's cost in the actors as earlier epochs timed it (None in the first): the
        map stage sizes a run's chunks by it until it has timed one of its own, so an epoch
        after the first sends one single-block chunk (its first batch), not one per actor
        call in flight: each call costs the driver milliseconds of Ray's CPU."""
        return self._earlier_cost

    @property
    def target_task_s(self) -> float:
        """How long a chunk should run (read by the map stage for each chunk it forms)."""
        rate = self._earlier_bytes_per_s if self._pool is None else self._pool.bytes_per_s
        return chunk_seconds(self._store_bytes, self.workers, rate)

    def _pool_for(self, work: Callable[[list[Any]], Any]) -> Any:
        if self._pool is None:
            from aioloader.ray.pool import ActorPool

            def start() -> ActorPool:
                timeout = self._spec.timeout
                return ActorPool(
                    work,
                    actors=self.workers,
                    worker_init=getattr(self._spec, "worker_init", None),
                    name=self._spec.name,
                    options=self._options,
                    per_actor=self._per_actor,
                    start_timeout=None if timeout is None else max(START_TIMEOUT_S, timeout),
                    stall_after=self._spec.stall_after,
                    on_stall=self._spec.on_stall,
                    max_memory=getattr(self._spec, "memory_limit", None),
                )

            if self._runtime is None:
                self._pool = start()
            else:
                self._pool = self._runtime.resource(self._pool_key, start, usable=lambda pool: pool.broken is None)
        return self._pool

    def describe(self) -> list[dict[str, Any]]:
        """The stage's actors (see :meth:`aioloader.ray.pool.ActorPool.describe`)."""
        return [] if self._pool is None else self._pool.describe()


def make_ray_executor(spec: MapSpec, runtime: Any) -> RayExecutor:
    """The factory registered for ``executor="ray"``: ``factory(spec, runtime)``."""
    return RayExecutor(spec, runtime)
