"""The module graph, read from the source (issue 35: a layout that shows the architecture).

- No import circle between the project's modules, whether the imports are at the top, inside
  functions or for type checkers only (``if TYPE_CHECKING``).
- The packages are layered: ``trainables`` (what runs inside a trial) imports neither ``study``
  nor ``search_spaces``; ``search_spaces`` (data and its schema) does not import ``study``; and
  inside ``study`` and ``trainables`` no two subpackages import each other.
- What must stay light does: the study layout and lock need neither torch nor Ray, a study's
  readers need no Ray, and ``study --help`` loads no torch, Ray, MLflow, Optuna or pandas.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables", "search_spaces")
HEAVY = {"torch", "ray", "mlflow", "optuna", "pandas", "pyarrow", "matplotlib", "timm"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p): p
    for package in PACKAGES
    for p in sorted((ROOT / package).rglob("*.py"))
    if "__pycache__" not in p.parts
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str:
    """A project module named by an import (``a.b.c`` or its attribute ``a.b.c.X``), else the
    top-level package of a third-party one."""
    while name and name not in MODULES:
        if "." not in name:
            return name
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str, runtime_top_level: bool = False) -> set[str]:
    """The modules ``module`` imports: project modules by their full name, others by their
    top-level package. Every import counts (inside functions, for type checkers) unless
    ``runtime_top_level``: then only what importing ``module`` runs."""
    found: set[str] = set()
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            skip = isinstance(child, ast.If) and _is_type_checking(child)
            if runtime_top_level and skip:
                continue
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if runtime_top_level and inner:
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return {_resolve(name) for name in found} - {module}


def _parents(module: str) -> list[str]:
    """The packages Python imports before ``module`` (``a`` and ``a.b`` for ``a.b.c``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = walk(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for node in sorted(graph):
        found = walk(node, [])
        if found:
            return found
    return None


def test_no_import_circle_between_modules_type_only_ones_included():
    graph = {m: imports(m) & set(MODULES) for m in MODULES}
    # a package's __init__ re-exporting from its modules is how a package is read, not a circle
    graph = {m: {n for n in deps if n not in _parents(m)} for m, deps in graph.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def _subpackage(module: str) -> str:
    """``study.search`` for ``study.search.rungs``; a root module is its own unit."""
    parts = module.split(".")
    return (
        ".".join(parts[:2]) if len(parts) > 2 or MODULES[module].name == "__init__.py" else module
    )


def test_the_packages_are_layered_and_no_two_subpackages_import_each_other():
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        for dep in imports(module) & set(MODULES):
            top, dep_top = module.split(".")[0], dep.split(".")[0]
            if top == "trainables":
                assert dep_top == "trainables", f"{module} (inside a trial) imports {dep}"
            if top == "search_spaces":
                assert dep_top != "study", f"{module} (data and schema) imports {dep}"
            a, b = _subpackage(module), _subpackage(dep)
            if a != b and dep not in _parents(module):
                edges.setdefault(a, set()).add(b)
    cycle = _cycle(edges)
    assert cycle is None, "subpackages import each other: " + " -> ".join(cycle or [])


def runtime_closure(start: str) -> set[str]:
    """Every module importing ``start`` runs, transitively (its packages' ``__init__`` too)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module in MODULES:
            todo += imports(module, runtime_top_level=True)
            todo += [p for p in _parents(module) if p in MODULES]
    return seen


def test_study_help_loads_nothing_heavy():
    seen = runtime_closure("study.__main__")
    assert not seen & HEAVY, sorted(seen & HEAVY)


def test_the_layout_and_the_lock_need_neither_torch_nor_ray():
    for start in ("trainables.layout", "study.storage.lock", "trainables.errors"):
        seen = runtime_closure(start)
        assert not seen & {"torch", "ray", "pydantic"}, (start, sorted(seen))


def test_the_readers_of_a_study_need_no_ray():
    for start in (
        "study.api.status",
        "study.analysis.front",
        "study.analysis.compare",
        "study.report.writer",
        "study.storage.records",
        "study.storage.evidence",
        "study.storage.files",
    ):
        assert "ray" not in runtime_closure(start), start
