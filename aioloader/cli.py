"""The command line: ``aioloader demo`` (and ``python -m aioloader demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aioloader", description="asyncio-native data loading for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="stream a built-in dataset and report throughput beside torch")
    demo.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from aioloader.demo import main as demo_main

        return demo_main(epochs=args.epochs)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
