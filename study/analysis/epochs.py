"""A trial at one of its kept late epochs (``trainables.trial.late``): the same Optuna trial, its
metrics, objective values and model those of that epoch. The front (``study.analysis.front``),
the comparison at the chosen epoch (``study.analysis.compare``), the evidence read for it and
``study register`` all take such views where they took trials."""

from __future__ import annotations

import copy
from typing import Any

import optuna

from search_spaces.schema import Space
from study.storage.records import (
    EPOCH_ATTR,
    LATE_FRONT_ATTR,
    RECORDED_KEYS,
    recorded_prefixes,
)


def at_epoch(
    trial: optuna.trial.FrozenTrial, entry: dict[str, Any], space: Space
) -> optuna.trial.FrozenTrial:
    """``trial`` as it stood at one of its kept late epochs (``entry``, from its own front): its
    metrics and objective values those of that epoch, ``EPOCH_ATTR`` naming it; the trial
    itself when ``entry`` is its last epoch."""
    if entry["epoch"] == trial.user_attrs.get("epoch"):
        return trial
    view = copy.deepcopy(trial)
    measured = recorded_prefixes()
    attrs = {
        k: v
        for k, v in trial.user_attrs.items()
        if not (k.startswith(measured) or k in RECORDED_KEYS or k == "objective")
    }
    view.user_attrs = {**attrs, **entry, EPOCH_ATTR: int(entry["epoch"])}
    view.values = [float(entry[m]) for m in space.objective.optuna_metrics]
    return view


def epoch_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The epoch whose model and metrics ``trial`` (or a view ``at_epoch`` made) stands for."""
    epoch = trial.user_attrs.get(EPOCH_ATTR, trial.user_attrs.get("epoch"))
    return None if epoch is None else int(epoch)


def kept_epochs(trial: optuna.trial.FrozenTrial, space: Space) -> list[optuna.trial.FrozenTrial]:
    """A completed trial at each epoch of its own late front, and at its last epoch (only the
    trial itself when late checkpoints were off)."""
    views = [at_epoch(trial, e, space) for e in trial.user_attrs.get(LATE_FRONT_ATTR) or []]
    if not any(v is trial for v in views):
        views.append(trial)
    return sorted(views, key=lambda v: epoch_of(v) or 0)
