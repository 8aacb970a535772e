"""The worker process's main loop (runs in the child, started by :mod:`aioloader.workers.pool`).

Protocol on two pipes. Parent to child: the preparation data of ``multiprocessing.spawn`` (so the
child sees the parent's ``sys.path``, cwd and ``__main__``), then the pickled
``(pickle of (work, worker_init), worker_id, segment_prefix)``, then tasks (:mod:`aioloader.workers.wire`: a header ``(task_id, releases, buffer_sizes)``,
the values' pickle and its out-of-band buffers).
Child to parent: ``("ready", pid)`` or ``("init_error", exc)``, then one reply per task,
(after any ``("part", task_id, frame)`` the work sends early), ``("ok", task_id, frame)``, ``("error", task_id, exc)``, or ``("undecodable", task_id, exc)``
when the values cannot be unpickled here (a class only the parent has). A third pipe is the lifeline: when
the parent closes it (or dies) the child unlinks its segments and exits at once, even mid-task.
"""

from __future__ import annotations

import faulthandler
import functools
import os
import pickle
import select
import signal
import sys
import tempfile
import threading
import traceback
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.spawn import prepare
from typing import Any

import aioloader.workers.wire as wire
from aioloader.workers.shm import SegmentArena, check_packable, pack

BOOTSTRAPPING = False  # true while a worker imports the parent's __main__ (see ProcessPool)
STACK_SIGNAL = signal.SIGUSR1  # the parent asks for the Python stack of a stalled worker
_stack_file: Any = None  # kept open: faulthandler writes to its descriptor


def stack_path(prefix: str) -> str:
    """Where the worker whose segments are named ``prefix...`` dumps its Python stack on
    :data:`STACK_SIGNAL` (faulthandler, from its C signal handler: even while the worker is
    blocked in a call)."""
    return os.path.join(tempfile.gettempdir(), f"{prefix}stack")


def _register_stack_dump(prefix: str) -> None:
    global _stack_file
    try:
        _stack_file = open(stack_path(prefix), "w")  # noqa: SIM115 - open for the process's life
        faulthandler.register(STACK_SIGNAL, file=_stack_file, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError):  # no stack on a stall: not a reason to fail
        _stack_file = None


def _portable(exc: BaseException) -> BaseException:
    """``exc`` with the worker's traceback as a note, or a RuntimeError when it cannot be
    pickled and unpickled (exceptions with custom constructors often cannot)."""
    if exc.__traceback__ is not None:
        tb = "".join(traceback.format_tb(exc.__traceback__))
        try:
            exc.add_note(f"traceback in worker process {os.getpid()}:\n{tb}")
        except (AttributeError, TypeError):
            pass
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        plain = RuntimeError(f"{type(exc).__qualname__}: {exc} (the original exception cannot be pickled)")
        for note in getattr(exc, "__notes__", []):
            plain.add_note(note)
        for name in ("stage", "key", "_aioloader_annotated"):  # what annotate() named, if it can travel
            value = getattr(exc, name, None)
            if value is not None and _travels(value):
                setattr(plain, name, value)
        return plain


def _travels(value: Any) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True


def _watch_lifeline(fd: int, arena: list[SegmentArena]) -> None:
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    for a in arena:
        a.unlink_all()
    os._exit(0)


class ParentGone(Exception):
    """The parent closed its end of the command pipe (it is stopping, or it died)."""


def receive(conn: Connection, *, raw: bool = False) -> Any:
    """The next message from the parent (its bytes with ``raw``); :class:`ParentGone` at the end."""
    try:
        return conn.recv_bytes() if raw else conn.recv()
    except (EOFError, OSError) as exc:
        raise ParentGone from exc


def prepare_main(commands: Connection) -> None:
    """Receive and apply the parent's preparation data (its ``sys.path``, cwd and ``__main__``).
    A failure here (the main module raises on import) is the caller's to report: it is not the
    parent going away, though it may be an OSError."""
    global BOOTSTRAPPING
    data = receive(commands)
    BOOTSTRAPPING = True
    try:
        prepare(data)
    finally:
        BOOTSTRAPPING = False


def report_init_error(results: Connection, exc: BaseException) -> None:
    """Tell the parent why this child could not start (nothing, if it has gone)."""
    try:
        results.send(("init_error", _portable(exc)))
    except OSError:
        pass


class _Pipe:
    """The task pipe, and the tasks' messages taken from it early when the work looked."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._queued: deque[tuple[Any, Any]] = deque()  # (message, its values or None)
        # made once: Connection.poll() builds a selector each call (~1 ms on a loaded machine),
        # and a shard stream's worker looks at its pipe between samples
        self._poller = select.poll()
        self._poller.register(conn.fileno(), select.POLLIN)

    def _ready(self) -> bool:
        return bool(self._poller.poll(0))

    def receive(self) -> Any:
        if self._queued:
            return self._queued.popleft()[0]
        return wire.receive(self.conn)

    def peek(self) -> list[Any]:
        """The values of the tasks queued behind the running one that are in the pipe now
        (those that cannot be unpickled left out: their task says why), in order."""
        try:
            while self._ready():
                message = wire.receive(self.conn)
                try:
                    values = pickle.loads(message[2], buffers=message[3])
                except Exception:
                    values = None
                self._queued.append((message, values))
        except (EOFError, OSError):  # left for the next receive to see
            pass
        return [values for _, values in self._queued if values is not None]


def _serve(tasks: Connection, results: Connection, work: Any, arena: SegmentArena) -> None:
    pipe = _Pipe(tasks)
    # a work with ``look_ahead(peek)`` may look at the next task while it runs one (a shard
    # stream's worker starts reading that shard); one with ``send_parts(send)`` may send
    # parts of its result before it ends
    look_ahead = getattr(work, "look_ahead", None)
    if look_ahead is not None:
        look_ahead(pipe.peek)
    parts = getattr(work, "send_parts", None)
    while True:
        try:
            task_id, releases, head, buffers = pipe.receive()
        except (EOFError, OSError):
            return
        arena.release(releases)
        try:
            values = pickle.loads(head, buffers=buffers)
        except Exception as exc:  # the parent sends the values again one by one to find which
            results.send(("undecodable", task_id, _portable(exc)))
            continue
        if parts is not None:
            parts(functools.partial(_send_part, results, task_id, arena))
        try:
            out = work(values)
            results_, failures, busy = out
            failures = [(i, _portable(e)) for i, e in failures]
            try:
                frame = pack((results_, failures, busy), arena)
            except Exception:  # a result that cannot be pickled fails alone, as its sample's error
                frame = pack((*_without_unpicklable(results_, failures), busy), arena)
            reply: Any = ("ok", task_id, frame)
        except Exception as exc:
            reply = ("error", task_id, _portable(exc))
        results.send(reply)


def _send_part(results: Connection, task_id: int, arena: SegmentArena, value: Any) -> None:
    results.send(("part", task_id, pack(value, arena)))


def _without_unpicklable(
    results: list[Any], failures: list[tuple[int, BaseException]]
) -> tuple[list[Any], list[tuple[int, BaseException]]]:
    """``results`` with each one that cannot be pickled replaced by a failure of its index."""
    failed = {i for i, _ in failures}
    failures = list(failures)
    results = list(results)
    for index, result in enumerate(results):
        if index in failed:
            continue
        try:
            check_packable(result)
        except Exception as exc:
            error = TypeError(
                f"the result cannot be sent back from the worker process: it cannot be pickled "
                f"({type(exc).__name__}: {exc})"
            )
            results[index] = None
            failures.append((index, _portable(error)))
    failures.sort(key=lambda failure: failure[0])
    return results, failures


def main(argv: list[str] | None = None) -> None:
    """A spawned worker's entry point: it first receives the parent's preparation data."""
    _main(argv or sys.argv[1:], prepared=False)


def forked_main(argv: list[str]) -> None:
    """A forked worker's entry point: it has the parent's modules already, and ``__main__`` as
    a spawned worker would have it (:func:`_as_spawned_main`)."""
    _as_spawned_main()
    _main(argv, prepared=True)


def _as_spawned_main() -> None:
    """Make the inherited ``__main__`` what a spawned worker imports: without what the
    script's ``if __name__ == "__main__":`` block defined, and empty where a spawned worker
    does not import the script at all (``-c``, stdin, a package's ``__main__``). A forked
    worker then accepts and refuses the same functions and samples as a spawned one."""
    import types

    from aioloader._main_module import guarded_names
    from aioloader.workers._spawn import preparation_data

    main = sys.modules.get("__main__")
    if main is None:
        return
    data = preparation_data("aioloader-worker")
    name = data.get("init_main_from_name")
    if name is not None:  # ``python -m module``; multiprocessing skips a package's __main__
        path = None if name == "__main__" or name.endswith(".__main__") else getattr(main, "__file__", None)
    else:
        path = data.get("init_main_from_path")
    if path is None:
        sys.modules["__main__"] = types.ModuleType("__main__")
        return
    for name in guarded_names(path):
        main.__dict__.pop(name, None)


def _main(argv: list[str], *, prepared: bool) -> None:
    task_fd, result_fd, life_fd = (int(a) for a in argv[:3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    arena: list[SegmentArena] = []
    threading.Thread(target=_watch_lifeline, args=(life_fd, arena), daemon=True).start()
    tasks = Connection(task_fd, writable=False)
    results = Connection(result_fd, readable=False)
    try:
        if not prepared:
            prepare_main(tasks)
        work_pickle, worker_id, prefix, shm_min_bytes = pickle.loads(receive(tasks, raw=True))
        work, worker_init = pickle.loads(work_pickle)
        arena.append(SegmentArena(prefix, shm_min_bytes))
        _register_stack_dump(prefix)
        if worker_init is not None:
            worker_init(worker_id)
    except ParentGone:
        return
    except BaseException as exc:  # an OSError of worker_init too: named, not a silent exit
        report_init_error(results, exc)
        return
    results.send(("ready", os.getpid()))
    try:
        _serve(tasks, results, work, arena[0])
    finally:
        arena[0].unlink_all()


if __name__ == "__main__":
    main()
