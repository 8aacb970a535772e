"""No import cycles between aioloader's modules: the graph of their module-level imports (as
written, read with ``ast``; imports under ``if TYPE_CHECKING`` and inside functions are left
out) has no strongly connected component of more than one module.

An edge goes to the module an import names: ``import a.b`` and ``from a.b import x`` to ``a.b``.
``from package import name`` reads ``name`` through the package's ``__init__``, so it goes to the
package, even when ``name`` is a submodule (a sibling read that way is what made the
``aioloader.workers`` and ``aioloader.service`` packages circles). A module's own packages run
before it by the import system, not by its imports, so they add no edge."""

from __future__ import annotations

import ast
from pathlib import Path

import aioloader

_ROOT = Path(aioloader.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in _ROOT.rglob("*.py"):
        parts = list(path.relative_to(_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += _module_level_imports(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                found += _module_level_imports(handler.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each aioloader module -> the aioloader modules its module-level imports name."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                targets = [".".join([*anchor, *([node.module] if node.module else [])])]
            else:
                targets = [node.module or ""]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_finder_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_reads_package_reads_and_skips_type_checking_imports():
    graph = import_graph()
    assert "aioloader._run.graph" in graph["aioloader.loader"]
    assert "aioloader.workers.wire" in graph["aioloader.workers.pool"]
    # base.py names its collaborators for type checking only
    assert "aioloader._run.channel" not in graph["aioloader._run.stages.base"]


def test_aioloader_has_no_import_cycles():
    assert cycles(import_graph()) == []
