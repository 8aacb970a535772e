"""The child process of ``Loader.in_subprocess()`` (started by :mod:`.subprocess_loader`).

Three pipes, as the process pool's workers have. Parent to child (commands): the preparation
data of ``multiprocessing.spawn`` (the parent's ``sys.path``, cwd and ``__main__``), then
``(pickled pipeline, segment prefix)``, then commands::

    ("start", run_id, state, credits)    run one epoch from ``state`` (a mark: its epoch's start)
    ("credit", run_id, n, releases)      n more batches may be sent; segments handed back
    ("stop", run_id, releases)           the consumer left the loop
    ("request", request_id, name, arg)   "validate" a state, or "stats"
    ("close",)

Child to parent (results): ``("ready", info)`` or ``("init_error", exc)``, then
``("batch", run_id, frame, state)``, ``("end", run_id, state)``, ``("error", run_id, exc)``,
``("stopped", run_id)`` and ``("reply", request_id, ok, value)``. A batch's arrays travel in
shared-memory segments (:mod:`aioloader.workers.shm`), reused once the parent hands them back.
The lifeline pipe ends the child at once when the parent closes it or dies.

The main thread reads commands; one producer thread per run iterates the Loader (sync
iteration, on the Loader's own loop thread) and sends a batch only when it holds a credit.

Every state sent (in ``ready``'s info, with each batch, at the end) is the Loader's
``state_dict()``, or where the pipeline cannot be resumed exactly there, a mark of the epoch and
the reason (:func:`aioloader.service.specs.state_or_mark`); such a pipeline runs all the same.
"""

from __future__ import annotations

import pickle
import signal
import sys
import threading
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

import aioloader.workers._child as worker_child
from aioloader.loader import Loader
from aioloader.service.specs import (
    length_or_none,
    start_run,
    state_or_mark,
    validated_state,
)
from aioloader.workers.shm import BATCH_SHM_MIN_BYTES, SegmentArena, pack

_JOIN_S = 2.0


class _Child:
    def __init__(self, loader: Loader, arena: SegmentArena, results: Connection) -> None:
        self.loader = loader
        self.arena = arena
        self._results = results
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._run_id: int | None = None
        self._credits = 0
        self._stop = False
        self._releases: deque[str] = deque()
        self._producer: threading.Thread | None = None

    def send(self, message: Any) -> None:
        with self._send_lock:
            self._results.send(message)

    def serve(self, commands: Connection) -> None:
        try:
            while True:
                try:
                    message = commands.recv()
                except (EOFError, OSError):
                    return
                kind = message[0]
                if kind == "close":
                    return
                if kind == "start":
                    self._start(*message[1:])
                elif kind == "credit":
                    _, run_id, n, releases = message
                    with self._cond:
                        self._releases.extend(releases)
                        if run_id == self._run_id:
                            self._credits += n
                        self._cond.notify_all()
                elif kind == "stop":
                    _, run_id, releases = message
                    with self._cond:
                        self._releases.extend(releases)
                        if run_id == self._run_id:
                            self._stop = True
                        self._cond.notify_all()
                elif kind == "request":
                    self._answer(*message[1:])
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self.loader.close()  # ends a run the producer may be waiting on
            if self._producer is not None:
                self._producer.join(_JOIN_S)

    def _answer(self, request_id: int, name: str, arg: Any) -> None:
        try:
            if name == "validate":
                value: Any = validated_state(self.loader, arg)
            elif name == "stats":
                value = self.loader.stats()
            else:
                raise ValueError(f"unknown request {name!r}")
            self.send(("reply", request_id, True, value))
        except Exception as exc:
            self.send(("reply", request_id, False, worker_child._portable(exc)))

    def _start(self, run_id: int, state: dict[str, Any], credits: int) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._producer is not None:
            self._producer.join()  # it stops at its next batch boundary
        with self._cond:
            self.arena.release(list(self._releases))
            self._releases.clear()
            self._run_id, self._credits, self._stop = run_id, credits, False
        self._producer = threading.Thread(
            target=self._produce, args=(run_id, state), name="producer", daemon=True
        )
        self._producer.start()

    def _take_credit(self) -> bool:
        """Wait for a credit; False when the run was stopped."""
        with self._cond:
            while self._credits == 0 and not self._stop:
                self._cond.wait()
            if self._stop:
                return False
            self._credits -= 1
            releases = list(self._releases)
            self._releases.clear()
        self.arena.release(releases)
        return True

    def _produce(self, run_id: int, state: dict[str, Any]) -> None:
        loader = self.loader
        try:
            start_run(loader, state)
            epoch = int(state["epoch"])
            batches = iter(loader)
            try:
                while True:
                    if not self._take_credit():
                        self.send(("stopped", run_id))
                        return
                    try:
                        value = next(batches)
                    except StopIteration:
                        self.send(("end", run_id, state_or_mark(loader, epoch + 1)))
                        return
                    after = state_or_mark(loader, epoch)
                    self.send(("batch", run_id, pack(value, self.arena), after))
                    del value
            finally:
                batches.close()
        except (BrokenPipeError, EOFError):
            return  # the parent went away; the lifeline ends this process
        except Exception as exc:
            try:
                self.send(("error", run_id, worker_child._portable(exc)))
            except OSError:
                return


def main(argv: list[str] | None = None) -> None:
    command_fd, result_fd, life_fd = (int(a) for a in (argv or sys.argv[1:])[:3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    arenas: list[SegmentArena] = []
    threading.Thread(target=worker_child._watch_lifeline, args=(life_fd, arenas), daemon=True).start()
    commands = Connection(command_fd, writable=False)
    results = Connection(result_fd, readable=False)
    try:
        worker_child.prepare_main(commands)
        spec, prefix = worker_child.receive(commands)
        arenas.append(SegmentArena(prefix, BATCH_SHM_MIN_BYTES))  # one batch a segment
        loader = Loader(pickle.loads(spec))
        info = {"len": length_or_none(loader), "state": state_or_mark(loader, loader.epoch)}
    except worker_child.ParentGone:
        return
    except BaseException as exc:  # an OSError building the loader too: named, not a silent exit
        worker_child.report_init_error(results, exc)
        return
    results.send(("ready", info))
    try:
        _Child(loader, arenas[0], results).serve(commands)
    finally:
        arenas[0].unlink_all()


if __name__ == "__main__":
    main()
