"""The README kept true by test (issues 17, 35): short, every command it shows parsed by the CLI's
own parser, every flag and ``--set`` key one the command has, every YAML snippet a valid space
(the example one ``search_spaces/default.yaml``), every make target, file and module it names
there. The checks are functions of a document's text: ``tests/test_docs.py`` runs them on every
page of the manual too."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

from search_spaces.schema import Space, check_space
from study.cli.main import _parser
from trainables.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAX_README_LINES = 200
STUDY = re.compile(r"^(?:\.venv/bin/study|study|python -m study) ")
# Paths in backticks that name this repository's files (not a study's, nor another repository's).
REPO_DIRS = ("study/", "trainables/", "search_spaces/", "tests/", "bench/", "deploy/", "docs/")


def fenced(text: str, language: str) -> list[str]:
    """The code blocks of ``text`` in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def inline_code(text: str) -> list[str]:
    """The inline code spans of ``text``, outside its code blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


@cache
def commands() -> dict[str, object]:
    """The ``study`` command's subparsers by name."""
    parser = _parser()
    return dict(parser._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no API


def command_lines(text: str) -> list[list[str]]:
    """Every ``study`` command line of the document's shell blocks, as argv after ``study``."""
    lines = []
    for block in fenced(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if STUDY.match(line):
                argv = shlex.split(line.split(" #")[0])
                lines.append(argv[3:] if argv[0] == "python" else argv[1:])
    return lines


def check_command_lines(text: str) -> int:
    """Each command line parses with the CLI's own parser, and each ``--set`` names a setting;
    returns how many lines were checked."""
    parser = _parser()
    settings = set(TrainConfig.model_fields) | set(Space.model_fields)
    lines = command_lines(text)
    for argv in lines:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"the CLI refuses: study {shlex.join(argv)}")
        for item in getattr(args, "sets", None) or []:
            key = item.partition("=")[0]
            assert key in settings, f"study {shlex.join(argv)}: --set {key} is no setting"
    return len(lines)


def check_inline_commands(text: str) -> int:
    """Each inline ``study SUB ...`` names a subcommand and only flags that subcommand has;
    returns how many spans were checked."""
    checked = 0
    for span in inline_code(text):
        match = re.match(r"(?:\.venv/bin/study|study|python -m study) ([a-z]+)\b(.*)", span)
        if not match:
            continue
        sub, rest = match.groups()
        assert sub in commands(), f"`{span}`: no subcommand {sub!r}"
        options = {o for a in commands()[sub]._actions for o in a.option_strings}  # noqa: SLF001
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert flag in options, f"`{span}`: study {sub} has no {flag}"
        checked += 1
    return checked


def check_yaml_snippets(text: str, where: str) -> int:
    """Each YAML block is a valid space; one with ``search:`` is the default space's own."""
    from search_spaces import read_space_yaml, resolve_space

    default = read_space_yaml(resolve_space("default"))
    snippets = fenced(text, "yaml")
    for index, snippet in enumerate(snippets):
        data = yaml.safe_load(snippet)
        check_space(data, f"{where} snippet {index}")
        # Issue 17, item 11: the example space is the default space (a plugin's example space,
        # "Extending sharpcal", is run as written by tests/test_plugin_example.py)
        if "search" in data and "plugins" not in data:
            assert data["search"] == default["search"], where
            assert data["fixed"].items() <= default["fixed"].items(), where
            shared = set(data) & set(default) - {"fixed", "search"}
            assert {k: data[k] for k in shared} == {k: default[k] for k in shared}, where
    return len(snippets)


def check_make_targets(text: str) -> set[str]:
    """Every ``make TARGET`` the document names is a target of the Makefile."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", text))
    assert named <= targets, f"make targets the Makefile lacks: {named - targets}"
    return named


def check_paths(text: str) -> int:
    """Every file or directory of this repository the document names in backticks exists."""
    named = [
        span.split(":")[0].rstrip("/")
        for span in inline_code(text)
        if span.startswith(REPO_DIRS) or re.fullmatch(r"[A-Za-z_.-]+\.(md|txt|yaml|toml)", span)
    ]
    named = [n for n in named if " " not in n and "<" not in n and "*" not in n]
    # a study's files, an output's, a script BENCHMARKS.md names as removed
    ignored = {"report.md", "space.yaml", "summary.txt", "tests.txt", "bench/trials_per_hour.py"}
    missing = [n for n in named if n not in ignored and not (ROOT / n).exists()]
    assert not missing, f"no such files in the repository: {missing}"
    return len(named)


def _module_file(module: str) -> Path | None:
    """The file of ``module`` in this tree (a module or a package), or None."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _resolves(dotted: str) -> bool:
    """``dotted`` is a module of this tree, or a name in one (``trainables.errors.InputError``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if _module_file(module) is None:
            continue
        if cut == len(parts):
            return True  # a module: found, not imported (``study.__main__`` runs the command)
        obj: object = importlib.import_module(module)
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def check_modules(text: str) -> int:
    """Every sharpcal module (``study.x``, ``trainables.x.y``) named in backticks exists in this
    tree, and so does a name after it (``trainables.errors.PluginError``)."""
    named = [
        s
        for s in inline_code(text)
        if re.fullmatch(r"(study|trainables|search_spaces)(\.[A-Za-z_][A-Za-z0-9_]*)+", s)
    ]
    for dotted in named:
        assert _resolves(dotted), f"`{dotted}` is no module or name of this tree"
    return len(named)


def check_python_snippets(text: str) -> int:
    """Each Python block parses, and what it imports from sharpcal exists in this tree."""
    snippets = fenced(text, "python")
    for snippet in snippets:
        tree = ast.parse(snippet)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in (
                "study",
                "trainables",
                "search_spaces",
            ):
                for alias in node.names:
                    assert _resolves(f"{node.module}.{alias.name}"), (node.module, alias.name)
    return len(snippets)


def check_toml_snippets(text: str) -> int:
    snippets = fenced(text, "toml")
    for snippet in snippets:
        tomllib.loads(snippet)
    return len(snippets)


def check_document(text: str, where: str) -> None:
    """Every check of this module on one document."""
    check_command_lines(text)
    check_inline_commands(text)
    check_yaml_snippets(text, where)
    check_make_targets(text)
    check_paths(text)
    check_python_snippets(text)
    check_toml_snippets(text)
    assert not [
        line
        for block in fenced(text, "sh")
        for line in block.splitlines()
        if line.strip().startswith("duckdb")
    ], f"{where}: there is no duckdb command (issue 22, item 10)"


# --- the README -------------------------------------------------------------------------------


def test_the_readme_is_short_and_points_to_the_manual():
    """Issue 35, item 5: what sharpcal is, the two commands, a first study, where to read on."""
    assert len(README.splitlines()) <= MAX_README_LINES
    assert {"demo", "test", "test-fast", "docs", "docs-serve"} <= check_make_targets(README)
    assert "## A first study" in README


def test_every_command_the_readme_shows_is_one_the_cli_parses():
    assert check_command_lines(README) >= 5
    assert check_inline_commands(README) >= 3


def test_every_yaml_snippet_is_a_valid_space_and_the_example_is_the_default():
    assert check_yaml_snippets(README, "README") == 1


def test_every_file_module_and_snippet_the_readme_names_exists():
    check_document(README, "README")
    assert check_paths(README) >= 2


@pytest.mark.slow  # runs the manual's smoke test as written, in a subprocess
def test_the_study_train_smoke_test_runs_as_written_in_seconds(tmp_path):
    """Issue 22, item 10: the "smoke test" line took 50 s; it states its measured time."""
    import subprocess
    import sys
    import time

    page = (ROOT / "docs" / "getting-started.md").read_text()
    (line,) = [line for line in page.splitlines() if line.startswith("python -m study train ")]
    argv = shlex.split(line.split("#")[0])
    assert argv[:3] == ["python", "-m", "study"] and "smoke test" in line
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test: accuracy" in proc.stdout
    assert seconds < 90, seconds  # the manual: about 20 s on 2 cores (a loaded CI machine: slower)
    assert "The smoke test takes about 20 s" in page
