"""``python -m bench [--workload NAME|all] [--quick]``: print markdown tables of ratios."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

import psutil
import torch

WORKLOADS = ["tiny", "jpeg", "h5", "h5_shuffle", "padding", "text"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--workload", default="all", choices=[*WORKLOADS, "all"])
    parser.add_argument("--quick", action="store_true", help="smaller data, one round")
    args = parser.parse_args(argv)
    names = WORKLOADS if args.workload == "all" else [args.workload]
    print(
        f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"python {platform.python_version()}, torch {torch.__version__}\n"
    )
    for name in names:
        module = importlib.import_module(f"bench.workloads.{name}")
        print(module.run(quick=args.quick), flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
