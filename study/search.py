"""Optuna behind Ray Tune: the define-by-run space, the sampler, and how finished trials are told.

Ray's ``OptunaSearch`` tells every trial that ends with a result as COMPLETE. sharpcal tells
trials stopped early by ASHA as PRUNED (their partial values would mislead the sampler), records
each trial's status and test metrics as Optuna user attributes, and on restore fails the Optuna
trials that a killed driver asked for but never handed to Tune.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search_spaces.schema import Space

log = logging.getLogger(__name__)

STATUS_ATTR = "status"
TRIAL_ID_ATTR = "tune_trial_id"
RECORDED_PREFIXES = ("test_", "val_")
RECORDED_KEYS = ("temperature", "epoch", "train_loss")


class SpaceSampler:
    """The define-by-run function: draws the ``search`` section in file order, honouring ``when``,
    and returns the fixed settings as constants. A plain class so that Tune can pickle it."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = dict(self.space.fixed)
        for name, dist in self.space.search.items():
            if dist.applies(chosen):
                chosen[name] = dist.suggest(trial, name)
        return dict(self.space.fixed)


def build_sampler(space: Space) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler named by the space."""
    seed = space.seed
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


def trial_status(result: dict[str, Any] | None, error: bool) -> str:
    """completed, diverged, pruned (stopped by the scheduler before its last epoch) or failed."""
    if error or not result:
        return "failed"
    if result.get("diverged"):
        return "diverged"
    if result.get("epoch", 0) < result.get("epochs_total", 0):
        return "pruned"
    return "completed"


class StudySearch(OptunaSearch):
    """``OptunaSearch`` that tells ASHA-stopped trials as PRUNED and records status and metrics."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        status = trial_status(result, error)
        try:
            ot_trial.set_user_attr(STATUS_ATTR, status)
        except optuna.exceptions.UpdateFinishedTrialError:  # told before a driver crash
            self._completed_trials.add(trial_id)
            return None
        ot_trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        for key, value in (result or {}).items():
            recorded = key.startswith(RECORDED_PREFIXES) or key in RECORDED_KEYS
            if recorded and isinstance(value, (int, float)):
                ot_trial.set_user_attr(key, float(value))
        if status == "pruned":
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return None
        return super().on_trial_complete(trial_id, result, error)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # The driver may have died after telling Optuna a trial's result but before Tune saved
        # that: such a trial is done, and Tune's second report of it must not be told again.
        finished = {
            t.number for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()
        }
        for trial_id, ot_trial in self._ot_trials.items():
            if ot_trial.number in finished:
                self._completed_trials.add(trial_id)
        known = {t.number for t in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                log.warning(
                    "failing Optuna trial %d: asked before a crash, never run", trial.number
                )
                self._ot_study.tell(trial.number, state=TrialState.FAIL)


def build_search(space: Space, study_name: str, storage_url: str) -> StudySearch:
    """The searcher of a study, its Optuna study persisted in ``storage_url``."""
    objective = space.objective
    metric: str | list[str] = objective.metrics if objective.type == "pareto" else "objective"
    mode: str | list[str] = objective.modes if objective.type == "pareto" else "max"
    return StudySearch(
        space=SpaceSampler(space),
        metric=metric,
        mode=mode,
        sampler=build_sampler(space),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(storage_url),
    )
