"""The package's shape: folders by role, no import cycles, stages that never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (annotations, not imports that run)."""
    skipped = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def import_graph() -> dict[str, set[str]]:
    """Every workbench module and the workbench modules it imports when it runs, at the top or
    inside a function."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py") if "templates" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_import_cycle():
    graph = import_graph()
    # a package's __init__ re-exporting its own modules is not a cycle with them
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_stages_never_import_each_other():
    graph = import_graph()
    stages = {m for m in graph if m.startswith("workbench.stages.")}
    assert len(stages) == 5
    for stage in stages:
        assert not graph[stage] & stages, f"{stage} imports {graph[stage] & stages}"


def test_building_blocks_know_nothing_of_stages_or_runs():
    """ml, storage, tracking and config sit below the stages and the run machinery."""
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith(("workbench.ml", "workbench.storage", "workbench.tracking", "workbench.config")):
            upward = {t for t in targets if t.startswith(("workbench.stages", "workbench.run", "workbench.cli"))}
            assert not upward, f"{module} imports {upward}"


def test_storage_backends_import_only_the_base():
    graph = import_graph()
    for backend in ("workbench.storage.local", "workbench.storage.s3"):
        assert not {t for t in graph[backend] if t.startswith("workbench.storage") and t != "workbench.storage.base"}
