"""A loader server killed mid-epoch (``aioloader serve`` in a subprocess, SIGKILL): the client
gets ``ConnectionError`` instead of hanging, and resumes exactly where it stopped against a
restarted server."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aioloader as al

ROOT = Path(__file__).resolve().parents[1]
TOKEN = secrets.token_hex(16)


def sample(i: int) -> dict:
    return {"x": torch.arange(16, dtype=torch.int64) + i, "key": i}


def spec() -> al.Loader:
    return al.Loader.from_source(list(range(200)), shuffle=True, seed=11).map(sample).shuffle(16).batch(6)


class ServerProcess:
    def __init__(self, tmp_path: Path) -> None:
        spec_file = tmp_path / "restart_spec.py"
        spec_file.write_text("from tests.test_service_restart import spec as loader\n")
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        self.log = (tmp_path / "server.log").open("a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aioloader",
                "serve",
                str(spec_file),
                "--port",
                "0",
                "--token-file",
                str(token_file),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline()
        match = re.search(r"on (\S+):(\d+)$", line.strip())
        if match is None:
            self.kill()
            raise AssertionError(f"the server did not start: {line!r}; see {tmp_path / 'server.log'}")
        self.address = (match.group(1), int(match.group(2)))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@pytest.mark.slow
def test_killed_server_then_restarted_resumes_exactly(tmp_path):
    with spec() as reference:
        expected = [b["key"].tolist() for b in reference]
    server = ServerProcess(tmp_path)
    received = []
    try:
        with al.connect(server.address, token=TOKEN, credits=2) as client:
            assert len(client) == len(expected)
            with pytest.raises(ConnectionError):
                for batch in client:
                    received.append(batch["key"].tolist())
                    if len(received) == 5:
                        server.kill()  # mid-epoch: the client has at most 2 more batches buffered
            state = client.state_dict()
        assert 5 <= len(received) <= 7
    finally:
        server.kill()
    server = ServerProcess(tmp_path)
    try:
        with al.connect(server.address, token=TOKEN) as client:
            client.load_state_dict(state)
            rest = [b["key"].tolist() for b in client]
    finally:
        server.kill()
    assert received + rest == expected
