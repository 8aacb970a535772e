"""What a spawned worker process can import from the parent's ``__main__``.

Pickle saves a function or class of ``__main__`` by name; a worker finds it by importing the
parent's script as ``__mp_main__``, which runs the script's top level but not the body of its
``if __name__ == "__main__":`` block. So a function or class defined inside that block (a
collate defined next to the training loop, say) pickles here and is missing there (the
workers fail to start), or is another object there, of the same name at the top level (the
workers run that one, silently). :func:`defined_under_guard` reads the script's syntax tree
and the object's line numbers to tell such objects apart.
"""

from __future__ import annotations

import ast
import functools
import os
from typing import Any

__all__ = ["defined_under_guard"]


def defined_under_guard(main_file: str, obj: Any) -> bool:
    """Whether ``obj`` (a function or class of ``__main__``) is defined inside the ``if
    __name__ == "__main__":`` block of ``main_file``, so a worker importing the script lacks
    it, or finds another object of that name. False when the file cannot be read or parsed:
    there is then no evidence either way."""
    try:
        stamp = os.stat(main_file).st_mtime_ns
    except OSError:
        return False
    guards, guarded, outside = _layout(main_file, stamp)
    line = _first_line(obj, os.path.realpath(main_file))
    if line is not None:  # where this very object was defined
        return any(start <= line <= end for start, end in guards)
    # no code of it in the script to place it (a dataclass or a class without methods): by
    # name, a def or class statement under the guard and none elsewhere
    name = obj.__qualname__.split(".")[0]
    return name in guarded and name not in outside


def _first_line(obj: Any, main_file: str) -> int | None:
    """The line in ``main_file`` where a function's definition starts (its first
    decorator's; through ``__wrapped__``, as a decorator of another module leaves its own
    code on the object), or one of a class's methods' does; None when none of its code
    comes from the script (a dataclass's methods are made in ``<string>``)."""
    if isinstance(obj, type):
        functions = [
            getattr(value, "__func__", value)  # staticmethod, classmethod
            for value in vars(obj).values()
            if getattr(getattr(value, "__func__", value), "__qualname__", "").startswith(
                obj.__qualname__ + "."
            )
        ]
    else:
        functions = [obj]
    for function in functions:
        for _ in range(16):  # the chain of wrappers, to the script's own function
            code = getattr(function, "__code__", None)
            if code is not None and _same_file(code.co_filename, main_file):
                return code.co_firstlineno
            function = getattr(function, "__wrapped__", None)
            if function is None:
                break
    return None


def _same_file(filename: str, main_file: str) -> bool:
    return filename == main_file or os.path.realpath(filename) == main_file


@functools.lru_cache(maxsize=8)
def _layout(main_file: str, stamp: int) -> tuple[list[tuple[int, int]], frozenset[str], frozenset[str]]:
    """Of the file as it was at ``stamp`` (its mtime, so an edited file is read again): the
    line ranges of its main-guard blocks, the functions and classes defined in them, and
    those defined elsewhere."""
    try:
        with open(main_file, "rb") as f:
            tree = ast.parse(f.read(), filename=main_file)
    except (OSError, SyntaxError, ValueError):
        return [], frozenset(), frozenset()
    guards: list[tuple[int, int]] = []
    guarded: set[str] = set()
    outside: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.If) and _is_main_guard(statement.test):
            body_end = statement.body[-1].end_lineno or statement.lineno
            guards.append((statement.lineno, body_end))
            _definitions(statement.body, guarded)
            _definitions(statement.orelse, outside)
        else:
            _definitions([statement], outside)
    return guards, frozenset(guarded), frozenset(outside)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return has_name and has_main


def _definitions(statements: list[ast.stmt], names: set[str]) -> None:
    """Add the names of the functions and classes ``statements`` define at module level,
    through nested blocks (if, for, with, try), not inside functions or classes."""
    nodes: list[ast.AST] = list(statements)
    while nodes:
        node = nodes.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, ast.Lambda):
            continue
        nodes.extend(ast.iter_child_nodes(node))
