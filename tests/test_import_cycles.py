"""No import cycles among the modules of bft, harness, specs and bench, read statically from their source.

Every ``import`` and ``from ... import`` in every module counts, at module level
or inside a function alike: a function-level import is how a cycle is usually
hidden, and it still makes the two modules impossible to understand, test or
split apart one without the other.  Only imports under ``if TYPE_CHECKING:``
are left out, since they never run.  ``from package import name`` is an edge
to ``package.name`` when that is a module, and to the package otherwise;
importing a submodule is not counted as an edge to its parent packages (the
parent's ``__init__`` runs first, but a package re-exporting its own
submodules is not a cycle a reader has to untangle).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bft", "harness", "specs", "bench")

# Cycles known and owned elsewhere, each as the sorted modules of one strongly connected component.
# Keep this empty unless a cycle's fix belongs to another change; name the issue that removes it.
ALLOWED_CYCLES: set[tuple[str, ...]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def is_type_checking_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def imports_of(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, except those only run for a type checker."""
    found: list = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if is_type_checking_guard(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def absolute_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    targets: set[str] = set()
    for node in imports_of(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = absolute_base(module, path, node)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in modules else base)
    return {target for target in targets if target in modules and target != module}


@functools.cache  # Parsing every module takes a few seconds; the tests only read the graph.
def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {module: imported_modules(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[tuple[str, ...]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is not None:
                if successor not in index:
                    index[successor] = lowlink[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                elif successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
                continue
            work.pop()
            if work:
                lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(tuple(sorted(component)))
    return sorted(components)


def describe(component: tuple[str, ...], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{source} -> {target}" for source in component for target in sorted(graph[source] & members)]
    return "; ".join(edges)


def test_the_graph_sees_the_project() -> None:
    graph = import_graph()
    assert {"bft.core._replica", "bft.runtime._node", "harness.__main__", "specs.invariants", "bench._run"} <= set(graph)
    assert "bft.core._ready" in graph["bft.core._replica"], "relative imports must resolve"
    assert "bft.core" in graph["bft.runtime._node"], "a package import is an edge to the package"


def test_cycle_detection_finds_a_cycle_through_a_function_level_import_but_not_a_type_checking_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [("a", "b", "c")]
    tree = ast.parse("if TYPE_CHECKING:\n    import x\nelse:\n    import y\ndef f():\n    import z\n")
    assert sorted(alias.name for node in imports_of(tree) for alias in node.names) == ["y", "z"]


def test_there_are_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    unexpected = [describe(component, graph) for component in found if component not in ALLOWED_CYCLES]
    assert not unexpected, "import cycles:\n" + "\n".join(unexpected)
    stale = ALLOWED_CYCLES - set(found)
    assert not stale, f"allowed cycles that no longer exist, remove them from ALLOWED_CYCLES: {sorted(stale)}"
