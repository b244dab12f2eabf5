"""The store floor has no import cycle, not even one hidden in a function-local import."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

STORE = Path(__file__).resolve().parent.parent / "runner" / "store"


def _imports(source: str) -> set[str]:
    """Modules of runner.store that `source` imports anywhere except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "runner.store":
                found.update(f"runner.store.{a.name}" for a in node.names)
            elif node.module.startswith("runner.store."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("runner.store."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"runner.store.{p.stem}": p for p in STORE.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path.read_text()) & set(modules) - {name}
            for name, path in modules.items()}


def test_the_store_modules_import_each_other_without_a_cycle() -> None:
    try:
        graphlib.TopologicalSorter(_graph()).prepare()
    except graphlib.CycleError as e:
        pytest.fail("import cycle: " + " -> ".join(e.args[1]))


def test_the_probe_sees_a_cycle() -> None:
    """Control: the walker finds imports inside functions, so it would see the old cycle."""
    graph = _graph()
    graph["runner.store.layout"] = {"runner.store.gc"}  # gc -> … -> layout -> gc
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
    inner = _imports("def f():\n    from runner.store.gc import x\n")
    assert inner == {"runner.store.gc"}
    typed = _imports("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from runner.store.gc import x\n")
    assert typed == set()
