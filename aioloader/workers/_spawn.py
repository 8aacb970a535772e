"""Starting a child interpreter with three pipes: commands in, results out, and a lifeline
whose end of file tells the child its parent is gone. Used by the worker pool and by
``Loader.in_subprocess``; a fresh interpreter (spawn semantics) never inherits threads."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from multiprocessing.connection import Connection
from multiprocessing.spawn import get_preparation_data
from pathlib import Path
from typing import Any

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# Pipes this large let the parent queue a task ahead and a child send a result without waiting
# for the other side (Linux allows unprivileged pipes up to /proc/sys/fs/pipe-max-size, 1 MiB by
# default); where that is refused, a pipe keeps its default 64 KiB.
PIPE_BYTES = 1 << 20


def preparation_data(name: str) -> dict[str, Any]:
    """What a child needs to see this process's ``sys.path``, cwd and ``__main__`` (the data of
    ``multiprocessing``'s spawn). A ``__main__`` read from stdin names the file ``<stdin>``,
    which the child cannot run: it is left out (its functions are refused for workers at build
    time, see ``aioloader._spec``), where every child died importing it (exit code 0)."""
    data = get_preparation_data(name)
    data.pop("authkey", None)  # not picklable, and the children make no connections
    main_path = data.get("init_main_from_path")
    if main_path is not None and not os.path.isfile(main_path):
        del data["init_main_from_path"]
    return data


def pipe_capacity(fd: int) -> int:
    """The pipe's buffer size in bytes (64 KiB where it cannot be asked)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return 1 << 16


def _enlarge(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):  # over the user's pipe budget, or not Linux
        pass


def spawn_child(
    module: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Connection, Connection, int]:
    """Run ``module.main(command_fd, result_fd, lifeline_fd)`` in a fresh interpreter, with
    ``env`` over this process's environment; return the process, the command and result
    connections, and the lifeline's write end."""
    command_r, command_w = os.pipe()
    result_r, result_w = os.pipe()
    life_r, life_w = os.pipe()
    _enlarge(command_w)
    _enlarge(result_w)
    code = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from {module} import main; main()"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(command_r), str(result_w), str(life_r)],
            pass_fds=(command_r, result_w, life_r),
            stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
    except BaseException:
        for fd in (command_w, result_r, life_w):
            os.close(fd)
        raise
    finally:
        for fd in (command_r, result_w, life_r):  # the child's ends: it has its own copies
            with contextlib.suppress(OSError):
                os.close(fd)
    return proc, Connection(command_w, readable=False), Connection(result_r, writable=False), life_w
