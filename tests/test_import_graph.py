"""The import graph of the `qat` package, read from its source (no import runs): no cycles among its modules'
module-level imports, none through function-level imports either, and no import at all from the library
up to the launcher (`experiments/`) or the table makers (`tables/`)."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "qat"
ABOVE_THE_LIBRARY = ("experiments", "tables", "analysis", "scripts")
def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The absolute names an import statement in `module` names: the module imported and, for `from X import
    y`, X.y where that is a module itself."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [source] + [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]


def imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level, function-level) names `module` imports. Module level: statements outside any function
    or class, including those under `if` / `try` (they run on import)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    top: set[str] = set()
    nested: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (nested if in_function else top).update(_imported(child, module, path.name == "__init__.py"))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, nested


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def graph(function_level: bool) -> dict[str, set[str]]:
    edges = {}
    for module in MODULES:
        top, nested = imports(module)
        edges[module] = {m for m in (top | nested if function_level else top) if m in MODULES and m != module}
    return edges


def test_the_import_reader_sees_relative_and_nested_imports():
    top, nested = imports("qat.run_dir")
    assert "qat.logging.run_reader" in top and "qat.run_reuse" in top
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_qat_modules():
    assert cycles(graph(function_level=False)) == []


def test_no_function_level_cycle_either():
    """A function-level import runs after both modules are loaded, so it does not fail, but it still ties the
    modules together: the run stacks have none (qat.run.run dispatches to a task's glue, which trains its parent
    and FP runs itself)."""
    assert cycles(graph(function_level=True)) == []
