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
    guards, guarded, outside_classes = _layout(main_file, stamp)
    line = _first_line(obj)
    if line is not None:  # where this very object was defined
        return any(start <= line <= end for start, end in guards)
    # a class without methods: by name, a class statement under the guard and none elsewhere
    name = obj.__qualname__.split(".")[0]
    return name in guarded and name not in outside_classes


def _first_line(obj: Any) -> int | None:
    """The line a function's definition starts on (its first decorator's), or a method's of
    a class; None when there is none to read."""
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_firstlineno
    if isinstance(obj, type):
        for value in vars(obj).values():
            function = getattr(value, "__func__", value)  # staticmethod, classmethod
            code = getattr(function, "__code__", None)
            if code is not None and getattr(function, "__qualname__", "").startswith(obj.__qualname__ + "."):
                return code.co_firstlineno
    return None


@functools.lru_cache(maxsize=8)
def _layout(main_file: str, stamp: int) -> tuple[list[tuple[int, int]], frozenset[str], frozenset[str]]:
    """Of the file as it was at ``stamp`` (its mtime, so an edited file is read again): the
    line ranges of its main-guard blocks, the classes defined in them, and the classes
    defined elsewhere."""
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
            _classes(statement.body, guarded)
            _classes(statement.orelse, outside)
        else:
            _classes([statement], outside)
    return guards, frozenset(guarded), frozenset(outside)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return has_name and has_main


def _classes(statements: list[ast.stmt], names: set[str]) -> None:
    """Add the names of the classes ``statements`` define at module level, through nested
    blocks (if, for, with, try), not inside functions or classes."""
    nodes: list[ast.AST] = list(statements)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        nodes.extend(ast.iter_child_nodes(node))
