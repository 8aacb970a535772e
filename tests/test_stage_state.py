"""One save/load property, applied to every stage that holds state (as torchdata applies one to
every node): take k outputs, ``state_dict()``, load it into a fresh twin, and the twin's outputs
are exactly the rest of an uninterrupted run. A stage that cannot be resumed exactly (it holds
items across outputs) refuses ``state_dict()`` with ``ValueError`` instead, and declares why.

A stage's state is what it declares with ``Stage.state_dict``/``load_state_dict``
(:mod:`aioloader._run.stages.base`): the default, a failure budget carried over, or its own (the
shuffle buffer); every stage kind that declares its own is tried here."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aioloader as al
import aioloader._run.stages as stage_modules
from aioloader._run.stages.base import Stage


def _plain(value: Any) -> Any:
    """A comparable form of an output: tensors as nested lists, containers recursed."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _docs(n: int) -> list[dict[str, list[int]]]:
    return [{"input_ids": list(range(i, i + 1 + i % 5))} for i in range(n)]


def _seqs(n: int) -> list[list[int]]:
    return [list(range(1 + (i * 7) % 6)) for i in range(n)]


def _fails_every_7th(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad sample {x}")
    return x


def _stream(n: int) -> Any:
    class Stream:  # re-iterable, no length: a stream source
        def __iter__(self):
            return iter(range(n))

    return Stream()


# name -> (loader factory over n items, whether a record_step_time call follows each output)
PIPELINES: dict[str, tuple[Callable[[int], al.Loader], bool]] = {
    "order": (lambda n: al.Loader.from_source(list(range(n)), shuffle=True, seed=3).batch(3), False),
    "stream_source": (lambda n: al.Loader.from_source(_stream(n)).map(str).batch(2), False),
    "shuffle": (lambda n: al.Loader.from_source(list(range(n))).shuffle(5, seed=1), False),
    "stream_shuffle": (lambda n: al.Loader.from_source(_stream(n)).shuffle(4, seed=2).batch(2), False),
    "batch_by_tokens": (lambda n: al.Loader.from_source(_seqs(n)).batch_by_tokens(8), False),
    "adaptive_batch": (
        lambda n: al.Loader.from_source(list(range(n))).adaptive_batch(2, target_step_s=0.01, lag=1),
        True,
    ),
    "pack": (lambda n: al.Loader.from_source(_docs(n)).pack(6, batch_size=2), False),
    "bucket": (lambda n: al.Loader.from_source(_seqs(n)).bucket([3, 7], batch_size=2), False),
    # the default state: a failure budget that carries over a resume
    "map_skip": (
        lambda n: (
            al.Loader.from_source(list(range(n)))
            .map(_fails_every_7th, executor="inline", on_error="skip", max_failures=20)
            .batch(2)
        ),
        False,
    ),
}

# each Stage class that declares a state of its own -> the pipeline above that saves and loads it
# ("Stage": the default, a failure budget)
OWN_STATE = {"Stage": "map_skip", "ShuffleStage": "shuffle"}


def _stage_classes() -> set[type[Stage]]:
    for module in pkgutil.iter_modules(stage_modules.__path__):
        importlib.import_module(f"{stage_modules.__name__}.{module.name}")
    found, todo = {Stage}, [Stage]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_stage_that_declares_state_is_saved_and_loaded_here():
    declaring = {
        cls.__name__
        for cls in _stage_classes()
        if "state_dict" in vars(cls) or "load_state_dict" in vars(cls)
    }
    assert declaring == set(OWN_STATE)
    assert set(OWN_STATE.values()) <= set(PIPELINES)


def _outputs(
    loader: al.Loader, steps: bool, k: int | None = None, *, done: int = 0
) -> tuple[list[Any], dict | None]:
    """The first ``k`` outputs (all when None) and the state after them (None: refused).

    ``done`` outputs came before (a resumed run): step times are a function of the output's
    place in the whole run, so a resumed adaptive batch sees the times the whole run saw."""
    out: list[Any] = []
    it = iter(loader)
    for value in it if k != 0 else ():
        out.append(_plain(value))
        if steps:
            loader.record_step_time(0.001 if (done + len(out)) % 3 else 0.05)
        if k is not None and len(out) == k:
            break
    try:
        state = json.loads(json.dumps(loader.state_dict()))
    except ValueError:
        state = None
    it.close()
    return out, state


def _shard_pipeline(folder: Any) -> Callable[[int], al.Loader]:
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    return lambda n: al.Loader.from_source(al.sources.WebDataset(urls), shuffle=True, seed=4).map(
        lambda s: int(s["cls"])
    )


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage_state_shards")
    samples = [{"__key__": f"k{i:03d}", "cls": i} for i in range(24)]
    al.sources.write_shards(samples, str(folder / "part-%04d.tar"), max_count=5)
    return folder


@pytest.mark.parametrize("name", [*PIPELINES, "shard_source"])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_save_load_resumes_the_rest_or_refuses(name, shard_folder, data):
    if name == "shard_source":
        make, steps, n = _shard_pipeline(shard_folder), False, 24
    else:
        (make, steps), n = PIPELINES[name], data.draw(st.integers(6, 30), label="n")
    with make(n) as loader:
        whole, _ = _outputs(loader, steps)
    k = data.draw(st.integers(0, len(whole) - 1), label="k")  # (after the last: the next epoch)
    with make(n) as first:
        head, state = _outputs(first, steps, k)
    assert head == whole[:k]
    if state is None:  # refused: the spec says why, and only such a spec may refuse
        with make(n) as again:
            assert any(s.resume_problem("state_dict") for s in again.spec.stages), name
        return
    with make(n) as twin:
        twin.load_state_dict(state)
        rest, _ = _outputs(twin, steps, done=k)
    assert rest == whole[k:], name
