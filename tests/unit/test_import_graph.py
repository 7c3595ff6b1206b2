"""No two modules of the package import each other, through any path.

A cycle hides an ordering dependency (whichever module is imported first sees the other half
built) and usually a module with two jobs. The graph is read from the source with ``ast``, so
an import inside a function counts as much as one at the top: it runs as soon as that function
does, and it still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Each source folder and the name its modules import under (pyproject's package-dir).
PACKAGES = {"mptui": ROOT / "mptui", "mptui.engine": ROOT / "engine"}


def module_files() -> dict[str, tuple[Path, bool]]:
    """Every module's dotted name -> (its file, whether it is a package's ``__init__``)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_package else parts)))
            modules[name] = (path, is_package)
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``tree`` imports anywhere in its body.

    ``from pkg import name`` imports the module ``pkg.name`` when there is one, else ``pkg``
    itself; relative imports are resolved against ``module``'s package.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in known else base for t in targets]
        else:
            continue
        found.update(t for t in targets if t in known and t != module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {
        name: imported_names(ast.parse(path.read_text()), name, is_package, known)
        for name, (path, is_package) in modules.items()
    }


def tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that all reach each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each tangle, as a closed path."""
    return [cycle_through(graph, group) for group in tangles(graph)]


def cycle_through(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A closed path inside ``group`` starting and ending at its first module (breadth-first)."""
    start, members = group[0], set(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = came_from[node]
                    return [start, *reversed(path[1:]), start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {group}")


def test_the_reader_sees_both_kinds_of_import():
    graph = import_graph()
    assert "mptui.engine.runner" in graph and "mptui.cli" in graph
    # A package's __init__ importing its own modules, and a module importing a sibling.
    assert "mptui.engine.model.adapters.base" in graph["mptui.engine.model.adapters"]
    assert "mptui.engine.errors" in graph["mptui.engine.model.adapters.base"]


def test_the_cycle_finder_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_another():
    graph = import_graph()
    report = [
        f"{' -> '.join(cycle_through(graph, group))}  (tangle: {', '.join(group)})"
        for group in tangles(graph)
    ]
    assert not report, "import cycles:\n" + "\n".join(report)
