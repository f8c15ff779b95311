"""The result of a study as Optuna holds it: the Pareto front (or the best trial) as a table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection

from search_spaces.schema import Space
from study.analysis.compare import describe, is_completed
from study.analysis.epochs import epoch_of, kept_epochs
from study.search.rungs import nondominated_fronts
from study.storage.records import LATE_FRONT_ATTR, STATUS_ATTR, TRIAL_ID_ATTR, trial_settings

TEST_COLUMNS = ("test_accuracy", "test_ece", "test_ece_ts")


def metric_columns(space: Space) -> list[str]:
    """The front table's metrics: the study's objective metrics, then the test metrics (the
    test counterpart of each val objective metric too)."""
    columns = list(space.objective.metrics)
    tests = [*TEST_COLUMNS, *(f"test_{m[4:]}" for m in columns if m.startswith("val_"))]
    return columns + list(dict.fromkeys(tests))


def load_optuna_study(name: str, storage_url: str) -> optuna.Study:
    """The study's Optuna study, read from its storage."""
    return optuna.load_study(study_name=name, storage=storage_url)


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front of a multi-objective study, or its single best trial."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    try:
        return [study.best_trial]
    except ValueError:  # no completed trial
        return []


def front_points(study: optuna.Study, space: Space) -> list[optuna.trial.FrozenTrial]:
    """The front over (trial, epoch) pairs: ``best_trials``, where a trial kept late epochs, taken
    over each completed trial at each of its kept epochs (``kept_epochs``), ordered by trial and
    epoch."""
    trials = study.get_trials(deepcopy=False)
    if not any(LATE_FRONT_ATTR in t.user_attrs for t in trials):
        return best_trials(study)
    points = [v for t in trials if is_completed(t) for v in kept_epochs(t, space)]
    if not points:
        return best_trials(study)
    signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    values = np.array([[s * v for s, v in zip(signs, p.values, strict=True)] for p in points])
    if len(signs) == 1:
        return [points[int(np.argmin(values[:, 0]))]]
    return [points[i] for i in nondominated_fronts(values)[0]]


def front_rows(study: optuna.Study, space: Space) -> list[dict[str, Any]]:
    """One row per front point (``front_points``): number, the epoch (with late checkpoints on),
    Tune id, status, hyperparameters, val and test metrics."""
    rows = []
    for trial in front_points(study, space):
        row: dict[str, Any] = {"trial": trial.number}
        if space.late_fraction:
            row["epoch"] = epoch_of(trial)
        row |= {
            "tune_id": trial.user_attrs.get(TRIAL_ID_ATTR, ""),
            "status": trial.user_attrs.get(STATUS_ATTR, ""),
        }
        if space.points:
            row["configuration"] = describe(trial_settings(trial), space).replace(" ", "")
        row.update({name: trial.params.get(name, "-") for name in space.search})
        row.update({m: trial.user_attrs.get(m, math.nan) for m in metric_columns(space)})
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain aligned text table of ``rows`` (all sharing the first row's keys)."""
    if not rows:
        return "(no completed trials)"
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
