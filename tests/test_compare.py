"""`study compare`'s tables on hand-made trials: paired differences against scipy.stats, the
baseline row, and the new columns (smooth ECE, signed over-confidence, T). No Ray."""

from __future__ import annotations

import csv
import io
import math

import optuna
import pytest
import scipy.stats
from optuna.distributions import FloatDistribution

from search_spaces.schema import check_space
from study.analysis.compare import (
    comparison_tables,
    find_row,
    paired_columns,
    paired_difference,
    paired_table,
    render,
    render_paired,
)
from study.storage.records import SETTINGS_ATTR, STATUS_ATTR

SPACE = check_space(
    {
        "fixed": {"dataset": "digits", "train_subset": None, "epochs": 1},
        "search": {"lr": {"loguniform": [0.01, 0.1]}},
        "samples": 2,
        "repeats": 3,
    },
    "test",
)
# per configuration (lr) and seed: test ECE, the baseline's lower on every seed
ECE = {0.01: {0: 0.050, 1: 0.047, 2: 0.052}, 0.1: {0: 0.071, 1: 0.069, 2: 0.080}}
ACCURACY = {0.01: {0: 0.90, 1: 0.91, 2: 0.90}, 0.1: {0: 0.90, 1: 0.89, 2: 0.91}}


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for lr, eces in ECE.items():
        for seed, value in eces.items():
            attrs = {
                STATUS_ATTR: "completed",
                SETTINGS_ATTR: {"seed": seed},
                "test_ece": value,
                "test_accuracy": ACCURACY[lr][seed],
                "test_ece_ts": value / 2,
                "test_smece": value * 0.9,
                "test_overconfidence": -value,
                "temperature": 0.8,
            }
            study.add_trial(
                optuna.trial.create_trial(
                    params={"lr": lr},
                    distributions={"lr": FloatDistribution(0.01, 0.1, log=True)},
                    values=[ACCURACY[lr][seed], value],
                    user_attrs=attrs,
                )
            )
    return study


def test_paired_difference_equals_scipy_paired_t_interval():
    values = {0: 0.071, 1: 0.069, 2: 0.080, 3: 0.066, 7: 0.5}
    baseline = {0: 0.050, 1: 0.047, 2: 0.052, 3: 0.049, 9: 0.1}  # seeds 7 and 9 have no pair
    seeds = [0, 1, 2, 3]
    expected = scipy.stats.ttest_rel([values[s] for s in seeds], [baseline[s] for s in seeds])
    low, high = expected.confidence_interval(0.95)
    found = paired_difference(values, baseline)
    assert found.n == 4
    assert found.mean == pytest.approx(sum(values[s] - baseline[s] for s in seeds) / 4)
    assert (found.low, found.high) == (pytest.approx(low), pytest.approx(high))
    assert found.excludes_zero


def test_an_interval_across_zero_is_not_marked_and_one_pair_has_no_interval():
    noisy = paired_difference({0: 0.1, 1: 0.3, 2: 0.2}, {0: 0.2, 1: 0.2, 2: 0.2})
    assert noisy.low < 0 < noisy.high and not noisy.excludes_zero
    single = paired_difference({0: 0.3}, {0: 0.2})
    assert single.n == 1 and math.isnan(single.low) and not single.excludes_zero


def test_compare_shows_smooth_ece_overconfidence_and_temperature():
    (table,) = comparison_tables(_study(), SPACE)
    text = render(table, "markdown")
    header = text.splitlines()[0]
    for title in ("smECE (%)", "Over-conf. (%)", "| T |"):
        assert title in header
    assert "-4.97 ± 0.25" in text  # over-confidence in percent, signed
    assert "0.800 ± 0.000" in text  # T, not a percentage


def test_baseline_by_label_or_row_number_and_its_paired_table():
    (table,) = comparison_tables(_study(), SPACE)
    confs = table.confs
    assert find_row(confs, "1") == 0 and find_row(confs, confs[1].label) == 1
    with pytest.raises(ValueError, match="names no row"):
        find_row(confs, "9")
    paired = paired_table(confs, 0, SPACE)
    ((conf, diffs),) = paired.rows
    assert conf is confs[1]
    ece = diffs["test_ece"]
    expected = scipy.stats.ttest_rel(list(ECE[0.1].values()), list(ECE[0.01].values()))
    assert (ece.low, ece.high) == pytest.approx(tuple(expected.confidence_interval(0.95)))
    assert ece.excludes_zero and not diffs["test_accuracy"].excludes_zero
    markdown = render_paired(paired, "markdown")
    assert f"**{100 * ece.mean:+.2f} [" in markdown  # marked: the interval excludes 0
    assert f"| {100 * diffs['test_accuracy'].mean:+.2f} [" in markdown  # not marked
    latex = render_paired(paired, "latex")
    assert r"$\Delta$ ECE" in latex and r"\textbf{" in latex
    (row,) = csv.DictReader(io.StringIO(render_paired(paired, "csv")))
    assert row["pairs"] == "3" and row["excludes_zero"] == "test_ece test_ece_ts"
    assert float(row["test_ece_diff_low"]) == pytest.approx(100 * ece.low, rel=1e-5)


def test_csv_is_in_percent_like_the_tables_and_counts_the_trials():
    """Issue 17, item 7."""
    (table,) = comparison_tables(_study(), SPACE)[:1]
    rows = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    first = rows[0]
    assert first["trials"] == "3" and len(first["trial_numbers"].split()) == 3
    ece = sum(ECE[0.01].values()) / 3
    assert float(first["test_ece_mean"]) == pytest.approx(100 * ece, rel=1e-5)
    assert float(first["temperature_mean"]) == pytest.approx(0.8)  # T is not a percentage
    markdown = render(table, "markdown")
    assert f"{100 * ece:.2f}" in markdown


def _stored_study(tmp_path, trials: optuna.Study | None = None, space=SPACE) -> str:
    """A study directory as `study run` leaves it (space file, Optuna database) holding the
    trials of ``trials`` (default ``_study()``); returns the storage directory."""
    import yaml

    from trainables.layout import study_paths

    storage = str(tmp_path / "studies")
    paths = study_paths("st", storage)
    paths.root.mkdir(parents=True)
    data = {**space.model_dump(mode="json", exclude_none=True), "name": "st"}
    paths.space.write_text(yaml.safe_dump(data))
    stored = optuna.create_study(
        study_name="st", storage=paths.optuna_url, directions=["maximize", "minimize"]
    )
    for trial in (trials or _study()).get_trials():
        stored.add_trial(trial)
    return storage


def test_compare_csv_with_a_baseline_is_one_table_pandas_reads(tmp_path, capsys):
    """Issue 22, item 9: one CSV table (the paired columns join the rows), not two in a row."""
    import pandas as pd

    from study.cli.main import main

    storage = _stored_study(tmp_path)
    assert main(["compare", "st", "--storage", storage, "--baseline", "1", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert frame.shape[0] == 2  # one row per configuration, no second header read as data
    assert frame["configuration"].tolist()[1].endswith("[lr=0.1]")
    base, other = frame.to_dict("records")
    assert math.isnan(base["test_ece_diff"])  # the baseline against itself: no difference
    ece = sum(ECE[0.1].values()) / 3 - sum(ECE[0.01].values()) / 3
    assert other["test_ece_diff"] == pytest.approx(100 * ece, rel=1e-5)
    assert other["test_ece_diff_low"] < other["test_ece_diff"] < other["test_ece_diff_high"]
    assert other["excludes_zero"] == "test_ece test_ece_ts"
    assert frame["test_ece_mean"].tolist()[0] == pytest.approx(100 * sum(ECE[0.01].values()) / 3)


def test_latex_output_escapes_the_percent_sign(tmp_path, capsys):
    """Issue 22, item 9: LaTeX reads an unescaped % as a comment to the end of the line."""
    import re

    from study.cli.main import main

    storage = _stored_study(tmp_path)
    assert (
        main(["compare", "st", "--storage", storage, "--baseline", "1", "--format", "latex"]) == 0
    )
    out = capsys.readouterr().out
    assert "%" in out
    assert not re.search(r"(?<!\\)%", out), [line for line in out.splitlines() if "%" in line]


def _labelled(rhos_gammas: list[tuple[float, float]]) -> list[str]:
    space = check_space({"fixed": {"dataset": "digits", "method": "csam"}}, "test")
    study = optuna.create_study(directions=["maximize", "minimize"])
    for rho, gamma in rhos_gammas:
        study.add_trial(
            optuna.trial.create_trial(
                params={},
                distributions={},
                values=[0.9, 0.05],
                user_attrs={STATUS_ATTR: "completed", SETTINGS_ATTR: {"rho": rho, "gamma": gamma}},
            )
        )
    return [c.label for c in comparison_tables(study, space)[0].confs]


def test_labels_show_three_significant_figures_and_stay_unique():
    """Issue 22, item 9: ``CSAM (ρ=0.0564927, γ=1.58345)`` mixed precisions."""
    assert _labelled([(0.0564927, 1.58345), (0.05, 1.0)]) == [
        "CSAM (ρ=0.0565, γ=1.58)",
        "CSAM (ρ=0.05, γ=1)",
    ]
    # equal at three figures: those two keep the digits that tell them apart
    assert _labelled([(0.05649, 1.0), (0.05651, 1.0), (0.1, 1.0)]) == [
        "CSAM (ρ=0.05649, γ=1)",
        "CSAM (ρ=0.05651, γ=1)",
        "CSAM (ρ=0.1, γ=1)",
    ]


def test_the_apis_comparison_holds_the_tables_the_command_prints(tmp_path, capsys):
    """Issue 22, "the CLI over the API": `Study.compare` returns the tables, the paired table
    and the ensemble notes; the command prints its rendering and nothing else."""
    from study import Study
    from study.cli.main import main

    storage = _stored_study(tmp_path)
    comparison = Study.load("st", storage).compare(baseline=1)
    assert [c.label for c in comparison.tables[0].confs] == [c.label for c in comparison.confs]
    assert comparison.paired is not None and comparison.paired.baseline is comparison.confs[0]
    assert comparison.ensembles == [] and comparison.skipped == []
    frame = comparison.frame()
    assert frame.shape[0] == 2 and "test_ece_diff" in frame
    for style in ("markdown", "latex", "csv"):
        assert (
            main(["compare", "st", "--storage", storage, "--baseline", "1", "--format", style]) == 0
        )
        assert capsys.readouterr().out == comparison.render(style) + "\n"


def test_a_baseline_naming_no_row_is_a_study_input_error(tmp_path):
    """Issue 22, item 8: not a raw ValueError from the API."""
    from study import Study, StudyInputError

    study = Study.load("st", _stored_study(tmp_path))
    with pytest.raises(StudyInputError, match="names no row"):
        study.compare(baseline="bad")


def test_a_temperature_fit_on_a_bound_is_shown_as_such():
    study = _study()
    at_bound = study.trials[0]  # one seed of the first configuration stopped on a bound
    study.add_trial(
        optuna.trial.create_trial(
            params=at_bound.params,
            distributions=at_bound.distributions,
            values=at_bound.values,
            user_attrs={
                **at_bound.user_attrs,
                SETTINGS_ATTR: {"seed": 3},
                "temperature": 0.05,
                "temperature_at_bound": 1.0,
            },
        )
    )
    text = render(comparison_tables(study, SPACE)[0], "markdown")
    rows = [line for line in text.splitlines() if "(on a bound)" in line]
    assert len(rows) == 1 and "lr=0.01" in rows[0], text


HELDOUT = {"heldout": {"classes": [6, 9]}}
TASKS_SPACE = check_space(
    {
        "fixed": {"dataset": "digits", "train_subset": None, "epochs": 1},
        "points": [
            {"method": "sgd"},
            {"method": "sam"},
            {"method": "sgd", "ood": HELDOUT},
            {"method": "sam", "ood": HELDOUT},
            {"method": "csam", "ood": {"heldout": {"classes": [3]}}},
        ],
        "repeats": 3,
    },
    "test",
)
# per point and seed: test ECE (each held-out row 1 pp above its own SGD)
TASK_ECE = [
    [0.05, 0.06, 0.07],
    [0.03, 0.04, 0.05],
    [0.20, 0.21, 0.22],
    [0.21, 0.22, 0.23],
    [0.1] * 3,
]


def _tasks_study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for point, eces in zip(TASKS_SPACE.points, TASK_ECE):
        for seed, value in enumerate(eces):
            attrs = {
                STATUS_ATTR: "completed",
                SETTINGS_ATTR: {**point, "seed": seed},
                **{m: value for m in ("test_ece", "test_accuracy", "test_ece_ts")},
                "ood_digits_auroc": 0.9 - value,
            }
            if "ood" not in point:
                attrs["fashion_mnist_c_ece"] = 2 * value
            study.add_trial(optuna.trial.create_trial(values=[0.9, value], user_attrs=attrs))
    return study


def test_rows_trained_without_some_classes_are_paired_with_the_baseline_on_their_classes():
    """Issue 24, item 5: a held-out row's test set is another task."""
    (table,) = comparison_tables(_tasks_study(), TASKS_SPACE)[:1]
    labels = [c.label for c in table.confs]
    assert labels == [
        "SGD",
        "SAM (ρ=0.1)",
        "SGD [without classes 6, 9]",
        "SAM (ρ=0.1) [without classes 6, 9]",
        "CSAM (ρ=0.1, γ=1) [without classes 3]",
    ]
    paired = paired_table(table.confs, 0, TASKS_SPACE)
    found = {conf.label: (paired.baseline_of(conf).label, d) for conf, d in paired.rows}
    assert set(found) == {labels[1], labels[3]}  # SGD without 6, 9 is its task's baseline
    assert found[labels[1]][0] == "SGD"
    assert found[labels[1]][1]["test_ece"].mean == pytest.approx(-0.02)
    assert found[labels[3]][0] == labels[2]
    assert found[labels[3]][1]["test_ece"].mean == pytest.approx(0.01)
    assert [c.label for c in paired.unpaired] == [labels[4]]  # no SGD without class 3
    markdown = render_paired(paired, "markdown")
    assert f"{labels[3]} − {labels[2]}" in markdown
    rows = {
        r["configuration"]: r for r in csv.DictReader(io.StringIO(render_paired(paired, "csv")))
    }
    assert rows[labels[3]]["baseline"] == labels[2] and rows[labels[1]]["baseline"] == "SGD"


def test_a_study_of_points_shows_every_point_and_a_search_its_best_per_method(monkeypatch):
    """Issue 24, item 5: paper-fashion-mnist's 15 points were cut to the best per method and
    loss, dropping SGD, SAM and CSAM for their held-out-class twins."""
    import study.analysis.compare as compare

    monkeypatch.setattr(compare, "MAX_ROWS", 1)
    assert len(compare.configurations(_tasks_study(), TASKS_SPACE)) == 5
    (best,) = compare.configurations(_study(), SPACE)  # one method, one loss, one task
    assert best.settings == {"lr": 0.01}  # the lower val ECE


def test_the_paired_table_covers_the_ood_auroc_and_corruption_ece_the_study_logged():
    tables = comparison_tables(_tasks_study(), TASKS_SPACE)
    columns = paired_columns(tables)
    assert columns["ood_digits_auroc"].title == "Δ DIGITS AUROC"
    assert columns["fashion_mnist_c_ece"].title == "Δ FMNIST-C ECE"
    paired = paired_table(tables[0].confs, 0, TASKS_SPACE, columns)
    found = {conf.label: d for conf, d in paired.rows}
    assert found["SAM (ρ=0.1)"]["fashion_mnist_c_ece"].mean == pytest.approx(-0.04)
    heldout = found["SAM (ρ=0.1) [without classes 6, 9]"]
    assert heldout["ood_digits_auroc"].mean == pytest.approx(-0.01)
    assert heldout["fashion_mnist_c_ece"].n == 0  # not evaluated on that task
    line = next(x for x in render_paired(paired, "markdown").splitlines() if "6, 9] −" in x)
    assert "| 3 |" in line and "n/a" in line  # its pairs: 3 seeds
