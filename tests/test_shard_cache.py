"""The local shard cache: bounded in bytes with LRU eviction, atomic writes, shared safely by
several processes writing and reading at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aioloader.io.cache import ShardCache

SIZE = 20_000


def _payload(i: int) -> bytes:
    return bytes([i % 251]) * SIZE


def _writer(directory: str, budget: int, worker: int) -> int:
    cache = ShardCache(directory, budget)
    bad = 0
    for round_ in range(30):
        i = (round_ * 7 + worker) % 12
        cache.put(f"s3://b/shard-{i}.tar", [_payload(i)[: SIZE // 2], _payload(i)[SIZE // 2 :]])
        j = (round_ + worker) % 12
        fd = cache.open(f"s3://b/shard-{j}.tar")
        if fd is not None:
            with os.fdopen(fd, "rb") as f:
                bad += f.read() != _payload(j)  # a whole shard or nothing, never a partial one
    return bad


def test_lru_eviction_keeps_the_most_recently_used(tmp_path):
    cache = ShardCache(tmp_path, SIZE * 2)
    cache.put("a", [_payload(1)])
    cache.put("b", [_payload(2)])
    os.close(cache.open("a"))  # a is now more recent than b
    os.utime(cache.path("b"), ns=(1, 1))
    cache.put("c", [_payload(3)])
    assert cache.open("b") is None
    for name in ("a", "c"):
        fd = cache.open(name)
        assert fd is not None
        os.close(fd)
    assert cache.used_bytes() <= SIZE * 2
    with pytest.raises(ValueError, match="smaller than shard"):
        cache.put("huge", [b"x" * (SIZE * 3)])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".partial-")]


def test_processes_share_a_cache_without_partial_reads(tmp_path):
    budget = SIZE * 5
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys; from tests.test_shard_cache import _writer; print(_writer(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))"
    env = {**os.environ, "PYTHONPATH": repo}
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(budget), str(w)], stdout=subprocess.PIPE, text=True, env=env, cwd=repo)
        for w in range(3)
    ]
    outputs = [child.communicate(timeout=60)[0].strip() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0]
    assert outputs == ["0", "0", "0"]
    assert ShardCache(tmp_path, budget).used_bytes() <= budget
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".partial-")]
