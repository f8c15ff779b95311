"""Reproducible installs: every dependency bounded above its tested major, pinned in
constraints.txt inside its range, and this environment installed at those pins."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
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


PIP_INSTALL = re.compile(r"\bpip install .*-e ")  # an install of this project


def make_commands(target: str) -> list[str]:
    """The shell commands ``make TARGET`` would run here (``make -n``: nothing runs)."""
    # Under `make test`, MAKELEVEL makes a child make print "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True, env=env,
    )  # fmt: skip
    return proc.stdout.splitlines()


def installed_extras(target: str) -> set[str]:
    """The extras of sharpcal that ``make TARGET``'s pip installs (``-e '.[a,b]'``)."""
    found: set[str] = set()
    for command in make_commands(target):
        if PIP_INSTALL.search(command):
            found |= {
                e for group in re.findall(r"\.\[([a-z,]+)\]", command) for e in group.split(",")
            }
    return found


@pytest.mark.slow  # runs `make -n` and `pip install --dry-run`
def test_make_test_and_demo_install_the_extras_they_need_and_not_the_clusters():
    """What `make test` and `make demo` would install (issue 22: a behaviour, not a grep): the
    tools the README tells users to run, the test extra for the tests, the bench extra for the
    replay smoke test, the cluster's ray[default] for the cluster rehearsal (Ray's state API) and
    the docs extra for the manual's strict build (issue 35); `make demo` never the cluster's (a local study needs no dashboard or job server)."""
    assert installed_extras("test") == {"test", "tools", "bench", "cluster", "docs"}
    assert installed_extras("demo") == {"tools"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    tools = {canonicalize_name(Requirement(r).name) for r in extras["tools"]}
    assert tools == {"optuna-dashboard", "duckdb"}
    for requirement in extras["tools"] + extras["test"] + extras["bench"] + extras["docs"]:
        name = Requirement(requirement).name
        assert metadata.version(name), f"{name} is not installed here by make test-deps"
    (install,) = [c for c in make_commands("test-deps") if PIP_INSTALL.search(c)]
    dry = subprocess.run(
        [*(w for w in shlex.split(install) if w != "-q"), "--dry-run", "--no-deps"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "Would install sharpcal-" in dry.stdout


@pytest.mark.slow  # runs `make -n`
def test_make_clean_removes_what_make_demo_made():
    """Issue 17, item 9: the studies, the default MLflow store (its artifacts are in the studies)."""
    (command,) = make_commands("clean")
    words = shlex.split(command)
    assert words[:2] == ["rm", "-rf"]
    assert {"studies", "mlflow.db", "mlruns", ".venv"} <= set(words)


def test_the_cluster_extra_is_ray_default_at_ray_tunes_bounds():
    """Issue 22, item 10: `ray job submit` needs Ray's dashboard and job server."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (cluster,) = [Requirement(r) for r in project["optional-dependencies"]["cluster"]]
    (tune,) = [Requirement(r) for r in project["dependencies"] if r.startswith("ray[")]
    assert (cluster.name, cluster.extras, cluster.specifier) == ("ray", {"default"}, tune.specifier)
    for config in (ROOT / "cluster.yaml", ROOT / "deploy" / "kuberay-raycluster.yaml"):
        lines = config.read_text().splitlines()
        installs = [line for line in lines if PIP_INSTALL.search(line)]
        assert installs and all("[cluster,tools]" in line for line in installs), config


PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[a-z,]+\])?==([\w.]+)")


def test_the_cluster_files_install_with_constraints_txt_and_pin_nothing_else():
    """Issue 25, item 3: one source of versions. Every pip install in cluster.yaml and the
    KubeRay example installs this project with ``-c constraints.txt``, and every version either
    file names (``pkg==x``, the Ray image, ``rayVersion``) is constraints.txt's."""
    pinned = pins()
    for config in (ROOT / "cluster.yaml", ROOT / "deploy" / "kuberay-raycluster.yaml"):
        text = config.read_text()
        installs = [line for line in text.splitlines() if re.search(r"\bpip install\b", line)]
        for line in installs:
            if "-e " in line:
                assert "-c " in line and "constraints.txt" in line, (config.name, line)
        for name, version in PIN.findall(text):
            assert pinned.get(canonicalize_name(name)) == version, (config.name, name, version)
        for version in re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", text):
            assert version == pinned["ray"], (config.name, version)
        for version in re.findall(r'rayVersion:\s*"?([\d.]+)', text):
            assert version == pinned["ray"], (config.name, version)
