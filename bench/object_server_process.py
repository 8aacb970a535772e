"""The remote workload's object server in a process of its own.

``tests/object_server.py`` runs its aiohttp server in a thread of the calling process. In a
benchmark that thread would share the measured loader's interpreter lock: every 64 KB piece it
sends waits for the lock that the loader's event loop and decode threads hold, so the link
would be slower for a contender reading in its own process than for one reading in worker
processes. A real object store is another machine; here it is at least another process.

:class:`ServerProcess` serves the files of a folder (read once by the child) with the same
latency, bandwidth and counters, set and read through a pipe.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any


def _serve(folder: str, names: list[str], prefix: str, bytes_per_s: float, conn: Any) -> None:
    from tests.object_server import ObjectServer

    with ObjectServer(bytes_per_s=bytes_per_s) as server:
        for name in names:
            server.objects[prefix + name] = (Path(folder) / name).read_bytes()
        conn.send(server.port)
        while True:
            command, value = conn.recv()
            if command == "stop":
                return
            if command == "latency":
                server.latency_s = value
            elif command == "reset":
                server.bytes_sent = server.max_in_flight = 0
                server.request_s = 0.0
            elif command == "in_flight":  # the most GETs at once, and GET-seconds summed
                conn.send((server.max_in_flight, server.request_s))
                continue
            elif command == "objects":  # more objects, written since the start
                for name in value:
                    server.objects[prefix + name] = (Path(folder) / name).read_bytes()
            conn.send(server.bytes_sent)


class ServerProcess:
    """An :class:`tests.object_server.ObjectServer` over ``names`` in ``folder``, in a child
    process (spawned: it shares nothing with the measured process), each served at ``prefix +
    name`` (``"bucket/"``: path-style S3 URLs of an endpoint). Use as a context manager."""

    def __init__(self, folder: Path, names: list[str], *, bytes_per_s: float, prefix: str = "") -> None:
        self._prefix = prefix
        self._folder = str(folder)
        self._names = list(names)
        self._rate = bytes_per_s
        self._conn: Any = None
        self._process: Any = None
        self.port = 0

    def __enter__(self) -> ServerProcess:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(self._folder, self._names, self._prefix, self._rate, child),
            name="bench-objserver",
            daemon=True,
        )
        self._process.start()
        child.close()
        if not self._conn.poll(60):
            self.__exit__()
            raise RuntimeError("the bench object server did not start within 60 s")
        self.port = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send(("stop", None))
        except OSError:
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def _ask(self, command: str, value: Any = None) -> int:
        self._conn.send((command, value))
        return self._conn.recv()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def add(self, names: list[str]) -> None:
        """Serve more files of the folder (another system's format, written after the start)."""
        self._ask("objects", list(names))

    def in_flight(self) -> tuple[int, float]:
        """Since the last reset of ``bytes_sent``: the most GETs answered at once, and the
        seconds GETs were being answered summed over them (over the wall time: the mean)."""
        return self._ask("in_flight")

    @property
    def latency_s(self) -> float:
        raise AttributeError("latency_s is write-only here")

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self._ask("latency", value)

    @property
    def bytes_sent(self) -> int:
        return self._ask("bytes")

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        if value != 0:
            raise ValueError("bytes_sent can only be reset to 0")
        self._ask("reset")
