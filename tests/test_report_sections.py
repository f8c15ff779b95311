"""Issue 35 item 1: the report's sections are a registry (``SECTIONS``) of one signature,
``section(view) -> Section``. A section defined here (as a user's plugin would) appears in the
report of a small stored study, after the built-in ones, with its figure and its numbers; a
metric registered the same way gets a column of the per-method table. A section that breaks
the contract is a one-line PluginError. No Ray."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from search_spaces.schema import check_space
from study.report.figures import plt
from study.report.sections import SECTIONS, Section, register_section
from study.report.view import StudyView
from study.report.writer import write_report
from tests.test_metric_registry import top_gap  # noqa: F401  (a fixture)
from tests.test_report import PNG_MAGIC, SPACE, _synthetic_trial, section_table
from trainables.errors import PluginError
from trainables.layout import StudyPaths

BUILT_IN = (
    "header", "partial", "evidence", "front", "search", "comparison", "posthoc", "methods",
    "trial_intervals", "regimes", "ensemble", "importance", "sensitivity",
)  # fmt: skip


def trial_counts(view: StudyView) -> Section:
    """A user's section: how many trials each method completed, as text, figure and data."""
    counts: dict[str, int] = {}
    for trial in view.completed:
        counts[view.method(trial)] = counts.get(view.method(trial), 0) + 1
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(list(counts), list(counts.values()))
    lines = "\n".join(f"- {m}: {n}" for m, n in counts.items())
    text = f"## Trials per method\n\n{lines}\n\n![](counts.png)"
    return Section(text, {"counts.png": fig}, {"trial_counts": counts})


def _forget(name: str) -> None:
    SECTIONS._parts.pop(name, None)  # noqa: SLF001  (no unregister: tests only)
    SECTIONS._origins.pop(name, None)  # noqa: SLF001


@pytest.fixture
def counts_section() -> Iterator[None]:
    register_section("trial_counts")(trial_counts)
    try:
        yield
    finally:
        _forget("trial_counts")


def _small_study(tmp_path: Path) -> tuple[StudyPaths, object]:
    """Three SAM trials with test evidence (test_report's synthetic weighted study)."""
    space = check_space(
        {
            "fixed": {**SPACE["fixed"], "method": "sam"},
            "search": {"lr": {"loguniform": [0.02, 0.2]}, "seed": {"categorical": [0, 1]}},
            "objective": {"type": "weighted"},
            "samples": 3,
        },
        "test",
    )
    paths = StudyPaths(tmp_path / "w", str(tmp_path / "w"))
    paths.root.mkdir()
    study = optuna.create_study(study_name="w", storage=paths.optuna_url, direction="maximize")
    for number, (lr, seed, value) in enumerate([(0.05, 0, 0.8), (0.05, 1, 0.7), (0.1, 0, 0.75)]):
        _synthetic_trial(study, paths, {"lr": lr, "seed": seed}, f"t{number}", value)
    return paths, space


def test_the_built_in_sections_are_registered_in_report_order():
    assert SECTIONS.names()[: len(BUILT_IN)] == BUILT_IN
    assert all(SECTIONS.builtin(name) for name in BUILT_IN)


def test_a_plugin_section_and_metric_appear_in_the_report(tmp_path, counts_section, top_gap):  # noqa: F811
    paths, space = _small_study(tmp_path)
    md = write_report(paths, "w", space)
    text = md.read_text()
    data = json.loads((paths.report / "report.json").read_text())
    # the section: after every built-in one, its figure written, its numbers in report.json
    assert text.index("## Trials per method") > text.index("## Sensitivity to rho and gamma")
    assert "- sam: 3" in text
    assert (paths.report / "counts.png").read_bytes().startswith(PNG_MAGIC)
    assert data["trial_counts"] == {"sam": 3}
    assert "Trials per method" in (paths.report / "report.html").read_text()
    # the metric: a column of the per-method table under its title, recomputed from evidence
    header = text.split("## Best trial per method", 1)[1].split("| method |", 1)[1]
    assert "top-label gap" in header.splitlines()[0]
    assert 0.0 <= data["methods"]["sam"]["mean"][top_gap.name] <= 1.0
    assert section_table(text, "## Best trial per method")[0][0] == "sam"


def test_a_section_that_breaks_the_contract_is_a_one_line_plugin_error(tmp_path):
    with pytest.raises(PluginError, match="one argument") as err:
        register_section("two_args")(lambda view, data: Section())
    assert "\n" not in str(err.value) and "two_args" not in SECTIONS.names()
    with pytest.raises(PluginError, match="already registered"):
        register_section("front")(trial_counts)

    paths, space = _small_study(tmp_path)
    for name, section, words in [
        ("gives_text", lambda view: "## Text", "returned str, not a Section"),
        ("bad_figure", lambda view: Section("x", {"../up.png": Path("x")}), "plain file name"),
    ]:
        register_section(name)(section)
        try:
            with pytest.raises(PluginError, match=words) as err:
                write_report(paths, "w", space)
            assert "\n" not in str(err.value) and name in str(err.value)
        finally:
            _forget(name)
    write_report(paths, "w", space)  # the sections gone, the report is written again
