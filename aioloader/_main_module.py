"""What a spawned worker process can import from the parent's ``__main__``.

Pickle saves a function or class of ``__main__`` by name; a worker finds it by importing the
parent's script as ``__mp_main__``, which runs the script's top level but not the body of its
``if __name__ == "__main__":`` block. So a name bound only inside that block (a collate
defined next to the training loop, say) pickles here and is missing there: the workers fail
to start. :func:`guarded_only` reads the script's syntax tree to tell such names apart.
"""

from __future__ import annotations

import ast
import functools
import os

__all__ = ["guarded_only"]


def guarded_only(main_file: str, name: str) -> bool:
    """Whether ``name`` is bound inside the ``if __name__ == "__main__":`` block of
    ``main_file`` and nowhere else at its top level (so a worker importing it lacks the name).
    False when the file cannot be read or parsed: there is then no evidence either way."""
    try:
        stamp = os.stat(main_file).st_mtime_ns
    except OSError:
        return False
    guarded, outside = _bound_names(main_file, stamp)
    return name in guarded and name not in outside


@functools.lru_cache(maxsize=8)
def _bound_names(main_file: str, stamp: int) -> tuple[frozenset[str], frozenset[str]]:
    """(names bound under a main guard, names bound elsewhere at top level) of the file as it
    was at ``stamp`` (its mtime, so an edited file is read again)."""
    try:
        with open(main_file, "rb") as f:
            tree = ast.parse(f.read(), filename=main_file)
    except (OSError, SyntaxError, ValueError):
        return frozenset(), frozenset()
    guarded: set[str] = set()
    outside: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.If) and _is_main_guard(statement.test):
            _bind(statement.body, guarded)
            _bind(statement.orelse, outside)
        else:
            _bind([statement], outside)
    return frozenset(guarded), frozenset(outside)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return has_name and has_main


def _bind(statements: list[ast.stmt], names: set[str]) -> None:
    """Add the module-level names ``statements`` bind, through nested blocks (if, for, with,
    try), not into the bodies of functions, classes, lambdas or comprehensions (their names
    are their own)."""
    nodes: list[ast.AST] = list(statements)
    while nodes:
        node = nodes.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        nodes.extend(ast.iter_child_nodes(node))
