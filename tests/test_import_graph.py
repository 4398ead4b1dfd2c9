"""The package imports one way: a layered stack, checked from its own sources (function-level imports included).

Layers, bottom to top (a module may import its own layer and the layers below, never above):

1. ``errors``, ``atomic``, ``outputs`` (output folders), ``validate`` (value checks), ``compat`` (third-party
   internals, one module per library): no project imports beyond this layer.
2. ``data``, ``models``, ``devices``, ``adapters`` (family descriptions; they build analog modules only
   through the ``ConversionContext`` protocol the analog layer implements), ``stress``, ``measures``.
3. ``analog`` and ``artifacts`` (fingerprints of converted models).
4. ``calibration``, ``baselines``.
5. ``evaluation``, ``experiments``.
6. ``cli`` and the package root (lazy re-exports).

Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted. Within a layer the
module graph must have no cycles either (an import of ``pkg.mod`` counts as an import of
``pkg.mod``, an import of ``pkg`` as one of ``pkg/__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "romer_aihwkit"
PACKAGE = "romer_aihwkit"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "atomic", "outputs", "validate", "compat"),
    ("data", "models", "devices", "adapters", "stress", "measures"),
    ("analog", "artifacts"),
    ("calibration", "baselines"),
    ("evaluation", "experiments"),
    ("cli", ""),
]

KNOWN_UPWARD: set[tuple[str, str]] = set()
"""Upward imports not yet removed, as ``(importer, imported)``; the list may only shrink."""

KNOWN_CYCLES: list[set[str]] = []
"""Import cycles not yet removed; the list may only shrink."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "bundled" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """``module -> project modules it imports`` for every module of the package."""
    modules = _sources()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]  # `import a.b.c` of a package attribute
                if target.startswith(PACKAGE) and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest matching prefix."""
    rel = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (rel == prefix or rel.startswith(prefix + ".") or prefix == "" and rel == "") and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_higher_layer(graph):
    upward = upward_imports(graph)
    new = sorted(upward - KNOWN_UPWARD)
    assert not new, "upward imports (lower layer -> higher layer):\n" + "\n".join(f"  {a} -> {b}" for a, b in new)
    stale = sorted(KNOWN_UPWARD - upward)
    assert not stale, f"remove these from KNOWN_UPWARD, they are gone: {stale}"


def test_no_import_cycles(graph):
    found = cycles(graph)
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join("  " + " <-> ".join(sorted(c)) for c in new)
    stale = [c for c in KNOWN_CYCLES if c not in found]
    assert not stale, f"remove these from KNOWN_CYCLES, they are gone: {stale}"


def test_the_checker_sees_function_level_imports_and_skips_type_checking(tmp_path):
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n"
                     "def f():\n    from .b import Y\n    import romer_aihwkit.c\n")
    names = [getattr(n, "module", None) or n.names[0].name for n in _imports(tree)]
    assert names == ["typing", "b", "romer_aihwkit.c"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert upward_imports({f"{PACKAGE}.errors": {f"{PACKAGE}.cli"}}) == {(f"{PACKAGE}.errors", f"{PACKAGE}.cli")}
