"""executor="auto" re-decided at an epoch's end from the rates it measured
(:mod:`aioloader._run.placement_review`): functions whose cost changes after the probe's block,
keyed on the sample, so the change itself is deterministic."""

from __future__ import annotations

import numpy as np

import aioloader as al
from aioloader._run.placement_review import MIN_CHUNKS, EpochRates, review

_PROBED = 64  # the block the probe measures (block_size below)


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def costly_when_probed(x: int) -> int:
    """~0.5 ms of pure Python for the probe's keys (it times several: a loaded machine's
    misread of one does not decide), next to nothing for the rest."""
    if x < _PROBED:
        _spin(15_000)
    return x * 3


def cheap_when_probed(x: int) -> int:
    """Next to nothing for the probe's keys, ~0.1 ms of pure Python for the rest."""
    if x >= _PROBED:
        _spin(3_000)
    return x * 3


def _stage(loader: al.Loader, name: str) -> dict:
    return next(s for s in loader.stats()["stages"] if s["name"] == name)


def _never_run(values: list) -> None:
    raise AssertionError("the review must not run the function here")


def _rates(items: int, chunks: int, waited_s: float, fn_s: float, units: int | None = None) -> EpochRates:
    units = items if units is None else units
    return EpochRates(items=items, units=units, chunks=chunks, waited_s=waited_s, fn_s=fn_s, started=True)


def test_review_rule_moves_a_pool_slower_than_inline_and_keeps_one_that_pays() -> None:
    options = {"work": _never_run, "trial": True, "can_process": True, "picklable": lambda: True, "epoch": 0}
    # 1000 items of 20 us each: 20 ms inline; the pool delivered them in 30 ms (0.67x inline)
    moved = review("process", _rates(1000, 20, 0.030, 0.020), left=set(), **options)
    assert moved is not None
    kind, why = moved
    assert kind == "inline"
    assert why["from"] == "process" and why["to"] == "inline"
    assert why["measured_per_s"] < why["inline_per_s"]
    # in 11 ms (1.8x inline) it pays; too few results, or a kind already left: no judgement
    assert review("process", _rates(1000, 20, 0.011, 0.020), left=set(), **options) is None
    # 300 us an item would hold the loop that long at each item: the pool stays
    assert review("process", _rates(100, 20, 0.060, 0.030), left=set(), **options) is None
    # a fused stage: 64 samples of 30 us a batch (~2 ms), judged per sample: it moves
    fused = review("process", _rates(6400, 20, 0.250, 0.192, units=100), left=set(), **options)
    assert fused is not None and fused[0] == "inline" and fused[1]["cost_us"] == 30.0
    assert review("process", _rates(1000, MIN_CHUNKS - 1, 0.030, 0.020), left=set(), **options) is None
    assert review("process", _rates(1000, 20, 0.030, 0.020), left={"inline"}, **options) is None
    # inline and still cheap: nothing to run again
    assert review("inline", _rates(1000, 20, 0.0, 0.002), left=set(), **options) is None


def test_a_pool_chosen_on_costly_probed_samples_goes_inline_when_the_rest_are_cheap() -> None:
    data = list(range(6000))  # chunks grow as the measured cost falls: enough of them to judge
    expected = [x * 3 for x in data]
    name = "map(costly_when_probed)"
    with al.Loader.from_source(data).map(costly_when_probed).options(block_size=_PROBED) as loader:
        assert list(loader) == expected
        first = _stage(loader, name)
        assert first["executor"] == "process", first["placement"]
        review_of_first = first["placement"]["review"]
        assert review_of_first["from"] == "process" and review_of_first["to"] == "inline"
        assert review_of_first["measured_per_s"] < 1.1 * review_of_first["inline_per_s"]
        assert list(loader) == expected  # placement never changes the data
        second = _stage(loader, name)
        assert second["executor"] == "inline"
        assert second["placement"]["review"] == review_of_first  # stats show why
        assert list(loader) == expected
        assert _stage(loader, name)["executor"] == "inline"  # not moved back


def test_an_inline_stage_whose_samples_turn_costly_is_placed_again() -> None:
    data = list(range(3000))  # 0.3 s inline an epoch: processes pay for their start
    expected = [x * 3 for x in data]
    name = "map(cheap_when_probed)"
    with al.Loader.from_source(data).map(cheap_when_probed).options(block_size=_PROBED) as loader:
        assert list(loader) == expected
        first = _stage(loader, name)
        assert first["executor"] == "inline", first["placement"]
        why = first["placement"]["review"]
        assert why["from"] == "inline" and why["to"] == "process", why  # a GIL holder that pays
        assert why["cost_us"] > 20
        assert list(loader) == expected
        assert _stage(loader, name)["executor"] == "process"
        assert list(loader) == expected
        assert _stage(loader, name)["executor"] == "process"  # not moved back


def test_an_inline_review_runs_the_thread_trial_once_a_stage() -> None:
    runs: list[int] = []
    ran: list[bool] = []

    def work(values: list) -> None:  # a GIL holder
        runs.append(len(values))
        for _ in values:
            _spin(300)

    def tried() -> bool:
        ran.append(True)
        return len(ran) > 1

    options = {"work": work, "trial": True, "can_process": False, "picklable": lambda: False, "left": set()}
    rates = _rates(1000, 20, 0.0, 0.050)  # 50 us an item on the loop, cheap when probed
    rates.last_inputs = [1, 2, 3]
    # not picklable and under THREAD_ABOVE_S: inline is right, kept
    assert review("inline", rates, epoch=0, tried=tried, **options) is None
    assert runs  # the trial ran the work
    runs.clear()
    assert review("inline", rates, epoch=1, tried=tried, **options) is None
    assert not runs  # and not again


def test_an_inline_review_takes_a_block_of_array_rows() -> None:
    rates = _rates(1000, 20, 0.0, 0.001)
    rates.last_inputs = np.zeros((4, 3))  # a block of rows is an array: no truth value
    options = {"work": _never_run, "trial": True, "can_process": True, "picklable": lambda: True, "left": set()}
    assert review("inline", rates, epoch=0, **options) is None
