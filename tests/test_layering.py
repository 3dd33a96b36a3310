"""The library's import layering, read from the source with ``ast``.

``ultradino_monai`` is the library; ``data_prep``, ``nnunet_baselines`` and ``bundles`` sit on
top of it and may import it, never the other way round (docs/design.md, "Who imports what").
Inside the library the import graph has no cycles. Every ``import`` / ``from ... import``
statement counts, at module level or inside a function, and so does ``importlib.import_module``
with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ultradino_monai"
FORBIDDEN = ("data_prep", "nnunet_baselines", "bundles")


def _module_name(path: Path) -> tuple[str, bool]:
    """(dotted module name, is a package ``__init__``) of a file under the repository root."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _library_modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        name, is_package = _module_name(path)
        modules[name] = (path, is_package)
    return modules


def imports_of(
    source: str, module: str, is_package: bool, known: set[str] | frozenset = frozenset()
) -> list[tuple[str, int]]:
    """Every module ``source`` imports, as ``(dotted name, line)``, relative imports resolved.

    ``from X import Y`` yields ``X.Y`` when that is a module in ``known`` (a submodule import),
    else ``X``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in known else base, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """(intra-library import graph, forbidden imports as ``path:line: name``)."""
    modules = _library_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    forbidden = []
    for name, (path, is_package) in modules.items():
        for target, line in sorted(set(imports_of(path.read_text(), name, is_package, known)), key=lambda t: t[1]):
            top = target.split(".")[0]
            if top in FORBIDDEN:
                forbidden.append(f"{path.relative_to(REPO)}:{line}: imports {target}")
            if top == PACKAGE and target != name:
                # the nearest library module the name refers to (``pkg.mod.attr`` -> ``pkg.mod``)
                while target not in known:
                    target = target.rpartition(".")[0]
                if target != name:
                    graph[name].add(target)
    return graph, forbidden


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path ``[a, b, ..., a]``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        members = set(component)
        if len(component) == 1 and component[0] not in graph.get(component[0], ()):
            continue
        # walk inside the component from its smallest name until a node repeats
        start = min(component)
        path, seen = [start], {start: 0}
        while True:
            successor = min(s for s in graph[path[-1]] if s in members)
            if successor in seen:
                cycles.append(path[seen[successor] :] + [successor])
                break
            seen[successor] = len(path)
            path.append(successor)
    return cycles


def test_the_walker_sees_local_relative_and_dynamic_imports():
    """The checks below are only as good as this reader: it must see what Python would import."""
    source = (
        "import os\n"
        "from . import sibling\n"
        "from ..data import datalist\n"
        "def load():\n"
        "    from data_prep.ingest.pixels import PixelSpec\n"
        "    import nnunet_baselines\n"
        "    return importlib.import_module('bundles.x')\n"
    )
    known = {"ultradino_monai.engines.sibling", "ultradino_monai.data.datalist"}
    found = [name for name, _ in imports_of(source, "ultradino_monai.engines.demo", False, known)]
    assert found.count("os") == 1
    assert "ultradino_monai.engines.sibling" in found
    assert "ultradino_monai.data.datalist" in found
    assert "data_prep.ingest.pixels" in found and "nnunet_baselines" in found and "bundles.x" in found
    package_init = [name for name, _ in imports_of("from .knn import knn_classify\n", "ultradino_monai.ssl", True)]
    assert package_init == ["ultradino_monai.ssl.knn"]


def test_find_cycles_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_library_never_imports_the_layers_above_it():
    _, forbidden = _graph()
    assert not forbidden, "the library imports a layer above it:\n" + "\n".join(forbidden)


def test_library_import_graph_has_no_cycles():
    graph, _ = _graph()
    assert len(graph) > 40  # the walk found the library
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in the library:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
