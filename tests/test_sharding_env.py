"""Rank and world size from RANK/WORLD_SIZE: a partial or invalid environment is an error, not
silently rank 0 of 1 (every process would then read all the data)."""

from __future__ import annotations

import pytest

import aioloader as al
from aioloader.order.sharding import RankInfo, resolve_rank


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def _set(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


PARTIAL = [
    ({"WORLD_SIZE": "4"}, r"WORLD_SIZE='4' is set but RANK is not"),
    ({"RANK": "1"}, r"RANK='1' is set but WORLD_SIZE is not"),
]
INVALID = [
    ({"RANK": "one", "WORLD_SIZE": "2"}, r"RANK='one' must be an integer"),
    ({"RANK": "0", "WORLD_SIZE": "2.0"}, r"WORLD_SIZE='2.0' must be an integer"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"WORLD_SIZE='0' must be >= 1"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK='-1' must be >= 0"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, r"RANK='4' must be below WORLD_SIZE='4'"),
    ({"WORLD_SIZE": "x"}, r"WORLD_SIZE='x' must be an integer"),
]


@pytest.mark.parametrize(("env", "message"), PARTIAL + INVALID)
def test_bad_environment_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    _set(monkeypatch, env)
    with pytest.raises(ValueError, match=message):
        resolve_rank(None, None)


@pytest.mark.parametrize(("env", "message"), PARTIAL + INVALID)
def test_loader_run_rejects_a_bad_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    _set(monkeypatch, env)
    with pytest.raises(ValueError, match=message):
        list(al.Loader.from_source(range(10)))


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "1"}, {"RANK": "0"}, {}])
def test_harmless_partial_environment_is_rank_0_of_1(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    _set(monkeypatch, env)
    assert resolve_rank(None, None) == RankInfo(0, 1)
    assert list(al.Loader.from_source(range(10))) == list(range(10))


def test_full_environment_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"RANK": "2", "WORLD_SIZE": "4"})
    assert resolve_rank(None, None) == RankInfo(2, 4)
    assert list(al.Loader.from_source(range(10))) == [2, 6]


def test_explicit_values_take_only_what_is_missing_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _set(monkeypatch, {"WORLD_SIZE": "4"})  # RANK unset: fine, rank is given
    assert resolve_rank(1, None) == RankInfo(1, 4)
    assert list(al.Loader.from_source(range(10), rank=1, shard_policy="uneven")) == [1, 5, 9]
    monkeypatch.delenv("WORLD_SIZE")
    _set(monkeypatch, {"RANK": "3"})  # WORLD_SIZE unset: fine, world_size is given
    assert resolve_rank(None, 4) == RankInfo(3, 4)
    assert resolve_rank(1, 2) == RankInfo(1, 2)  # both given: the environment is not read
    _set(monkeypatch, {"RANK": "bad", "WORLD_SIZE": "bad"})
    assert resolve_rank(1, 2) == RankInfo(1, 2)
