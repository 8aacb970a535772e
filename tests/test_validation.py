"""Bad arguments fail when the pipeline is built, naming the argument."""

from __future__ import annotations

import pytest

import aioloader as al


@pytest.mark.parametrize(
    ("build", "error", "argument"),
    [
        (lambda: al.Loader.from_source(range(3)).map(42), TypeError, "fn"),
        (lambda: al.Loader.from_source(range(3)).map(str, executor="gpu"), ValueError, "executor"),
        (
            lambda: al.Loader.from_source(range(3)).map(str, executor="thread", concurrency=0),
            ValueError,
            "concurrency",
        ),
        (lambda: al.Loader.from_source(range(3)).map(str, concurrency=2.5), TypeError, "concurrency"),
        (lambda: al.Loader.from_source(range(3)).map(str, on_error="ignore"), ValueError, "on_error"),
        (lambda: al.Loader.from_source(range(3)).map(str, max_failures=-1), ValueError, "max_failures"),
        (lambda: al.Loader.from_source(range(3)).map(str, max_failures=1.5), ValueError, "max_failures"),
        (lambda: al.Loader.from_source(range(3)).map(str, retries=-1), ValueError, "retries"),
        (lambda: al.Loader.from_source(range(3)).map(str, timeout=0), ValueError, "timeout"),
        (
            lambda: al.Loader.from_source(range(3)).map(str, executor="inline", timeout=1),
            ValueError,
            "timeout",
        ),
        (lambda: al.Loader.from_source(range(3)).filter(None), TypeError, "predicate"),
        (lambda: al.Loader.from_source(range(3)).batch(0), ValueError, "size"),
        (lambda: al.Loader.from_source(range(3)).batch("4"), TypeError, "size"),
        (lambda: al.Loader.from_source(range(3)).batch(4, collate=3), TypeError, "collate"),
        (lambda: al.Loader.from_source(range(3)).batch(2, drop_last="no"), TypeError, "drop_last"),
        (lambda: al.Loader.from_source(range(3)).batch(2, drop_last=None), TypeError, "drop_last"),
        (lambda: al.Loader.from_source(range(3)).map(str, ordered=1), TypeError, "ordered"),
        (lambda: al.Loader.from_source(range(3)).prefetch(0), ValueError, "n"),
        (lambda: al.Loader.from_source(42), TypeError, "source"),
        (lambda: al.Loader.from_source("text"), TypeError, "source"),
        (lambda: al.Loader.from_source({"a": 1}), TypeError, "source"),
        (lambda: al.Loader.from_source(iter([1]), shuffle=True), ValueError, "shuffle"),
        (lambda: al.Loader.from_source(range(3), shuffle="yes"), ValueError, "shuffle"),
        (lambda: al.Loader.from_source(range(3), seed="0"), TypeError, "seed"),
        (lambda: al.Loader.from_source(range(3), rank=2, world_size=2), ValueError, "rank"),
        (lambda: al.Loader.from_source(range(3), world_size=0), ValueError, "world_size"),
        (lambda: al.Loader.from_source(range(3), shard_policy="round"), ValueError, "shard_policy"),
        (lambda: al.Loader.from_source(range(3)).options(event_loop="trio"), ValueError, "event_loop"),
        (lambda: al.Loader.from_source(range(3)).options(block_size=0), ValueError, "block_size"),
    ],
)
def test_bad_argument_fails_at_build_time_naming_it(build, error, argument):
    with pytest.raises(error, match=argument):
        build()


def test_async_function_refused_for_thread_executor():
    async def f(x):
        return x

    with pytest.raises(ValueError, match="async"):
        al.Loader.from_source(range(3)).map(f, executor="thread")


def test_fluent_calls_do_not_mutate_the_original():
    base = al.Loader.from_source(range(6))
    doubled = base.map(lambda x: 2 * x)
    with base, doubled:
        assert list(base) == list(range(6))
        assert list(doubled) == [0, 2, 4, 6, 8, 10]


def test_stage_names_are_unique():
    loader = al.Loader.from_source(range(4)).map(str).map(str)
    with loader:
        list(loader)
    assert [s["name"] for s in loader.stats()["stages"]] == ["source", "read", "map(str)", "map(str)#2"]
