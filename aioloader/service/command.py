"""``aioloader serve SPEC.py``: run the loader server from the command line.

``SPEC.py`` is a Python file whose ``loader`` attribute (``--attr`` to pick another) is a Loader
or a function returning one (see :func:`aioloader.service.spec_file.load_spec_file`). The token is
read from ``--token-file`` (never from the command line, where other users could read it in the
process list). The server prints ``serving on HOST:PORT`` once it listens, logs refused and
dropped connections on stderr, and stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any


def add_serve_parser(commands: Any) -> None:
    """Add the ``serve`` subcommand to ``commands`` (an argparse subparsers object)."""
    serve = commands.add_parser("serve", help="serve a loader spec's batches to trainers over TCP")
    serve.add_argument("spec", help="a Python file defining the loader (SPEC.py)")
    serve.add_argument("--attr", default="loader", help="the spec file's Loader (or factory) attribute")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=0, help="port to bind (0: any free port, printed)")
    serve.add_argument("--token-file", required=True, help="file holding the shared secret (>= 16 bytes)")
    serve.add_argument(
        "--send-timeout", type=float, default=30.0, help="drop a client not reading for this long"
    )
    serve.add_argument("--heartbeat", type=float, default=5.0, help="ping idle clients this often (seconds)")


def run_serve(args: argparse.Namespace) -> int:
    from aioloader.service.protocol import read_token_file
    from aioloader.service.server import serve
    from aioloader.service.spec_file import load_spec_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        token = read_token_file(args.token_file)
        loader = load_spec_file(args.spec, args.attr)
    except (ValueError, TypeError) as exc:
        print(f"aioloader serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with (
            loader,
            serve(
                loader,
                host=args.host,
                port=args.port,
                token=token,
                send_timeout=args.send_timeout,
                heartbeat=args.heartbeat,
            ) as server,
        ):
            host, port = server.address
            print(f"serving {args.spec} on {host}:{port}", flush=True)
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("stopped", file=sys.stderr, flush=True)
    return 0
