"""Issue 35 item 1: the metric registry. A metric defined here (one class and its registration,
as a user's plugin would) is computed by a real digits Trainer on every split and logged under
the usual keys, is recomputed from stored evidence, validates as an objective, gets a diverged
value, and shows its title in ``study compare``'s tables and the trial's test line; a metric
that breaks the contract or takes a taken name is a one-line PluginError. No Ray."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution

from search_spaces.schema import check_space
from study.analysis.compare import comparison_tables, paired_columns, render
from study.cli.main import result_line
from study.storage.evidence import of_probs, split_metrics
from study.storage.records import SETTINGS_ATTR, STATUS_ATTR
from trainables.config import parse_config
from trainables.engine.loop import Trainer
from trainables.errors import PluginError
from trainables.metrics import METRICS, Metric, calibration, register_metric
from trainables.metrics.objectives import directions, diverged_metrics, with_role

NAME = "test_top_gap"


class TopGap(Metric):
    """|mean confidence - accuracy|: a calibration metric defined outside sharpcal."""

    title = "Top gap"
    long_title = "top-label gap"
    role = "calibration"
    diverged = 1.0

    def compute(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        conf, pred = probs.max(dim=1)
        return (conf.double().mean() - (pred == labels).double().mean()).abs()


def _forget(name: str) -> None:
    # the registry has no unregister (a plugin's part lives as long as the process); tests do
    METRICS._parts.pop(name, None)  # noqa: SLF001
    METRICS._origins.pop(name, None)  # noqa: SLF001


@pytest.fixture
def top_gap() -> Iterator[Metric]:
    """``TopGap`` registered for one test (other tests pin the built-in set)."""
    register_metric(NAME)(TopGap)
    try:
        yield METRICS.get(NAME)
    finally:
        _forget(NAME)


def _gap(probs: torch.Tensor, labels: torch.Tensor) -> float:
    conf, pred = probs.max(dim=1)
    return abs(conf.double().mean().item() - (pred == labels).double().mean().item())


def test_a_registered_metric_is_computed_on_every_split_by_a_digits_trainer(
    top_gap, digits_settings
):
    trainer = Trainer(parse_config({**digits_settings, "epochs": 1}))
    result = trainer.fit()
    assert result.status == "completed"
    (record,) = result.history
    assert 0.0 <= record[f"val_{NAME}"] <= 1.0
    final = result.final
    logits, labels = trainer.predictions("test")
    probs = logits.softmax(dim=1)
    assert final[f"test_{NAME}"] == _gap(probs, labels)
    # the built-in metrics keep their numbers beside it
    assert final["test_ece"] == calibration.ece(probs, labels, 15).item()
    assert final["test_nll"] == calibration.nll(logits, labels).item()
    # and the test line names it
    assert f" {NAME} " in result_line(final)


def test_calibration_report_keeps_built_in_numbers_with_a_plugin_metric(top_gap):
    g = torch.Generator().manual_seed(3)
    logits, labels = 3 * torch.randn(400, 6, generator=g), torch.randint(0, 6, (400,), generator=g)
    _forget(NAME)
    before = calibration.calibration_report(logits, labels, 6, temperature=1.4)
    register_metric(NAME)(TopGap)
    after = calibration.calibration_report(logits, labels, 6, temperature=1.4)
    assert set(after) == {*before, NAME}
    assert all(after[k] == before[k] for k in before)  # identical, not approximately
    assert after[NAME] == pytest.approx(_gap(logits.softmax(dim=1), labels))


def test_a_registered_metric_is_recomputed_from_stored_probabilities(top_gap):
    g = torch.Generator().manual_seed(5)
    probs = torch.randn(300, 4, generator=g).softmax(dim=1).double()
    labels = torch.randint(0, 4, (300,), generator=g)
    found = split_metrics(of_probs(probs, labels, 1.0))
    assert found[NAME] == pytest.approx(_gap(probs, labels))
    assert list(found)[-1] == NAME  # registration order: built-ins first


def test_a_registered_metric_is_an_objective_with_a_diverged_value(top_gap):
    key = f"val_{NAME}"
    assert directions()[key] == "min" and key in with_role("calibration")
    assert diverged_metrics()[key] == 1.0
    base = {"fixed": {"dataset": "digits", "epochs": 1}, "samples": 2}
    pareto = check_space({**base, "objective": {"metrics": ["val_accuracy", key]}}, "s.yaml")
    assert pareto.objective.modes == ["max", "min"]
    weighted = {"type": "weighted", "weight": 2.0, "metrics": ["val_accuracy", key]}
    check_space({**base, "objective": weighted}, "s.yaml")
    with pytest.raises(ValueError) as err:
        check_space({**base, "objective": {"metrics": ["val_accuracy", "val_nope"]}}, "s.yaml")
    assert key in str(err.value) and "val_nope" in str(err.value)


def test_compare_shows_a_registered_metric_with_its_title_and_percent(top_gap):
    space = check_space(
        {
            "fixed": {"dataset": "digits", "train_subset": None, "epochs": 1},
            "search": {"lr": {"loguniform": [0.01, 0.1]}},
            "samples": 2,
        },
        "t",
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    for lr, gap in ((0.01, 0.031), (0.1, 0.052)):
        attrs = {STATUS_ATTR: "completed", SETTINGS_ATTR: {"seed": 0}, f"test_{NAME}": gap}
        attrs.update({"test_accuracy": 0.9, "test_ece": 0.05})
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions={"lr": FloatDistribution(0.01, 0.1, log=True)},
                values=[0.9, 0.05],
                user_attrs=attrs,
            )
        )
    tables = comparison_tables(study, space)
    text = render(tables[0], "markdown")
    assert "Top gap (%)" in text.splitlines()[0]
    assert "**3.10**" in text and "5.20" in text  # percent, the lower marked best
    assert f"test_{NAME}" not in paired_columns(tables)  # not paired unless it says so


def _kind(**attrs: object) -> type[Metric]:
    return type("Bad", (TopGap,), attrs)


@pytest.mark.parametrize(
    "name, part, words",
    [
        ("ece", TopGap, "already registered"),
        ("Bad-Name", TopGap, "lower-case"),
        ("bad_metric", _kind(direction="max"), "minimised"),
        ("bad_metric", _kind(diverged=None), "diverged"),
        ("bad_metric", _kind(diverged=math.inf), "diverged"),
        ("bad_metric", _kind(title=""), "title"),
        ("bad_metric", _kind(role="speed"), "role"),
        ("bad_metric", _kind(needs_temperature=True), "no val value"),
        ("bad_metric", type("Bare", (Metric,), {"title": "x"}), "compute"),
        ("bad_metric", dict, "subclass"),
    ],
)
def test_a_metric_that_breaks_the_contract_is_a_one_line_plugin_error(name, part, words):
    with pytest.raises(PluginError) as err:
        register_metric(name)(part)
    message = str(err.value)
    assert "\n" not in message and words in message, message
    assert "bad_metric" not in METRICS.names()


def test_built_in_metadata_reproduces_the_old_tables():
    """The tables the registry replaced (issue 35's inventory T1-T6, T9-T11, T15): same keys,
    same order, same values."""
    from study.analysis.compare import base_paired_columns, main_columns, objective_only_columns
    from study.analysis.posthoc import posthoc_metrics

    assert list(directions()) == [
        *("val_accuracy", "val_ece", "val_adaece", "val_smece", "val_classwise_ece"),
        *("val_ece_ts", "val_nll", "val_brier", "train_seconds", "epochs"),
    ]
    assert diverged_metrics() == {
        "val_accuracy": 0.0,
        **dict.fromkeys(("val_ece", "val_adaece", "val_smece", "val_classwise_ece"), 1.0),
        "val_ece_ts": 1.0,
        "val_nll": 24 * np.log(2),
        "val_brier": 2.0,
    }
    main = main_columns()
    assert [(k, c.title, c.better, c.percent) for k, c in main.items()] == [
        ("test_accuracy", "Accuracy", "max", True),
        ("test_ece", "ECE", "min", True),
        ("test_adaece", "AdaECE", "min", True),
        ("test_smece", "smECE", "min", True),
        ("test_ece_ts", "ECE (TS)", "min", True),
        ("test_overconfidence", "Over-conf.", None, True),
        ("temperature", "T", None, False),
        ("test_nll", "NLL", "min", False),
        ("test_brier", "Brier", "min", False),
    ]
    assert list(objective_only_columns()) == ["test_classwise_ece", "train_seconds", "epochs"]
    assert {k: c.title for k, c in base_paired_columns().items()} == {
        "test_accuracy": "Δ Accuracy",
        "test_ece": "Δ ECE",
        "test_ece_ts": "Δ ECE (TS)",
    }
    assert [m.name for m in posthoc_metrics()] == ["accuracy", "ece", "smece", "nll"]
