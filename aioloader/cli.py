"""The command line (``aioloader ...`` and ``python -m aioloader ...``).

- ``demo``: stream a built-in image dataset, report throughput beside torch DataLoader.
- ``bench``: the benchmark suite of the repository's ``bench/`` folder (not installed with the
  package: run from a checkout, or point ``--bench-dir`` at one).
- ``inspect PATH``: what a dataset holds (image folder, .h5, .txt/.jsonl, .npy).
- ``profile [SPEC.py]``: each map stage of a pipeline alone at several concurrencies.
- ``serve``: the loader service (``aioloader.service``).

``--plot out.png`` (``demo``, ``profile``) draws per-stage throughput and queue occupancy over
time; it needs matplotlib (``pip install 'aioloader[plot]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_WORKLOADS = ["tiny", "jpeg", "h5", "h5_shuffle", "text", "padding", "memory", "configs", "all"]


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _find_bench(explicit: str | None) -> Path | None:
    """The folder holding the ``bench`` package: ``--bench-dir``, the current directory, or the
    checkout this package was imported from."""
    candidates = [Path(explicit)] if explicit else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for root in candidates:
        if (root / "bench" / "__main__.py").exists():
            return root
    return None


def _bench(args: argparse.Namespace) -> int:
    root = _find_bench(args.bench_dir)
    if root is None:
        print(
            "aioloader bench: the benchmark suite is the bench/ folder of the aioloader repository "
            "and is not installed with the package; run this from a checkout (or pass "
            "--bench-dir PATH_TO_CHECKOUT)",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    argv = ["--workload", args.workload] + (["--quick"] if args.quick else [])
    if args.output:
        argv += ["--output", args.output]
    return bench_main(argv)


def _inspect(args: argparse.Namespace) -> int:
    from aioloader.errors import DataLoadingError
    from aioloader.inspect_data import describe, render

    try:
        info = describe(args.path)
    except (OSError, ValueError, DataLoadingError) as exc:
        print(f"aioloader inspect: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from aioloader.errors import DataLoadingError

    try:
        return _run_profile(args)
    except (OSError, ValueError, DataLoadingError) as exc:
        print(f"aioloader profile: {_one_line(exc)}", file=sys.stderr)
        return 2


def _run_profile(args: argparse.Namespace) -> int:
    from aioloader.profiling import load_spec, profile, render

    if args.spec is not None:
        loader = load_spec(args.spec)
    else:
        from aioloader.demo import build_dataset, build_loader, cache_dir

        loader = build_loader(build_dataset(cache_dir(args.images), args.images))
    with loader:
        result = profile(loader, args.concurrency, args.items)
    print(render(result))
    if args.plot:
        from aioloader.monitor.plot import plot_timeline

        print(f"timeline written to {plot_timeline(result['stats'], args.plot)}")
    return 0


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a multi-line message is joined with ``; ``)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aioloader", description="asyncio-native data loading for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="stream a built-in dataset and report throughput beside torch")
    demo.add_argument("--epochs", type=int, default=2)
    demo.add_argument("--images", type=int, default=2000, help="dataset size (default 2000)")
    demo.add_argument("--no-torch", action="store_true", help="skip the torch DataLoader comparison")
    demo.add_argument("--plot", metavar="OUT.png", help="per-stage throughput and queues over time")

    bench = commands.add_parser("bench", help="run the benchmark suite (from a repository checkout)")
    bench.add_argument("--workload", default="all", choices=BENCH_WORKLOADS)
    bench.add_argument("--quick", action="store_true", help="smaller data, one round")
    bench.add_argument("--output", metavar="FILE.md", help="also write the report to this file")
    bench.add_argument("--bench-dir", help="the checkout holding bench/ (default: found)")

    inspect = commands.add_parser("inspect", help="what a dataset holds: count, classes, dtypes, one sample")
    inspect.add_argument("path", help="a folder of images, .h5/.hdf5, .txt/.jsonl or .npy")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    prof = commands.add_parser("profile", help="each map stage alone at several concurrencies")
    prof.add_argument("spec", nargs="?", help="a Python file defining `loader` (default: the demo pipeline)")
    prof.add_argument("--concurrency", type=_positive_ints, default=[1, 2, 4], help="e.g. 1,2,4")
    prof.add_argument("--items", type=int, default=512, help="inputs collected per stage")
    prof.add_argument("--images", type=int, default=2000, help="demo dataset size (no SPEC)")
    prof.add_argument("--plot", metavar="OUT.png", help="the pipeline run's timeline")

    from aioloader.service.command import add_serve_parser, run_serve

    add_serve_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from aioloader.demo import main as demo_main

        return demo_main(epochs=args.epochs, images=args.images, compare=not args.no_torch, plot=args.plot)
    if args.command == "bench":
        return _bench(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "profile":
        return _profile(args)
    if args.command == "serve":
        return run_serve(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
