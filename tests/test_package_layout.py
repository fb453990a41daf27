"""The package's import graph, read from the source (ast), counting imports inside functions too:
nothing imports upward into the CLI, and no new import circle appears."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adapter_convert"
ENTRY_POINTS = {"adapter_convert.cli", "adapter_convert.__main__"}
# The package has no import circle; a listed exception would go here, with its reason.
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its source."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import ner` imports a module
    return {module for module in found if module in MODULES}


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name) for name in MODULES}


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_relative_lazy_and_submodule_imports():
    assert "adapter_convert.pipeline" in imports_of("adapter_convert.demo")  # inside run_demo
    assert "adapter_convert.demo.ner" in imports_of("adapter_convert.demo")  # from . import ner
    assert "adapter_convert.errors" in imports_of("adapter_convert.demo.minilm")  # from ..errors import
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == {frozenset({"a", "b"})}


def test_nothing_imports_the_cli():
    importers = sorted(name for name, imported in import_graph().items() if "adapter_convert.cli" in imported)
    assert set(importers) <= ENTRY_POINTS, f"modules importing upward into the CLI: {sorted(set(importers) - ENTRY_POINTS)}"


def test_no_new_import_circles():
    found = circles(import_graph())
    new = found - KNOWN_CIRCLES
    assert not new, f"import circles: {[sorted(circle) for circle in new]}"
    assert KNOWN_CIRCLES <= found, f"circles gone, remove them from KNOWN_CIRCLES: {[sorted(c) for c in KNOWN_CIRCLES - found]}"
