"""The README kept true by test (issue 17): the settings table against the settings model, every
YAML snippet against the space schema, the commands and flags it names against the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from search_spaces.schema import check_space
from study.cli.main import _parser
from trainables.config import TrainConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
WORDS = {"all": None, "default root": None, "none": None}


def settings_rows() -> list[tuple[list[str], list[str]]]:
    """(keys, defaults) of each row of the README's settings table."""
    table = README.split("Settings (`--set key=value`", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        keys = re.findall(r"`([a-z_0-9]+)`", cells[0])
        rows.append((keys, [v.strip().strip("`") for v in cells[1].split(", ")]))
    return rows


def _default(text: str) -> object:
    if text in WORDS:
        return WORDS[text]
    try:
        return float(text)  # YAML 1.1 reads 5e-4 as a string
    except ValueError:
        return yaml.safe_load(text)


def test_the_settings_table_lists_every_setting_with_its_default():
    listed: dict[str, str | None] = {}
    for keys, defaults in settings_rows():
        for i, key in enumerate(keys):
            listed[key] = defaults[i] if len(defaults) == len(keys) else None
    missing = sorted(set(TrainConfig.model_fields) - set(listed))
    assert not missing, f"settings missing from the README's table: {missing}"
    assert not set(listed) - set(TrainConfig.model_fields), "the table names unknown settings"
    wrong = {
        key: (text, TrainConfig.model_fields[key].default)
        for key, text in listed.items()
        if text is not None and _default(text) != TrainConfig.model_fields[key].default
    }
    assert not wrong, f"defaults in the README differ from the settings model: {wrong}"


def yaml_snippets() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(yaml_snippets())))
def test_every_yaml_snippet_is_a_valid_space(index):
    data = yaml.safe_load(yaml_snippets()[index])
    check_space(data, f"README snippet {index}")


def test_every_study_subcommand_and_flag_the_readme_names_exists():
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no API
    named = set(re.findall(r"(?:\.venv/bin/study|`study|python -m study) ([a-z]+)", README))
    assert named <= set(commands), named - set(commands)
    flags = {f for c in commands.values() for a in c._actions for f in a.option_strings}  # noqa: SLF001
    inline = re.findall(r"`study [^`]*?(--[a-z-]+)", README)
    lines = re.findall(r"^(?:\.venv/bin/study|python -m study) .*$", README, flags=re.M)
    used = set(inline) | {
        f for line in lines for f in re.findall(r"(--[a-z-]+)", line.split("#")[0])
    }
    assert len(used) > 10
    assert used <= flags, used - flags


def test_every_make_target_the_readme_names_exists():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", README))
    assert {"demo", "test", "test-fast"} <= named
    assert named <= targets, f"the README names make targets the Makefile lacks: {named - targets}"


def test_the_example_space_is_the_default_space_it_names():
    """Issue 17, item 11: the README's space example is ``search_spaces/default.yaml``."""
    from search_spaces import read_space_yaml, resolve_space

    (example,) = [yaml.safe_load(y) for y in yaml_snippets() if "search:" in y]
    default = read_space_yaml(resolve_space("default"))
    assert example["search"] == default["search"]
    assert example["fixed"].items() <= default["fixed"].items()
    shared = set(example) & set(default) - {"fixed", "search"}
    assert {k: example[k] for k in shared} == {k: default[k] for k in shared}


def fenced(language: str) -> list[str]:
    """The README's code blocks in ``language``."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_python_snippet_parses_and_the_api_example_names_what_exists():
    """Issue 22, item 10: the API example's calls are the API's (what ``compare`` returns
    included), and no shell block runs a ``duckdb`` command (there is none)."""
    import ast

    from study import Study
    from study.analysis.compare import Comparison
    from study.api.train import TrainResult, train  # noqa: F401 - the example imports it

    for snippet in fenced("python"):
        ast.parse(snippet)
    (api,) = [s for s in fenced("python") if "Study.create(" in s]
    used = set(re.findall(r"\bs\.([a-z_]+)\(", api))
    assert used and all(callable(getattr(Study, name, None)) for name in used), used
    for name in set(re.findall(r"\bc\.([a-z_]+)", api)) | {"ensembles", "skipped"}:
        assert name in Comparison.__dataclass_fields__ or callable(getattr(Comparison, name))
    for name in re.findall(r"\br\.([a-z_]+)", api):
        assert name in TrainResult.__dataclass_fields__, name
    assert 'baseline="SGD"' not in api  # fails when the search sampled no SGD trial
    shell = [line.strip() for block in fenced("sh") for line in block.splitlines()]
    assert not [line for line in shell if line.startswith("duckdb")]


@pytest.mark.slow  # runs the README's smoke test as written, in a subprocess
def test_the_study_train_smoke_test_runs_as_written_in_seconds(tmp_path):
    """Issue 22, item 10: the "smoke test" line took 50 s; it states its measured time."""
    import shlex
    import subprocess
    import sys
    import time

    (line,) = [line for line in README.splitlines() if line.startswith("python -m study train ")]
    argv = shlex.split(line.split("#")[0])
    assert argv[:3] == ["python", "-m", "study"] and "smoke test" in line
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test: accuracy" in proc.stdout
    assert seconds < 90, seconds  # README: about 20 s on 2 cores (a loaded CI machine: slower)
    assert "The smoke test takes about 20 s" in README
