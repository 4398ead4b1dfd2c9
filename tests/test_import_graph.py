"""The package's boundaries, checked from its own sources (AST; nothing is imported).

**Layers**, bottom to top (a module may import its own layer and the layers below, never above):

0. ``errors``: imports nothing of the project.
1. ``atomic``, ``outputs`` (output folders), ``validate`` (value checks), ``checked_files`` (checked
   readers and content digests), ``compat`` (third-party internals, one module per library),
   ``deprecation`` (dict-style reading of the typed records).
2. ``data``, ``models``, ``devices``, ``adapters`` (family descriptions; they build analog modules only
   through the ``ConversionContext`` protocol the analog layer implements), ``stress``, ``measures``.
3. ``analog`` (with the fingerprints of converted models, ``analog.fingerprint``).
4. ``calibration``, ``baselines``.
5. ``evaluation``, ``experiments``.
6. ``cli`` and the package root (lazy re-exports).

**Edges.** Every import statement at any depth counts (function-level ones included), except under
``if TYPE_CHECKING:`` (annotations only). An import of ``pkg.mod`` counts as an import of ``pkg.mod``,
an import of ``pkg`` as one of ``pkg/__init__``; and since importing ``pkg.sub.mod`` executes
``pkg/__init__`` and ``pkg/sub/__init__`` first, those parent packages are edges too, except the
parents the importer itself lives in (they are already being executed) and the package root.

**Rules.**

(a) No import of a higher layer (:data:`KNOWN_UPWARD` may only shrink).
(b) No import cycle between modules, lazy edges included (:data:`KNOWN_CYCLES` may only shrink).
(c) No private import across packages: ``from ..analog.matrix import _foo`` in ``baselines`` is an
    error; a package's own modules may share private names. A *package* here is one entry of
    :data:`LAYERS` (``analog``, ``models``, ...). :data:`KNOWN_PRIVATE` may only shrink.
(d) No imports between peers: two packages of one layer are independent of each other, unless the
    pair is in :data:`PEER_ALLOWED`, each with the reason. The foundation layers 0 and 1 are
    exempt: their modules are single files that share the error types.
(e) Every function-level import of a project module says on its line why it is lazy, in one of two
    fixed forms, and the test checks the claim:

    - ``# lazy: cycle <what>``: importing it at module level would close an import cycle (the
      imported module reaches the importer through module-level imports);
    - ``# lazy: CLI start-up``: the importer is loaded when the CLI starts (module-level imports
      from ``romer_aihwkit.cli``, or the package root) and the imported module is not.

    Any other function-level project import belongs at the top of the module. Third-party imports
    (transformers, lm_eval, matplotlib, aihwkit, ...) may be lazy without a comment.
    :data:`KNOWN_LAZY` may only shrink.
(f) No class in the package is longer than :data:`MAX_CLASS_LINES` lines (no exceptions).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "romer_aihwkit"
PACKAGE = "romer_aihwkit"

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("atomic", "outputs", "validate", "checked_files", "compat", "deprecation"),
    ("data", "models", "devices", "adapters", "stress", "measures"),
    ("analog",),
    ("calibration", "baselines"),
    ("evaluation", "experiments"),
    ("cli", ""),
]

FOUNDATION = 2
"""Layers below this index are exempt from the peer rule (d)."""

PEER_ALLOWED: dict[tuple[str, str], str] = {
    ("data", "models"): "the bundled tokenizer is the bundled models' (data.blocks tokenizes with it)",
    ("stress", "adapters"): "a stress control edits a model's MoE blocks, found by the family adapters",
    ("measures", "data"): "a measure runs a model over token batches (data.blocks.iter_model_batches)",
    ("experiments", "evaluation"): "an experiment measures with the evaluation functions",
}
"""Peer imports allowed, as ``(importer package, imported package)``: the reason."""

KNOWN_UPWARD: set[tuple[str, str]] = set()
"""Upward imports not yet removed, as ``(importer, imported)``; the list may only shrink."""

KNOWN_CYCLES: list[set[str]] = []
"""Import cycles not yet removed; the list may only shrink."""

KNOWN_PRIVATE: set[tuple[str, str]] = set()
"""Cross-package private imports not yet removed, as ``(importer, "module.name")``; may only shrink."""

KNOWN_LAZY: set[tuple[str, str]] = set()
"""Function-level project imports without a checked reason, as ``(importer, imported)``; may only shrink."""

MAX_CLASS_LINES = 300

LAZY_COMMENT = re.compile(r"#\s*lazy:\s*(cycle\b.*|CLI start-up)\s*$")


@dataclass(frozen=True)
class Import:
    """One project import statement's edges."""

    importer: str
    target: str  # the imported module (a package means its __init__)
    line: int
    lazy: bool  # inside a function
    names: tuple[str, ...]  # names imported from ``target`` (``from m import a, b``)
    comment: str  # the source line's ``# lazy: ...`` reason, or ""
    parent: bool = False  # an edge to a parent package that importing ``target`` executes


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


def _imports_with_depth(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks, with whether it is inside a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    return [node for node, _ in _imports_with_depth(tree)]


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def project_imports(modules: dict[str, Path] | None = None, texts: dict[str, str] | None = None) -> list[Import]:
    """Every project import of every module (``texts`` replaces file contents, for the self-test)."""
    modules = modules if modules is not None else _sources()
    found: list[Import] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        text = texts[name] if texts is not None else path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node, lazy in _imports_with_depth(ast.parse(text)):
            if isinstance(node, ast.Import):
                pairs = [(alias.name, ()) for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                pairs = []
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    pairs.append((sub, ()) if sub in modules else (source, (alias.name,)))
            match = LAZY_COMMENT.search(lines[node.lineno - 1])
            for target, names in pairs:
                while target and target not in modules:
                    target = target.rpartition(".")[0]  # `import a.b.c` of a package attribute
                if not target.startswith(PACKAGE) or target == name:
                    continue
                found.append(Import(name, target, node.lineno, lazy, names, match.group(1) if match else ""))
                own = set(_parents(name)) | {name}
                for parent in _parents(target):
                    if parent != PACKAGE and parent not in own and parent in modules:
                        found.append(Import(name, parent, node.lineno, lazy, (), "", parent=True))
    return found


def import_graph(imports: list[Import] | None = None, eager_only: bool = False) -> dict[str, set[str]]:
    """``module -> project modules it imports`` (``eager_only``: module-level imports only)."""
    imports = imports if imports is not None else project_imports()
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set())
        graph.setdefault(imp.target, set())
        if not (eager_only and imp.lazy):
            graph[imp.importer].add(imp.target)
    for name in _sources():
        graph.setdefault(name, set())
    return graph


def _unit(module: str) -> tuple[int, str]:
    """``(layer index, package)`` of a module: the longest matching entry of :data:`LAYERS`."""
    rel = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    best: tuple[int, str] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (rel == prefix or rel.startswith(prefix + ".") or prefix == "" and rel == "") and (
                    best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest matching prefix."""
    return _unit(module)[0]


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)}


def peer_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """``(importer package, imported package)`` for imports between two packages of one layer."""
    found = set()
    for a, targets in graph.items():
        layer, unit = _unit(a)
        for b in targets:
            other_layer, other = _unit(b)
            if other_layer == layer and other != unit and layer >= FOUNDATION:
                found.add((unit, other))
    return found


def private_imports(imports: list[Import]) -> set[tuple[str, str]]:
    """``(importer, "module.name")`` for private names (or modules) imported from another package."""
    found = set()
    for imp in imports:
        if _unit(imp.importer)[1] == _unit(imp.target)[1]:
            continue
        if any(part.startswith("_") and not part.startswith("__") for part in imp.target.split(".")):
            found.add((imp.importer, imp.target))
        for n in imp.names:
            if n.startswith("_") and not n.startswith("__"):
                found.add((imp.importer, f"{imp.target}.{n}"))
    return found


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return False


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def lazy_problems(imports: list[Import]) -> dict[tuple[str, str], str]:
    """``(importer, imported) -> problem`` for every function-level import whose reason is missing or wrong."""
    eager = import_graph(imports, eager_only=True)
    startup = _closure(eager, f"{PACKAGE}.cli") | {PACKAGE}
    problems: dict[tuple[str, str], str] = {}
    for imp in imports:
        if not imp.lazy or imp.parent:
            continue
        key = (imp.importer, imp.target)
        where = f"{imp.importer.replace('.', '/')}.py:{imp.line}"
        if imp.comment.startswith("cycle"):
            executed = [imp.target] + [q for q in _parents(imp.target) if q not in _parents(imp.importer)]
            if not any(_reaches(eager, m, imp.importer) for m in executed if m != PACKAGE):
                problems.setdefault(key, f"{where}: says `lazy: cycle` but {imp.target} does not import "
                                         f"{imp.importer} at module level; import it at the top")
        elif imp.comment == "CLI start-up":
            if imp.importer not in startup:
                problems.setdefault(key, f"{where}: says `lazy: CLI start-up` but the CLI does not load "
                                         f"{imp.importer} at start-up; import it at the top")
            elif imp.target in startup:
                problems.setdefault(key, f"{where}: says `lazy: CLI start-up` but the CLI loads "
                                         f"{imp.target} at start-up anyway; import it at the top")
        else:
            problems.setdefault(key, f"{where}: function-level import of {imp.target} without "
                                     "`# lazy: cycle <what>` or `# lazy: CLI start-up`; import it at the top")
    return problems


def long_classes() -> list[str]:
    found = []
    for name, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    found.append(f"{name}.{node.name}: {length} lines")
    return found


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


def _check_known(found: set, known: set, what: str, show) -> None:
    new = sorted(found - known)
    assert not new, f"{what}:\n" + "\n".join(f"  {show(x)}" for x in new)
    stale = sorted(known - found)
    assert not stale, f"remove these from the known list, they are gone: {stale}"


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return project_imports()


@pytest.fixture(scope="module")
def graph(imports) -> dict[str, set[str]]:
    return import_graph(imports)


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_higher_layer(graph):
    _check_known(upward_imports(graph), KNOWN_UPWARD, "upward imports (lower layer -> higher layer)",
                 lambda x: f"{x[0]} -> {x[1]}")


def test_no_import_cycles(graph):
    found = cycles(graph)
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join("  " + " <-> ".join(sorted(c)) for c in new)
    stale = [c for c in KNOWN_CYCLES if c not in found]
    assert not stale, f"remove these from KNOWN_CYCLES, they are gone: {stale}"


def test_no_private_imports_across_packages(imports):
    _check_known(private_imports(imports), KNOWN_PRIVATE, "private names imported from another package "
                 "(make them public, or move the code that needs them)", lambda x: f"{x[0]} imports {x[1]}")


def test_peer_packages_are_independent(graph):
    found = peer_imports(graph)
    new = sorted(found - set(PEER_ALLOWED))
    assert not new, ("imports between packages of one layer (move the shared code down a layer, or add the pair "
                     "to PEER_ALLOWED with the reason):\n" + "\n".join(f"  {a} -> {b}" for a, b in new))
    stale = sorted(set(PEER_ALLOWED) - found)
    assert not stale, f"remove these from PEER_ALLOWED, they are gone: {stale}"


def test_every_lazy_import_says_why(imports):
    problems = lazy_problems(imports)
    new = sorted(set(problems) - KNOWN_LAZY)
    assert not new, "function-level imports:\n" + "\n".join(f"  {problems[k]}" for k in new)
    stale = sorted(KNOWN_LAZY - set(problems))
    assert not stale, f"remove these from KNOWN_LAZY, they are fixed or gone: {stale}"


def test_no_class_is_longer_than_the_limit():
    found = long_classes()
    assert not found, (f"classes over {MAX_CLASS_LINES} lines (split them into parts):\n  " + "\n  ".join(found))


# ---------------------------------------------------------------------------------- the checker itself
def test_the_checker_sees_function_level_imports_and_skips_type_checking(tmp_path):
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n"
                     "def f():\n    from .b import Y\n    import romer_aihwkit.c\n")
    names = [getattr(n, "module", None) or n.names[0].name for n in _imports(tree)]
    assert names == ["typing", "b", "romer_aihwkit.c"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert upward_imports({f"{PACKAGE}.errors": {f"{PACKAGE}.cli"}}) == {(f"{PACKAGE}.errors", f"{PACKAGE}.cli")}


def _fake(texts: dict[str, str]) -> list[Import]:
    def path(name: str) -> Path:
        is_package = any(other.startswith(name + ".") for other in texts)
        return ROOT / (name.replace(".", "/")[len(PACKAGE) + 1:] + ("/__init__.py" if is_package else ".py"))

    modules = {name: path(name) for name in texts}
    return project_imports(modules, texts)


def test_the_checker_counts_parent_packages_privates_and_peers():
    p = PACKAGE
    imports = _fake({
        f"{p}.analog": "from .matrix import M\n",
        f"{p}.analog.matrix": "from ._low import x\ndef _helper(): ...\n",
        f"{p}.analog._low": "x = 1\n",
        f"{p}.baselines": "",
        f"{p}.baselines.smooth": "from ..analog.matrix import _helper\nfrom ..evaluation.stats import m\n",
        f"{p}.evaluation": "",
        f"{p}.evaluation.stats": "m = 1\n",
        f"{p}.calibration": "",
        f"{p}.calibration.base": "from ..baselines.smooth import x\n",
    })
    graph = import_graph(imports)
    # importing analog.matrix from baselines executes analog/__init__; inside analog it does not
    assert f"{p}.analog" in graph[f"{p}.baselines.smooth"]
    assert f"{p}.analog" not in graph[f"{p}.analog.matrix"]
    assert private_imports(imports) == {(f"{p}.baselines.smooth", f"{p}.analog.matrix._helper")}
    assert peer_imports(graph) == {("calibration", "baselines")}
    assert upward_imports(graph) == {(f"{p}.baselines.smooth", f"{p}.evaluation.stats"),
                                     (f"{p}.baselines.smooth", f"{p}.evaluation")}


def test_the_checker_checks_the_reason_of_each_lazy_import():
    p = PACKAGE
    imports = _fake({
        f"{p}.cli": "from .app import a\n",
        f"{p}.cli.app": "def a():\n    from ..models import m  # lazy: CLI start-up\n"
                        "    from ..errors import E  # lazy: CLI start-up\n",
        f"{p}.errors": "",
        f"{p}.models": "def m():\n    from .data import d  # lazy: cycle data -> models\n"
                       "    from .stress import s  # lazy: CLI start-up\n    from .measures import q\n",
        f"{p}.data": "from .models import m\n",
        f"{p}.stress": "",
        f"{p}.measures": "",
        f"{p}.validate": "from .errors import E\n",
    })
    imports.append(Import(f"{p}.cli.app", f"{p}.validate", 9, False, (), ""))
    problems = lazy_problems(imports)
    assert set(problems) == {(f"{p}.cli.app", f"{p}.errors"), (f"{p}.models", f"{p}.stress"),
                             (f"{p}.models", f"{p}.measures")}
    assert "loads" in problems[(f"{p}.cli.app", f"{p}.errors")]  # errors comes with validate anyway
    assert "does not load" in problems[(f"{p}.models", f"{p}.stress")]
    assert "without" in problems[(f"{p}.models", f"{p}.measures")]
