"""Starting a child interpreter with three pipes: commands in, results out, and a lifeline
whose end of file tells the child its parent is gone. Used by the worker pool and by
``Loader.in_subprocess``; a fresh interpreter (spawn semantics) never inherits threads."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def spawn_child(module: str) -> tuple[subprocess.Popen[bytes], Connection, Connection, int]:
    """Run ``module.main(command_fd, result_fd, lifeline_fd)`` in a fresh interpreter; return
    the process, the command and result connections, and the lifeline's write end."""
    command_r, command_w = os.pipe()
    result_r, result_w = os.pipe()
    life_r, life_w = os.pipe()
    code = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from {module} import main; main()"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(command_r), str(result_w), str(life_r)],
            pass_fds=(command_r, result_w, life_r),
            stdin=subprocess.DEVNULL,
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
