"""Issue 23, item 1: the objectives the user chooses — the schema, the cross-fitted ECE after
temperature scaling, and studies on val_smece and val_ece_ts end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from torchmetrics.classification import MulticlassCalibrationError

from search_spaces import SpaceError
from search_spaces.schema import check_space
from study.analysis.compare import rank_score
from study.analysis.front import front_rows
from tests.test_study import DIGITS, PARETO_SEARCH, api_study  # noqa: F401  (a fixture)
from trainables.metrics import calibration
from trainables.trial.outputs import objective_value


def _space(**objective) -> dict:
    return {"fixed": dict(DIGITS, epochs=3), "search": PARETO_SEARCH, "objective": objective}


# ----------------------------------------------------------------------------- the schema


def test_the_default_objective_is_unchanged():
    objective = check_space(_space(), "s.yaml").objective
    assert objective.metrics == ("val_accuracy", "val_ece")
    assert objective.modes == ["max", "min"] and objective.names == ["val_accuracy", "val_ece"]
    assert objective.optuna_metrics == ["val_accuracy", "val_ece"]


def test_directions_are_known_not_configured():
    objective = check_space(
        _space(type="pareto", metrics=["val_smece", "val_accuracy", "train_seconds"]), "s.yaml"
    ).objective
    assert objective.modes == ["min", "max", "min"]
    assert objective.plot_axes == ("val_smece", "val_accuracy")


def test_a_weighted_objective_names_its_two_metrics():
    objective = check_space(
        _space(type="weighted", weight=2, metrics=["val_accuracy", "val_ece_ts"]), "s.yaml"
    ).objective
    assert objective.optuna_metrics == ["objective"] and objective.modes == ["max"]
    assert objective.names == ["val_accuracy - 2 * val_ece_ts"]
    metrics = {"val_accuracy": 0.9, "val_ece_ts": 0.05, "val_ece": 0.3}
    assert objective_value(metrics, 2.0, objective.metrics) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "objective, expected",
    [
        ({"metrics": ["val_accuracy", "val_f1"]}, "unknown metric 'val_f1'"),
        ({"metrics": ["val_ece", "val_ece"]}, "named twice"),
        ({"metrics": ["val_accuracy"]}, "2 or 3 metrics"),
        ({"metrics": ["val_accuracy", "val_ece", "val_nll", "val_brier"]}, "2 or 3 metrics"),
        ({"metrics": ["val_accuracy", "train_seconds", "epochs"]}, "at most one of them a cost"),
        ({"type": "weighted", "metrics": ["val_ece", "val_accuracy"]}, "[ACCURACY, CALIBRATION]"),
        ({"type": "weighted", "metrics": ["val_accuracy", "epochs"]}, "[ACCURACY, CALIBRATION]"),
    ],
)
def test_bad_objectives_are_one_line(objective, expected):
    with pytest.raises(SpaceError) as err:
        check_space(_space(**objective), "s.yaml")
    assert expected in str(err.value) and len(str(err.value).splitlines()) == 1


def test_the_rank_score_signs_each_metric_and_leaves_costs_out():
    space = check_space(_space(metrics=["val_accuracy", "val_smece", "train_seconds"]), "s.yaml")

    class Told:
        values = [0.9, 0.04, 120.0]

    assert rank_score(Told(), space) == pytest.approx(0.86)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- cross-fitted ECE


def _oracle_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The NLL-minimising temperature by SciPy's bounded scalar search (not LBFGS)."""
    z, y = logits.double(), labels

    def nll(log_t: float) -> float:
        return torch.nn.functional.cross_entropy(z / math.exp(log_t), y).item()

    return math.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x)


def test_cross_fitted_ece_ts_scores_each_half_at_the_other_halfs_temperature():
    torch.manual_seed(0)
    n, classes = 301, 10
    logits = torch.randn(n, classes) * 4
    labels = torch.where(torch.rand(n) < 0.6, logits.argmax(1), torch.randint(0, classes, (n,)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    halves = (order[: n // 2], order[n // 2 :])
    oracle_ece = MulticlassCalibrationError(num_classes=classes, n_bins=15, norm="l1")
    expected = 0.0
    for fit_on, score_on in (halves, halves[::-1]):
        t = _oracle_temperature(logits[fit_on], labels[fit_on])
        probs = (logits[score_on].double() / t).softmax(1)
        expected += oracle_ece(probs, labels[score_on]).item() * len(score_on) / n
    assert calibration.cross_fitted_ece_ts(logits, labels) == pytest.approx(expected, abs=2e-3)
    # fitted and scored on the same samples, the ECE after scaling looks better than it is
    t_all = calibration.fit_temperature(logits, labels)
    in_sample = calibration.ece((logits / t_all).softmax(1), labels, 15).item()
    assert in_sample < calibration.cross_fitted_ece_ts(logits, labels)


def test_cross_fitted_ece_ts_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        calibration.cross_fitted_ece_ts(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))


# ----------------------------------------------------------------------------- studies


@pytest.mark.slow
def test_a_three_metric_pareto_study_on_smooth_and_cross_fitted_ece_runs_and_reports(request):
    study = request.getfixturevalue("api_study")(
        "three",
        fixed={"epochs": 3},
        search=PARETO_SEARCH,
        objective={"type": "pareto", "metrics": ["val_accuracy", "val_smece", "val_ece_ts"]},
        scheduler="asha",
        asha={"grace_period": 1, "reduction_factor": 2},
        samples=4,
        concurrency=2,
        seed=1,
    )
    study.run()
    optuna_study = study.optuna()
    assert optuna_study.metric_names == ["val_accuracy", "val_smece", "val_ece_ts"]
    assert [d.name for d in optuna_study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    for trial in optuna_study.get_trials(states=(optuna_study.trials[0].state.COMPLETE,)):
        assert trial.values == [trial.user_attrs[m] for m in optuna_study.metric_names]
        assert 0 < trial.user_attrs["val_ece_ts"] < 1 and trial.user_attrs["train_seconds"] > 0
    rows = front_rows(optuna_study, study.space)
    assert rows and {"val_smece", "val_ece_ts", "test_smece", "test_ece_ts"} <= set(rows[0])
    assert all(np.isfinite(row["test_smece"]) for row in rows)
    columns = study.compare().tables[0].columns
    assert {"test_smece", "test_ece_ts"} <= set(columns)
    report = study.report().read_text()
    assert "pareto (maximize val_accuracy, minimize val_smece, minimize val_ece_ts)" in report
    assert "**val_accuracy - val_smece - val_ece_ts**" in report


def test_compare_shows_every_objective_metric():
    from study.analysis.compare import CALIBRATION_COLUMNS, calibration_columns

    space = check_space(
        _space(metrics=["val_accuracy", "val_classwise_ece", "train_seconds"]), "s.yaml"
    )
    columns = calibration_columns(space)
    assert list(columns)[: len(CALIBRATION_COLUMNS)] == list(CALIBRATION_COLUMNS)
    assert {"test_classwise_ece", "train_seconds"} <= set(columns)
    assert calibration_columns(check_space(_space(), "s.yaml")) == CALIBRATION_COLUMNS
