"""``python -m bench [--workload NAME|all] [--quick] [--output FILE]``: markdown tables of ratios.

The report goes to stdout and, for ``--workload all`` (``make bench``), to
``bench/results/latest.md`` too (or to ``--output``).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import psutil
import torch

WORKLOADS = [
    "tiny", "jpeg", "h5", "h5_shuffle", "padding", "text", "memory", "configs", "service", "remote", "gil", "tokenizer",
    "order_scale",
]
EXTRA = ["ray"]  # not in "all": it needs Ray (aioloader[ray]) and root for its network namespace
LATEST = Path(__file__).resolve().parent / "results" / "latest.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--workload", default="all", choices=[*WORKLOADS, *EXTRA, "all"])
    parser.add_argument("--quick", action="store_true", help="smaller data, one round")
    parser.add_argument(
        "--output", help="also write the report here (default for 'all': bench/results/latest.md)"
    )
    args = parser.parse_args(argv)
    names = WORKLOADS if args.workload == "all" else [args.workload]
    output = Path(args.output) if args.output else (LATEST if args.workload == "all" else None)
    started = time.perf_counter()
    report = [
        f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"python {platform.python_version()}, torch {torch.__version__}"
        + (" (--quick)" if args.quick else ""),
        "",
    ]
    print(report[0] + "\n", flush=True)
    for name in names:
        module = importlib.import_module(f"bench.workloads.{name}")
        section = module.run(quick=args.quick)
        print(section + "\n", flush=True)
        report += [section, ""]
    report.append(f"total bench time: {time.perf_counter() - started:.0f}s")
    print(report[-1])
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(report) + "\n")
        print(f"report written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
