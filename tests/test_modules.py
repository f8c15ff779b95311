"""The module graph, read from the source: no import circles between the project's modules (top
level or inside functions; imports for type checkers only do not count), and the study layout
and lock importable without torch or Ray, and a study's readers (status, front, compare,
report) without Ray."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables", "search_spaces")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).glob("*.py"))
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, top_level_only: bool = False) -> set[str]:
    """The modules ``module`` imports (project modules by their full name, others by their
    top-level package)."""
    found: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if top_level_only and inner:
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child, inner)

    visit(ast.parse(MODULES[module].read_text()), False)
    return {name if name in MODULES else name.split(".")[0] for name in found} - {module}


def test_no_import_circles_between_the_projects_modules():
    graph = {m: imports(m) & set(MODULES) - set(PACKAGES) for m in MODULES}
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        for nxt in sorted(graph[module]):
            walk(nxt, [*path, module])
        done.add(module)

    for module in graph:
        walk(module, [])


def top_level_closure(start: str) -> set[str]:
    """Every module imported, transitively, when ``start`` is imported (top-level imports)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module in MODULES:
            todo += imports(module, top_level_only=True)
    return seen


def test_the_layout_and_the_lock_need_neither_torch_nor_ray():
    for start in ("trainables.layout", "study.storage.lock"):
        seen = top_level_closure(start)
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
        assert "ray" not in top_level_closure(start), start
