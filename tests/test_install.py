"""Reproducible installs: every dependency bounded above its tested major, pinned in
constraints.txt inside its range, and this environment installed at those pins."""

from __future__ import annotations

import importlib.metadata as metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + sum(extras.values(), [])]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pairs}


def test_every_dependency_has_an_upper_bound():
    unbounded = [str(r) for r in requirements() if not any(s.operator == "<" for s in r.specifier)]
    assert not unbounded


def test_every_dependency_is_pinned_within_its_range_and_installed_at_the_pin():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pinned[name]), f"{req.name}=={pinned[name]} outside {req}"
        assert metadata.version(req.name) == pinned[name], f"{req.name} is not installed at its pin"


def test_the_tools_the_readme_names_are_in_the_tools_extra_that_make_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tools = {Requirement(r).name for r in project["optional-dependencies"]["tools"]}
    assert tools == {"optuna-dashboard", "duckdb"}
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[tools]'" in makefile and "-e '.[test,tools]'" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "optuna-dashboard sqlite:///" in readme and "duckdb" in readme.lower()


def test_make_demo_installs_the_tools_the_readme_tells_users_to_run():
    """Issue 17, item 10: optuna-dashboard and duckdb come with `make demo` (the tools extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tools = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["tools"]
    }
    assert {"optuna-dashboard", "duckdb"} <= tools
    makefile = (ROOT / "Makefile").read_text()
    venv_recipe = makefile.split("\nvenv:", 1)[1].split("\n\n", 1)[0]
    assert "'.[tools]'" in venv_recipe and "demo: venv" in makefile
    for tool in ("optuna-dashboard", "duckdb"):
        assert metadata.version(tool)  # installed here by the same extra


def test_make_clean_removes_what_make_demo_made():
    """Issue 17, item 9: the studies, the default MLflow store (its artifacts are in the studies)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nclean:", 1)[1].split("\n\n", 1)[0]
    assert {"studies", "mlflow.db", "mlruns", "$(VENV)"} <= set(recipe.split())
