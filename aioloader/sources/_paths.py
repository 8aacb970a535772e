"""Path checks shared by the file sources: existence, kind, globs, and the errors they raise.

Every "not there" condition raises :class:`~aioloader.errors.DataNotFoundError` naming the path
(or pattern) the user gave, so a typo is found at build time, not in the middle of an epoch.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from aioloader.errors import DataFormatError, DataNotFoundError

_GLOB_CHARS = frozenset("*?[")


def as_path(value: Any, argument: str) -> Path:
    """``value`` as a :class:`Path`; ``TypeError`` naming ``argument`` when it is not path-like."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a str or os.PathLike, got {type(value).__name__}: {value!r}")
    return Path(value).expanduser()


def existing_file(value: Any, argument: str) -> Path:
    path = as_path(value, argument)
    if not path.exists():
        raise DataNotFoundError(f"{argument}: no such file: {str(path)!r}")
    if not path.is_file():
        raise DataFormatError(f"{argument}: {str(path)!r} is not a regular file")
    return path


def existing_dir(value: Any, argument: str) -> Path:
    path = as_path(value, argument)
    if not path.exists():
        raise DataNotFoundError(f"{argument}: no such directory: {str(path)!r}")
    if not path.is_dir():
        raise DataFormatError(f"{argument}: {str(path)!r} is not a directory")
    return path


def is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def expand_files(value: Any, argument: str) -> list[Path]:
    """One existing file, or the files a glob pattern matches (sorted; ``**`` recurses)."""
    path = as_path(value, argument)
    text = str(path)
    if not is_glob(text):
        return [existing_file(path, argument)]
    matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise DataNotFoundError(f"{argument}: the pattern {text!r} matches no file")
    return files
