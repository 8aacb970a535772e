"""The public face: every name in ``aioloader.__all__`` imports and is documented."""

import importlib
import pkgutil

import aioloader as al


def test_all_public_names_import():
    for name in al.__all__:
        assert hasattr(al, name), name


def test_every_module_has_a_docstring():
    missing = []
    for info in pkgutil.walk_packages(al.__path__, "aioloader."):
        if info.name == "aioloader.__main__":  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        if not (module.__doc__ or "").strip():
            missing.append(info.name)
    assert not missing, f"modules without a docstring: {missing}"


def test_error_hierarchy():
    for name in (
        "DataCorruptionError",
        "DataNotFoundError",
        "DataFormatError",
        "WorkerCrashError",
        "StageTimeoutError",
        "TooManyFailures",
    ):
        assert issubclass(getattr(al.errors, name), al.errors.DataLoadingError)


def test_a_worker_process_bootstrap_does_not_import_torch():
    """``import aioloader`` imports its names on first use: a worker process (which imports
    ``aioloader.workers._child`` and the chunk function's module) starts without torch unless
    its function needs it (it cost a second or more per worker on 2 cores)."""
    import subprocess
    import sys

    code = (
        "import sys, pickle, functools, operator\n"
        "import aioloader, aioloader.workers._child\n"
        "from aioloader._run.executors import apply_items\n"
        "pickle.loads(pickle.dumps(functools.partial(apply_items, operator.neg)))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert aioloader.Loader is aioloader.loader.Loader and 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
