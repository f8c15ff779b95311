"""The manual kept true by test (issue 35, item 5): every page passes the README's checks
(commands parsed by the CLI, snippets valid, files, modules and make targets that exist), its
generated tables come from the code (the settings table is ``TrainConfig.model_fields`` plus the
parts' declared settings, every setting described), and ``mkdocs build --strict`` succeeds."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml

from tests.test_readme import (
    ROOT,
    check_command_lines,
    check_document,
    check_inline_commands,
    check_modules,
    check_paths,
    check_yaml_snippets,
    fenced,
)
from trainables.config import TrainConfig

DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


def _hooks():
    spec = importlib.util.spec_from_file_location("sharpcal_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def page(name: str) -> str:
    """A page as the manual shows it: its markers filled by the hook."""
    return hooks.expand((DOCS / name).read_text(), name)


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r": ([\w/.-]+\.md)$", config, flags=re.M))
    assert nav == set(PAGES)


@pytest.mark.parametrize("name", PAGES)
def test_every_command_snippet_file_and_module_of_the_page_exists(name):
    check_document(page(name), name)
    check_modules(page(name))


def test_the_manual_shows_commands_snippets_and_the_example_space():
    """The checks above have something to check: the commands, the flags, the spaces."""
    whole = "\n".join(page(name) for name in PAGES)
    assert check_command_lines(whole) >= 15
    assert check_inline_commands(whole) >= 40
    assert check_yaml_snippets(whole, "manual") >= 1
    assert check_paths(whole) >= 15
    assert len(fenced(whole, "python")) >= 4
    spaces = [yaml.safe_load(s) for s in fenced(whole, "yaml")]
    assert [s for s in spaces if "search" in s], "no example space in the manual"


def test_everything_the_old_readme_said_about_commands_is_still_checked():
    """A wrong flag on a page is found: the check is not vacuous."""
    with pytest.raises(AssertionError, match="no --nope"):
        check_inline_commands("`study run default --nope`")
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        check_command_lines("```sh\n.venv/bin/study compare\n```\n")
    with pytest.raises(AssertionError, match="no setting"):
        check_command_lines("```sh\n.venv/bin/study train --set nope=1\n```\n")
    with pytest.raises(AssertionError, match="no such files"):
        check_paths("`study/nope.py`")
    with pytest.raises(AssertionError, match="no module"):
        check_modules("`study.nope`")


def test_the_api_example_names_what_exists():
    """Issue 22, item 10: the API example's calls are the API's (what ``compare`` returns
    included)."""
    from study import Study
    from study.analysis.compare import Comparison
    from study.api.train import TrainResult

    (api,) = [s for s in fenced(page("guide/studies.md"), "python") if "Study.create(" in s]
    used = set(re.findall(r"\bs\.([a-z_]+)\(", api))
    assert used and all(callable(getattr(Study, name, None)) for name in used), used
    for name in set(re.findall(r"\bc\.([a-z_]+)", api)) | {"ensembles", "skipped"}:
        assert name in Comparison.__dataclass_fields__ or callable(getattr(Comparison, name))
    for name in re.findall(r"\br\.([a-z_]+)", api):
        assert name in TrainResult.__dataclass_fields__, name
    assert 'baseline="SGD"' not in api  # fails when the search sampled no SGD trial


# --- the generated tables ---------------------------------------------------------------------


def test_the_settings_table_lists_every_setting_with_its_type_default_and_description():
    """Issue 17's README test, on the generated table: every setting of the model, its default
    as the model has it, and a description for each."""
    rows = {r["name"]: r for r in hooks.settings_rows()}
    assert set(TrainConfig.model_fields) <= set(rows)
    for name, field in TrainConfig.model_fields.items():
        assert rows[name]["default"] == hooks.default_text(field.default)
        assert rows[name]["description"], f"setting {name} has no description"
    assert rows["epochs"]["default"] == str(TrainConfig().epochs)
    assert rows["method"]["type"].startswith("one of `sgd`")
    assert rows["test_subset"]["type"] == "int or none"
    texts = yaml.safe_load((DOCS / "reference" / "settings.yaml").read_text())
    assert set(texts) <= set(rows), f"settings.yaml describes no setting: {set(texts) - set(rows)}"
    table = page("reference/settings.md")
    for name in TrainConfig.model_fields:
        assert f"| `{name}` |" in table


def test_a_setting_without_a_description_is_a_warning_the_strict_build_fails_on(
    monkeypatch, caplog
):
    texts = hooks.descriptions()
    del texts["seed"]
    monkeypatch.setattr(hooks, "descriptions", lambda: texts)
    with caplog.at_level("WARNING", logger="mkdocs.hooks.sharpcal"):
        hooks.settings_rows()
    (record,) = [r for r in caplog.records if "'seed'" in r.getMessage()]
    assert "setting 'seed' has no description" in record.getMessage()
    assert record.name.startswith("mkdocs.")  # what --strict counts


def test_a_parts_declared_settings_join_the_table():
    """A setting a registered part declares is a row of the table, its description its own."""
    from pydantic import BaseModel, Field

    from trainables import parts
    from trainables.registry import Registry

    class Settings(BaseModel):
        docs_test_alpha: float = Field(0.3, description="the test part's alpha")

    class TestPart(parts.Part):
        title = "Test part"
        description = "a part of the docs' test"
        reference = "nobody, 2026"
        settings = Settings

    registry: Registry[object] = Registry("widget")
    registry.register("docs_test_part", TestPart)
    parts.SETTING_REGISTRIES.append(registry)
    try:
        rows = {r["name"]: r for r in hooks.settings_rows()}
    finally:
        parts.SETTING_REGISTRIES.remove(registry)
    row = rows["docs_test_alpha"]
    assert (row["type"], row["default"]) == ("float", "0.3")
    assert row["description"] == "the test part's alpha (widget `docs_test_part`'s setting)"
    table = hooks.registry_table(registry)
    assert "| `docs_test_part` | Test part | a part of the docs' test | nobody, 2026 |" in table
    assert f"`{__name__}`" in table


def test_the_registries_the_hook_tables_are_registries():
    from trainables.registry import Registry

    for spec in hooks.REGISTRIES:
        assert isinstance(hooks.load_registry(spec), Registry), spec
    assert hooks.expand("<!-- sharpcal:table registries -->")


def test_an_unknown_marker_or_registry_fails_the_build():
    with pytest.raises(hooks.MarkerError, match="unknown marker"):
        hooks.expand("<!-- sharpcal:table nope -->", "x.md")
    with pytest.raises(hooks.MarkerError, match="no registry 'nope'"):
        hooks.expand("<!-- sharpcal:table registry nope -->", "x.md")
    for path in ("nope.md", "../etc/passwd", "docs"):
        with pytest.raises(hooks.MarkerError, match="no such file"):
            hooks.expand(f"<!-- sharpcal:include {path} -->", "x.md")


def test_the_cli_reference_shows_every_subcommand_and_flag():
    from tests.test_readme import commands

    text = page("reference/cli.md")
    for name, sub in commands().items():
        assert f"## `study {name}`" in text
        for action in sub._actions:  # noqa: SLF001
            for option in action.option_strings:
                assert option in text, (name, option)


def test_the_layout_table_lists_every_module():
    text = page("reference/layout.md")
    for path in ROOT.glob("*/**/*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in hooks.PACKAGES:
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            assert f"| `{name}` |" in text, name


def test_the_objectives_table_is_the_objectives():
    from trainables.metrics.objectives import DIRECTIONS

    text = page("reference/metrics.md")
    for name, direction in DIRECTIONS.items():
        assert f"| `{name}` | {'maximised' if direction == 'max' else 'minimised'} |" in text


def test_the_benchmarks_page_is_benchmarks_md_with_its_figures_found():
    text = page("benchmarks.md")
    assert (ROOT / "BENCHMARKS.md").read_text().splitlines()[0] in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert figures and all((DOCS / f).is_file() for f in figures), figures


@pytest.mark.slow  # mkdocs in a subprocess: about 10 s
def test_mkdocs_build_strict_succeeds(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    assert "<code>rank1_eval_samples</code>" in settings and "sharpcal:table" not in settings
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "Study" in api and "load_plugins" in api
