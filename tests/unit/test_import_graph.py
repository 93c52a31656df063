"""retro's modules import one another without a circle (issue 10, §3).

The graph is read from the source with :mod:`ast`, not from ``sys.modules``: an edge
``a -> b`` for every module-level ``import``/``from … import`` in ``a`` of a module
``b`` of retro (a ``from pkg import name`` where ``pkg.name`` is a module counts as an
edge to ``pkg.name``). Imports inside functions and inside ``if TYPE_CHECKING:``
blocks are not edges: they do not run when the module loads. A package's
``__init__`` is the node of the package's name.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "retro"


def module_name(path: Path) -> str:
    """``retro/store/db.py`` -> ``retro.store.db``; ``retro/cli/__init__.py`` -> ``retro.cli``."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module loads: top level, and inside
    top-level ``if``/``try``/``with`` blocks, except ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            pending.extend(node.body)
    return found


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    """Every module of retro, mapped to the modules of retro it imports at load time."""
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for path in paths:
        name = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in module_level_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = resolve(name, path.name == "__init__.py", node)
                targets = [source]
                targets += [f"{source}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    """Whether ``goal`` is reachable from ``start`` along the graph's edges."""
    seen, pending = {start}, [start]
    while pending:
        for target in graph[pending.pop()] - seen:
            seen.add(target)
            pending.append(target)
    return goal in seen


def test_the_graph_sees_retros_modules_and_their_imports() -> None:
    graph = import_graph()
    # Anchors that hold on any layout, so an empty or edgeless graph cannot pass
    # the cycle test below by accident.
    assert {"retro.machine", "retro.cli", "retro.store.db"} <= graph.keys()
    assert "retro.machine" in graph["retro.app"]
    assert reaches(graph, "retro.cli", "retro.app")
    assert sum(len(targets) for targets in graph.values()) > 50


def test_no_module_imports_one_that_imports_it_back() -> None:
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as exc:
        circle = " -> ".join(exc.args[1])
        raise AssertionError(f"import circle: {circle}") from None
