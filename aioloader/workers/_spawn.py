"""Starting a child with three pipes: commands in, results out, and a lifeline whose end of
file tells the child its parent is gone. Used by the worker pool and by ``Loader.in_subprocess``.

``spawn_child`` starts a fresh interpreter (spawn semantics): it must import torch and the
parent's modules again, 1-3 s on 2 cores before a worker can take its first task. ``fork_child``
forks this process instead, as torch DataLoader's workers start (~10-50 ms): the child has the
modules already imported. It keeps what spawn protects: a forked child has only the thread that
forked (it inherits no other thread), it closes every file descriptor but its three pipes
(a socket or a lifeline of this process stays this process's), it never touches this process's
event loop or pools (it runs the worker's main and leaves with ``os._exit``), and nothing is
forked once CUDA is initialised here (:func:`fork_allowed`): a CUDA context cannot cross a fork,
so a process that has one starts its workers with spawn.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
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


# "spawn" makes every worker a fresh interpreter even where a fork is allowed (for a worker that
# must not share this process's memory image; tests compare the two ways)
START_METHOD_ENV = "AIOLOADER_WORKER_START"


def fork_allowed() -> bool:
    """Whether a worker may be forked from this process now: Linux (``pidfd_open``), no CUDA
    context here, and not turned off by ``AIOLOADER_WORKER_START=spawn``."""
    if os.environ.get(START_METHOD_ENV, "fork") == "spawn":
        return False
    if sys.platform != "linux" or not hasattr(os, "fork") or not hasattr(os, "pidfd_open"):
        return False
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return not (cuda is not None and cuda.is_initialized())


class ForkedProcess:
    """A forked child, as much of ``subprocess.Popen`` as the pool uses: ``pid``,
    ``returncode``, ``poll``, ``wait(timeout)`` (on a pidfd, no polling) and ``kill``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                self._reap(os.WNOHANG)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            if timeout is not None and not select.select([self._pidfd], [], [], max(0.0, timeout))[0]:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            with self._lock:
                if self.returncode is None:
                    self._reap(0)
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere: its status is lost
            pid, status = self.pid, 255 << 8
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)


def fork_child(
    main: Any, env: dict[str, str] | None = None
) -> tuple[ForkedProcess, Connection, Connection, int]:
    """Fork a child that runs ``main([command_fd, result_fd, lifeline_fd])`` and exits; as
    :func:`spawn_child` returns: the process, the command and result connections, and the
    lifeline's write end. Only where :func:`fork_allowed`."""
    command_r, command_w = os.pipe()
    result_r, result_w = os.pipe()
    life_r, life_w = os.pipe()
    _enlarge(command_w)
    _enlarge(result_w)
    for stream in (sys.stdout, sys.stderr):  # else the child could write this process's pending output
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        pid = os.fork()
    except BaseException:
        for fd in (command_r, command_w, result_r, result_w, life_r, life_w):
            os.close(fd)
        raise
    if pid == 0:  # the child: never returns into the parent's stack
        code = 1
        try:
            _become_worker((command_r, result_w, life_r), env)
            main([str(command_r), str(result_w), str(life_r)])
            code = 0
        except BaseException:  # the parent sees a worker that died before it was ready
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            os._exit(code)
    for fd in (command_r, result_w, life_r):
        os.close(fd)
    return ForkedProcess(pid), Connection(command_w, readable=False), Connection(result_r, writable=False), life_w


def _become_worker(keep: tuple[int, ...], env: dict[str, str] | None) -> None:
    """In a forked child: only ``keep`` and stdout/stderr stay open, stdin is /dev/null, the
    parent's objects are never collected (a collection would touch, and so copy, their pages)."""
    gc.freeze()
    threading.current_thread().name = "MainThread"  # the only thread; it forked as the pool's
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    _standard_streams()
    with contextlib.suppress(ValueError):  # an event loop's wake-up fd: closed above
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGALRM", "SIGCHLD"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    _fresh_global_rngs()
    if env:
        os.environ.update(env)
        torch = sys.modules.get("torch")
        if torch is not None and env.get("OMP_NUM_THREADS") == "1":
            torch.set_num_threads(1)  # the environment only applies at start-up


def _standard_streams() -> None:
    """``sys.stdout``/``sys.stderr`` on file descriptors 1 and 2, as in a spawned interpreter:
    the parent's may have been redirected to a file (or a test's capture) whose descriptor the
    child has just closed, and a ``print`` in ``worker_init`` or ``fn`` then failed with EBADF."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            standard = stream is not None and stream.fileno() == fd
        except (AttributeError, ValueError, OSError):
            standard = False
        if not standard:
            setattr(sys, name, open(fd, "w", buffering=1, closefd=False))  # noqa: SIM115 - the process's own


def _fresh_global_rngs() -> None:
    """Seed ``random``, numpy's and torch's global generators from the OS, as a new interpreter
    is: forked workers would otherwise all draw this process's next numbers, the same ones
    (the loader reseeds them per task where its results must repeat)."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()
