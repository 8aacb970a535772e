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
