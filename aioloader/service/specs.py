"""Loaders derived from a user's spec for the service: one per rank, twins to check states, and
specs pickled for a child process (a spec file is loaded by :mod:`aioloader.service.spec_file`).
These helpers read the public ``Loader.spec`` and build twins with ``type(loader)``, so this
module does not import :mod:`aioloader.loader` (which imports the service for ``in_subprocess``).

A spec travels to another process in one of two ways:

- pickled (``Loader.in_subprocess()``): the pipeline is pickled in the parent, so functions and
  sources must be picklable by reference (defined at module level, importable in a fresh
  interpreter; the child sees the parent's ``sys.path`` and main module as with
  multiprocessing's spawn). Checked at once, with a ``TypeError`` saying what failed;
- as a file (``aioloader serve SPEC.py``): the file is imported as a module named after it,
  from its own directory (which joins ``sys.path`` so process-pool workers import it too), and
  its attribute (``loader`` by default) is a Loader or a function returning one.

The remote side's view of resume states is here too: :func:`state_or_mark` is the state sent
with each batch (a :func:`~aioloader.service.cursor.mark` where the pipeline has none),
:func:`start_run` positions a loader at a state or, for a mark, at the start of its epoch.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aioloader._run.stages.device import DeviceSpec
from aioloader.order.sharding import resolve_rank
from aioloader.service.cursor import UNRESUMABLE, is_mark, mark

if TYPE_CHECKING:
    from aioloader.loader import Loader


def check_host_only(loader: Loader, where: str) -> None:
    """``ValueError`` when ``loader`` ends on an accelerator (``.to_device("cuda")``): its
    batches would be made on a device of another process (or machine) than the trainer's."""
    for stage in loader.spec.stages:
        if isinstance(stage, DeviceSpec) and stage.device_type != "cpu":
            raise ValueError(
                f"{where}: the spec moves batches to {stage.device_type!r} (stage {stage.name!r}), "
                "which would happen in another process than the trainer's; drop .to_device() from "
                "the spec and move each batch in the training loop"
            )


def rank_loader(loader: Loader, rank: int, world_size: int) -> Loader:
    """``loader``'s spec for ``rank`` of ``world_size`` (its own rank settings overridden)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    pipeline = loader.spec
    source_spec = replace(pipeline.source_spec, rank=rank, world_size=world_size)
    return type(loader)(replace(pipeline, source_spec=source_spec))


def pinned_rank(loader: Loader) -> Loader:
    """``loader`` with its rank resolved here (torch.distributed, environment), so a child
    process that has no process group still shards as this process would."""
    spec = loader.spec.source_spec
    info = resolve_rank(spec.rank, spec.world_size)
    return rank_loader(loader, info.rank, info.world_size)


def validated_state(loader: Loader, state: Any) -> dict[str, Any]:
    """``state`` (a state, or every rank's states for an elastic resume) loaded into a twin of
    ``loader``, and that twin's ``state_dict()``: what a run of ``loader`` resumes from.
    ``ValueError``/``TypeError`` when it does not fit the spec, or the spec cannot be resumed."""
    if not isinstance(state, (dict, list)):
        raise TypeError(
            f"state must be a dict from state_dict() or a list of them, got {type(state).__name__}"
        )
    if isinstance(state, dict) and is_mark(state):
        raise ValueError(
            "load_state_dict: the state marks a place where the loader could not be resumed "
            f"exactly ({state[UNRESUMABLE]})"
        )
    with type(loader)(loader.spec) as twin:
        try:
            twin.load_state_dict(state)
        except ValueError:
            raise
        except Exception as exc:  # a malformed state (it may come from the network): say so
            raise ValueError(f"state is not a valid loader state: {type(exc).__name__}: {exc}") from None
        try:
            return twin.state_dict()
        except ValueError as exc:  # the state fits, but this spec cannot resume from one
            raise ValueError(f"load_state_dict: this loader cannot resume from a state: {exc}") from None


def fresh_state(loader: Loader) -> dict[str, Any]:
    """The state (or mark) of a run of ``loader`` that has not started (epoch 0, position 0)."""
    with type(loader)(loader.spec) as twin:
        return state_or_mark(twin, twin.epoch)


def state_or_mark(loader: Loader, epoch: int) -> dict[str, Any]:
    """``loader.state_dict()``, or where the pipeline cannot be resumed exactly there (it
    raises ``ValueError``: a bucket, an unordered map, batches shuffled mid-epoch), a mark of
    ``epoch`` (the epoch the consumer is in) holding the reason."""
    try:
        return loader.state_dict()
    except ValueError as exc:
        return mark(epoch, str(exc))


def start_run(loader: Loader, state: dict[str, Any]) -> None:
    """Make ``loader``'s next iteration start at ``state``: resume it, or for a mark, run the
    mark's epoch from its start. ``ValueError`` for a state that does not fit."""
    if is_mark(state):
        loader.set_epoch(state["epoch"])
    else:
        loader.load_state_dict(state)


def length_or_none(loader: Loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def pickled_spec(loader: Loader) -> bytes:
    """The pipeline of ``loader``, pickled for a child process; ``TypeError`` when it cannot be."""
    try:
        return pickle.dumps(loader.spec, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            "in_subprocess() sends the loader's spec to a fresh interpreter by pickling it, and "
            f"this spec cannot be pickled ({type(exc).__name__}: {exc}). Define its functions, "
            "sources and collate functions at module level (not lambdas or local functions), "
            "or serve it from a spec file: `aioloader serve SPEC.py`"
        ) from exc
