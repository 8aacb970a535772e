"""The fault table of issue 21 ("never silent, never stuck"): each fault of its items 1-7, run
in a child process of its own, and what happens now.

``python bench/faults_table.py [--output FILE]`` prints a markdown table: the fault, what the
issue measured before (quoted from it), what happens now (the error type, a warning or the
exit), the keys delivered and expected, the seconds to the error or exit, and the peak
resident memory of the child and of its largest worker. Each case runs in a fresh interpreter
(``--case NAME``), so one case's threads, workers or memory never touch the next.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CASE_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a case saw: ``now`` (the error type and the start of its message, a warning, an
    exit), keys delivered and expected, and seconds from the fault to the error or exit."""

    now: str
    delivered: int
    expected: int
    seconds: float


def _described(exc: BaseException, chars: int = 110) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    if len(first) > chars:
        first = first[: chars - 3] + "..."
    return f"`{type(exc).__name__}`: {first}"


def _raised(run: Callable[[list[Any]], None], expected: int) -> Outcome:
    """``run(delivered)``, which must raise; the error, the keys delivered and the seconds."""
    delivered: list[Any] = []
    started = time.monotonic()
    try:
        run(delivered)
    except Exception as exc:
        return Outcome(_described(exc), len(delivered), expected, time.monotonic() - started)
    return Outcome("no error", len(delivered), expected, time.monotonic() - started)


# -- item 1: a resumed source short of its state ------------------------------------------------


def _lines(path: Path, n: int) -> None:
    path.write_text("".join(f"line {i}\n" for i in range(n)))


def _state_after(loader: Any, k: int) -> dict[str, Any]:
    with loader:
        it = iter(loader)
        for _ in range(k):
            next(it)
        state = loader.state_dict()
        it.close()
    return json.loads(json.dumps(state))


def _resume(loader: Any, state: dict[str, Any]) -> Callable[[list[Any]], None]:
    def run(delivered: list[Any]) -> None:
        with loader:
            loader.load_state_dict(state)
            delivered.extend(loader)

    return run


def case_resume_cut_file(tmp: Path) -> Outcome:
    import aioloader as al

    path = tmp / "lines.txt"
    _lines(path, 5000)
    make = lambda: al.Loader.from_source(al.sources.TextLines(path, mode="streaming")).shuffle(256)  # noqa: E731
    state = _state_after(make(), 1000)
    _lines(path, 1100)
    return _raised(_resume(make(), state), 0)


class _Numbers:
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        return iter(range(self.n))

    def __repr__(self) -> str:
        return f"Numbers({self.n})"


def case_resume_short_generator(tmp: Path) -> Outcome:
    import aioloader as al

    state = _state_after(al.Loader.from_source(_Numbers(5000)).shuffle(256), 1000)
    return _raised(_resume(al.Loader.from_source(_Numbers(100)).shuffle(256), state), 0)


# -- item 2: an edited state -------------------------------------------------------------------


def case_edited_position(tmp: Path) -> Outcome:
    import aioloader as al

    make = lambda: al.Loader.from_source(range(3720), shuffle=True, seed=0)  # noqa: E731
    state = _state_after(make(), 10)
    state["position"] += 1
    return _raised(_resume(make(), state), 0)


# -- item 3: no silent hang --------------------------------------------------------------------

_STAMP_ENV = "AIOLOADER_FAULTS_STAMP"


def _stamp() -> None:
    with open(os.environ[_STAMP_ENV], "w") as file:
        file.write(repr(time.monotonic()))  # CLOCK_MONOTONIC: the parent's clock too


def _stops_at_3(x: int) -> int:
    if x == 3:
        _stamp()
        os.kill(os.getpid(), signal.SIGSTOP)
    return x


_HELD: list[bytearray] = []


def _grows_at_2(x: int) -> int:
    if x == 2:
        _stamp()
        _HELD.append(bytearray(512 << 20))  # resident at once: zero-filled
        threading.Event().wait(30)  # until the pool kills the worker
    return x


def _since_stamp(tmp: Path) -> float:
    return time.monotonic() - float((tmp / "stamp").read_text())


def case_stopped_worker(tmp: Path) -> Outcome:
    import aioloader as al

    os.environ[_STAMP_ENV] = str(tmp / "stamp")
    loader = al.Loader.from_source(range(8)).map(
        _stops_at_3, executor="process", concurrency=1, stall_after=1.0, on_stall="raise"
    )
    got: list[int] = []
    try:
        with loader:
            got.extend(loader)
    except al.StageStalledError as exc:
        return Outcome(_described(exc) + " (stall_after=1)", len(got), 3, _since_stamp(tmp))
    return Outcome("no error", len(got), 3, 0.0)


def case_growing_worker(tmp: Path) -> Outcome:
    import aioloader as al

    os.environ[_STAMP_ENV] = str(tmp / "stamp")
    loader = al.Loader.from_source(range(6)).map(
        _grows_at_2, executor="process", concurrency=1, max_worker_memory=300 << 20,
        on_error="skip", max_failures=1,
    )  # fmt: skip
    with loader:
        got = list(loader)
        errors = loader.stats()["errors"]
    took = _since_stamp(tmp)
    why = re.search(r"used \d+ MiB of memory, over max_worker_memory=\d+ MiB", errors[0]["message"])
    now = f"key 2 skipped: `{errors[0]['type']}` (worker {why.group(0) if why else '?'})"
    return Outcome(now, len(got), 5, took)


class _Blocks:
    """``x``, after blocking ``wait_s`` on ``key`` (or until released)."""

    def __init__(self, key: int, wait_s: float = 30.0) -> None:
        self.key = key
        self.wait_s = wait_s
        self.release = threading.Event()
        self.began = 0.0

    def __call__(self, x: int) -> int:
        if x == self.key:
            self.began = time.monotonic()
            self.release.wait(self.wait_s)
        return x


def case_blocked_thread(tmp: Path) -> Outcome:
    import aioloader as al

    fn = _Blocks(3)
    loader = al.Loader.from_source(range(8)).map(
        fn, executor="thread", concurrency=2, stall_after=1.0, on_stall="raise"
    )
    got: list[int] = []
    try:
        with loader:
            got.extend(loader)
    except al.StageStalledError as exc:
        return Outcome(_described(exc) + " (stall_after=1)", len(got), 3, time.monotonic() - fn.began)
    finally:
        fn.release.set()
    return Outcome("no error", len(got), 3, 0.0)


def case_blocked_inline(tmp: Path) -> Outcome:
    import logging

    import aioloader as al

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("aioloader").addHandler(handler)
    fn = _Blocks(3, wait_s=2.0)  # a call of 2 s (a slow read)
    with al.Loader.from_source(range(8)).map(fn, executor="inline", stall_after=1.0) as loader:
        got = list(loader)
    reports = [r.getMessage() for r in records if "made no progress" in r.getMessage()]
    seen = float(reports[0].split("made no progress for ")[1].split("s")[0]) if reports else 0.0
    return Outcome(f"{len(reports)} warning (thread, keys, stack); run goes on", len(got), 8, seen)


# -- item 4: Ctrl-C and timeouts with thread maps -------------------------------------------

_CTRL_C_CHILD = """
import asyncio, sys, threading, time
import aioloader as al

def f(x):
    if x == 0:
        print("blocked", flush=True)
        threading.Event().wait(30)  # a 30 s user call
    return x

loader = al.Loader.from_source(range(10)).map(f, executor="thread", concurrency=2).batch(1)
got = []

async def consume():
    async with loader:
        async for batch in loader:
            got.append(batch)

try:
    if sys.argv[1] == "async":
        asyncio.run(consume())
    else:
        with loader:
            got.extend(loader)
except KeyboardInterrupt:
    print(f"interrupted {len(got)}", flush=True)
    sys.exit(3)
"""


def _ctrl_c(kind: str) -> Outcome:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CTRL_C_CHILD), kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "blocked":
            raise RuntimeError("the Ctrl-C child did not start its blocked call")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
        exited = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    delivered = int(out.split()[1]) if out.startswith("interrupted") else -1
    return Outcome(f"`KeyboardInterrupt`, exit status {proc.returncode}", delivered, 0, exited)


def case_ctrl_c_sync(tmp: Path) -> Outcome:
    return _ctrl_c("sync")


def case_ctrl_c_async(tmp: Path) -> Outcome:
    return _ctrl_c("async")


def case_timeout(tmp: Path) -> Outcome:
    import aioloader as al

    fn = _Blocks(3)
    got: list[int] = []
    loader = al.Loader.from_source(range(10)).map(fn, executor="thread", concurrency=2, timeout=1.0)
    try:
        with loader:
            got.extend(loader)
    except al.StageTimeoutError as exc:
        return Outcome(_described(exc), len(got), 3, time.monotonic() - fn.began)
    finally:
        fn.release.set()
    return Outcome("no error", len(got), 3, 0.0)


# -- items 5 and 6: reading under on_error, typed errors -------------------------------------


def _jsonl(root: Path, bad: dict[str, bytes] | None = None) -> None:
    for name in "abc":
        with open(root / f"{name}.jsonl", "wb") as f:
            for i in range(5):
                line = json.dumps({"file": name, "i": i}).encode() + b"\n"
                f.write((bad or {}).get(name, line) if i == 2 else line)


def _skipped(source: Any, expected: int) -> Outcome:
    import aioloader as al

    started = time.monotonic()
    loader = al.Loader.from_source(source).map(json.dumps, on_error="skip", max_failures=10)
    with loader:
        got = list(loader)
        errors = loader.stats()["errors"]
    took = time.monotonic() - started
    kinds = sorted({e["type"] for e in errors})
    now = f"{len(errors)} skipped, in `stats()['errors']` as `{', '.join(kinds)}` (keys {[e['key'] for e in errors]})"
    return Outcome(now, len(got), expected, took)


def case_deleted_file(tmp: Path) -> Outcome:
    import aioloader as al

    _jsonl(tmp)
    source = al.sources.JsonLines(tmp / "*.jsonl", mode="streaming")
    (tmp / "b.jsonl").unlink()
    return _skipped(source, 10)


def case_bad_utf8(tmp: Path) -> Outcome:
    import aioloader as al

    _jsonl(tmp, {"b": b"caf\xe9\n"})
    return _skipped(al.sources.TextLines(tmp / "*.jsonl", mode="streaming"), 14)


def case_bad_json(tmp: Path) -> Outcome:
    import aioloader as al

    _jsonl(tmp, {"b": b'{"file": "b", "i": \n'})
    return _skipped(al.sources.JsonLines(tmp / "*.jsonl", mode="streaming"), 14)


def case_unreadable_file(tmp: Path) -> Outcome:
    """As another user (nobody, when this is root): root reads a file of mode 000."""
    import aioloader as al

    root = Path(tempfile.mkdtemp(prefix="aioloader-faults-"))
    try:
        root.chmod(0o755)
        _jsonl(root)
        for path in root.iterdir():
            path.chmod(0o644)
        _skipped(al.sources.JsonLines(root / "*.jsonl"), 15)  # every module imported, as root
        source = al.sources.JsonLines(root / "*.jsonl")  # indexed while readable
        (root / "b.jsonl").chmod(0)
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        skipped = _skipped(source, 10)
        raised = _raised(lambda got: got.extend(al.Loader.from_source(source)), 5)
        return Outcome(
            f"skip: {skipped.now}; raise: {raised.now}", skipped.delivered, skipped.expected, raised.seconds
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def case_corrupt_hdf5(tmp: Path) -> Outcome:
    import h5py
    import numpy as np

    import aioloader as al

    path = tmp / "rows.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros((400, 4), np.float32), chunks=(50, 4), compression="gzip")
    with h5py.File(path, "r") as f:
        chunk = f["x"].id.get_chunk_info(2)  # rows 100..149
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 4)
        f.write(b"\xff" * 16)
    loader = al.Loader.from_source(al.sources.HDF5(path, "x")).batch(16)

    def run(delivered: list[Any]) -> None:
        with loader:
            for batch in loader:
                delivered.extend(range(len(batch)))

    return _raised(run, 64)  # rows are read 64 at a time: the block of rows 64-127 fails whole


def case_blank_jsonl(tmp: Path) -> Outcome:
    import aioloader as al

    path = tmp / "blank.jsonl"
    path.write_text("\n\n\r\n\n")
    return _raised(lambda got: got.extend(al.sources.JsonLines(path, mode="streaming")), 0)


# -- item 7: strangers cannot lock the service --------------------------------------------------


def _sample(i: int) -> int:
    return i


def case_silent_connections(tmp: Path) -> Outcome:
    import aioloader as al

    token = secrets.token_hex(16)
    loader = al.Loader.from_source(list(range(23)), shuffle=True, seed=5).map(_sample).batch(4)
    socks: list[socket.socket] = []
    with loader, al.serve(loader, token=token, auth_timeout=30.0) as server:
        try:
            for _ in range(260):
                socks.append(socket.create_connection(server.address, timeout=10))
            started = time.monotonic()
            with al.connect(server.address, token=token, timeout=10) as client:
                got = [k for batch in client for k in batch.tolist()]
            took = time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()
    return Outcome("the client with the token is served (260 strangers open)", len(got), 23, took)


# -- the table ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    item: int
    fault: str
    before: str  # from the text
    run: Callable[[Path], Outcome]
    children: bool = False  # its worker processes or child interpreter: their peak RSS counts
    warm: bool = True  # import torch and run a loader first: its seconds are the fault's only


CASES = {
    "resume_cut_file": Case(
        1, "resume: `TextLines` stream cut from 5000 to 1100 lines (state after 1000, shuffle 256)",
        "256 items, 115 of them `None`", case_resume_cut_file,
    ),
    "resume_short_generator": Case(
        1, "resume: a generator reloaded as 100 items instead of 5000 (shuffle 256)",
        "254 of 256 items `None` (no reservoir: 0 items, no error)", case_resume_short_generator,
    ),
    "edited_position": Case(
        2, "resume: `state[\"position\"] + 1`", "accepted; 3719 of 3720 keys delivered", case_edited_position,
    ),
    "stopped_worker": Case(
        3, "process worker SIGSTOPped at key 3", "the run stalls forever, no word", case_stopped_worker, True,
    ),
    "growing_worker": Case(
        3, "process worker grows by 512 MiB (`max_worker_memory=300 MiB`, `on_error=\"skip\"`)",
        "grew to 2.2 GB with no limit; the run stalls forever", case_growing_worker, True,
    ),
    "blocked_thread": Case(
        3, "thread map blocked in user code at key 3", "(not measured in the issue) no word, forever",
        case_blocked_thread,
    ),
    "blocked_inline": Case(
        3, "inline map blocked 2 s at key 3 (`stall_after=1`)", "(not measured in the issue) no word",
        case_blocked_inline,
    ),
    "ctrl_c_sync": Case(
        4, "Ctrl-C, `for` consumer, a thread map blocked 30 s in user code",
        "process alive 29 s for a 30 s call", case_ctrl_c_sync, True, warm=False,
    ),
    "ctrl_c_async": Case(
        4, "Ctrl-C, `async for` under `asyncio.run`, a thread map blocked 30 s",
        "process alive 29 s for a 30 s call", case_ctrl_c_async, True, warm=False,
    ),
    "timeout": Case(
        4, "`timeout=1.0` on a thread map, key 3 blocked", "fired after 2.5-4.5 s", case_timeout,
    ),
    "deleted_file": Case(
        5, "`JsonLines` file deleted after listing (`on_error=\"skip\"`)",
        "the epoch ends, whatever `on_error`", case_deleted_file,
    ),
    "unreadable_file": Case(
        5, "`JsonLines` file unreadable (mode 000, read as nobody)",
        "the epoch ends, whatever `on_error`; a bare `PermissionError`, no key", case_unreadable_file,
    ),
    "bad_utf8": Case(
        5, "a line that is not UTF-8 (`TextLines`, skip)", "the epoch ends, whatever `on_error`",
        case_bad_utf8,
    ),
    "bad_json": Case(
        5, "a malformed JSON Lines record (skip)", "the epoch ends, whatever `on_error`", case_bad_json,
    ),
    "corrupt_hdf5": Case(
        6, "a corrupt gzip HDF5 chunk (rows 100-149), batches of 16, `on_error=\"raise\"`",
        "bare `OSError`, no path, no key", case_corrupt_hdf5,
    ),
    "blank_jsonl": Case(
        6, "a JSON Lines file of blank lines, streaming mode", "yields nothing (lazy mode raises)",
        case_blank_jsonl,
    ),
    "silent_connections": Case(
        7, "260 connections that never authenticate, then a client with the token",
        "the client is refused (\"closed the connection\") while they stay", case_silent_connections,
    ),
}  # fmt: skip


def _run_case(name: str) -> dict[str, Any]:
    """In the child: run one case, report its outcome and peak memory as one JSON line."""
    tmp = Path(tempfile.mkdtemp(prefix="aioloader-faults-"))
    try:
        if CASES[name].warm:
            import aioloader as al

            with al.Loader.from_source(range(4)).map(_sample).batch(2) as loader:
                list(loader)
        outcome = CASES[name].run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    now = re.sub(re.escape(tempfile.gettempdir()) + r"/aioloader-faults-\w+", "<tmp>", outcome.now)
    outcome = dataclasses.replace(outcome, now=now)
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest reaped one
    return {**vars(outcome), "rss_mib": me / 1024, "child_rss_mib": children / 1024}


def _in_child(name: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--case", name],
            capture_output=True, text=True, timeout=_CASE_TIMEOUT_S, cwd=tempfile.gettempdir(),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"now": f"no result within {_CASE_TIMEOUT_S:.0f} s", "wall_s": _CASE_TIMEOUT_S}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"now": f"case failed (exit {done.returncode}): {tail}", "wall_s": time.monotonic() - started}
    return {**json.loads(lines[-1][len("RESULT ") :]), "wall_s": time.monotonic() - started}


def _row(case: Case, result: dict[str, Any]) -> str:
    if "delivered" not in result:
        return f"| {case.item} | {case.fault} | {case.before} | {result['now']} | - | - | - |"
    rss = f"{result['rss_mib']:.0f}"
    if case.children:  # (a fork of a helper would count too: only where workers are the point)
        rss += f" / {result['child_rss_mib']:.0f}"
    keys = f"{result['delivered']} / {result['expected']}"
    now = result["now"].replace("|", "\\|")
    return f"| {case.item} | {case.fault} | {case.before} | {now} | {keys} | {result['seconds']:.2f} | {rss} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/faults_table.py")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(_run_case(args.case)), flush=True)
        return 0
    started = time.monotonic()
    lines = [
        "| item | fault | before (issue 21) | now | keys delivered / expected | s to error or exit | "
        "peak RSS MiB (process / largest worker or child) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, case in CASES.items():
        result = _in_child(name)
        lines.append(_row(case, result))
        print(lines[-1], file=sys.stderr, flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = (
        f"# Issue 21 fault table\n\n`python bench/faults_table.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (load average {load} at the end), {time.monotonic() - started:.0f} s in all.\n\n"
    )
    notes = (
        "\n- Seconds: from the fault (the blocked call's start, SIGINT, the worker's stop) where the "
        "case can see it, else from the start of the run (a warm-up run first imports torch). "
        "Ctrl-C: until the process has exited, the interpreter's teardown included.\n"
        "- Keys expected: what the consumer must get before the error (or in all, for a skip). "
        "HDF5 rows are read 64 at a time: under `on_error=\"raise\"` the block of rows 64-127 "
        "fails whole, so rows 64-99 are not delivered before the error (under skip they are).\n"
        "- Not here: `executor=\"ray\"` stalls (a Ray cluster runs only inside a private network "
        "namespace and its actors take 40-120 s to start; `tests/ray_inner/cases.py` checks them), "
        "and the default `stall_after` (60 s at least).\n"
    )
    table = header + "\n".join(lines) + "\n" + notes
    print(table)
    if args.output is not None:
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
