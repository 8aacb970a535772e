"""``aioloader serve SPEC.py``: the Loader a spec file names, imported as a module named after
the file, from its own directory (which joins ``sys.path`` so process-pool workers import it too).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from aioloader.loader import Loader

__all__ = ["load_spec_file"]


def load_spec_file(path: str | Path, attribute: str = "loader") -> Loader:
    """The Loader named ``attribute`` in the Python file ``path`` (or returned by calling it)."""
    file = Path(path).resolve()
    if not file.is_file() or file.suffix != ".py":
        raise ValueError(f"spec must be a Python file (SPEC.py), got {str(path)!r}")
    name = file.stem
    if not name.isidentifier():
        raise ValueError(f"spec file name {file.name!r} must be a valid module name")
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) != str(file):
        module_spec = importlib.util.spec_from_file_location(name, file)
        if module_spec is None or module_spec.loader is None:  # pragma: no cover - a .py file
            raise ValueError(f"cannot import spec file {str(file)!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    value = getattr(module, attribute, None)
    if value is None:
        raise ValueError(f"spec file {file.name} has no attribute {attribute!r} (a Loader)")
    if not isinstance(value, Loader) and callable(value):
        value = value()
    if not isinstance(value, Loader):
        raise TypeError(f"{file.name}:{attribute} must be an aioloader.Loader, got {type(value).__name__}")
    return value
