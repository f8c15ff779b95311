"""The Optuna side of a study's search: the sampler its space names, the define-by-run function
that draws a trial's settings in the space's order, and the objectives' names."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from search_spaces.schema import Space
from study.storage.records import SETTINGS_ATTR


class SpaceSampler:
    """The define-by-run function: draws the ``search`` section in file order, honouring ``when``,
    and returns the fixed settings (and a point's or repeat's settings) as constants. A plain
    class so that Tune can pickle it."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        settings = dict(trial.user_attrs.get(SETTINGS_ATTR) or {})
        constants = {
            **self.space.fixed,
            **{k: v for k, v in settings.items() if k not in self.space.search},
        }
        chosen: dict[str, Any] = dict(constants)
        for name, dist in self.space.search.items():
            if dist.applies(chosen):
                chosen[name] = dist.suggest(trial, name)
        return constants


def name_objectives(study: optuna.Study, space: Space) -> None:
    """Give the study's objectives their names (optuna-dashboard labels its axes with them)."""
    with warnings.catch_warnings():  # experimental in Optuna since 3.2, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(space.objective.names)


def build_sampler(space: Space, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by the space, seeded with its seed plus ``offset``."""
    seed = None if space.seed is None else space.seed + offset
    if space.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if space.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid = {name: list(d.categorical or []) for name, d in space.search.items()}
    return optuna.samplers.GridSampler(grid, seed=seed)
