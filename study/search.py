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
# Settings a trial takes besides its Optuna params: a point's settings and a repeat's seed.
SETTINGS_ATTR = "settings"
REPEAT_OF_ATTR = "repeat_of"  # the Optuna trial number whose configuration this one repeats
RECORDED_PREFIXES = ("test_", "val_", "ood_", "cifar10_c_", "cifar100_c_", "imagenet_c_")
RECORDED_KEYS = ("temperature", "epoch", "train_loss")


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


def trial_settings(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What a trial set over the space's ``fixed``: its Optuna params and its point's/seed."""
    return {**(trial.user_attrs.get(SETTINGS_ATTR) or {}), **trial.params}


def configuration_key(trial: optuna.trial.FrozenTrial) -> tuple[tuple[str, str], ...]:
    """Equal for the trials of one configuration (the seeds of a repeat)."""
    return tuple(sorted((k, repr(v)) for k, v in trial_settings(trial).items() if k != "seed"))


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
    """``OptunaSearch`` that tells ASHA-stopped trials as PRUNED and records status and metrics,
    runs the space's ``points`` first and repeats every configuration with ``repeats`` seeds.

    Points and repeats are enqueued in Optuna (params plus a ``settings`` user attribute) just
    before they are asked for, so each Tune trial stays one Optuna trial. The queues live in this
    object, which Tune saves with its experiment state: a resumed study goes on where it was."""

    def __init__(self, space: Space, **kwargs: Any) -> None:
        super().__init__(space=SpaceSampler(space), **kwargs)
        self._study_space = space
        self._points_left: list[dict[str, Any]] = [dict(p) for p in space.points]
        self._repeats_left: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def _enqueue(self, settings: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        params = {k: v for k, v in settings.items() if k in self._study_space.search}
        attrs = {SETTINGS_ATTR: settings, **(extra or {})}
        self._ot_study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials:
            if self._repeats_left:
                self._enqueue(*self._repeats_left.pop(0))
            elif self._points_left:
                self._enqueue(self._points_left.pop(0))
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        repeats = self._study_space.repeats
        if repeats > 1 and REPEAT_OF_ATTR not in ot_trial.user_attrs:
            settings = {**(ot_trial.user_attrs.get(SETTINGS_ATTR) or {}), **ot_trial.params}
            base_seed = int(config.get("seed", self._study_space.train_config().seed))
            for k in range(1, repeats):
                seeded = {**settings, "seed": base_seed + k}
                self._repeats_left.append((seeded, {REPEAT_OF_ATTR: ot_trial.number}))
        return config

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


def fail_orphans(study: optuna.Study) -> list[int]:
    """Once every trial of a study has ended, fail the Optuna trials still RUNNING: asked for
    by a driver that was killed before Tune recorded the trial, so nothing will ever tell them.
    Returns their numbers."""
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        log.warning("failing Optuna trial %d: asked before a crash, never run", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
    return [t.number for t in orphans]


def build_search(space: Space, study_name: str, storage_url: str) -> StudySearch:
    """The searcher of a study, its Optuna study persisted in ``storage_url``."""
    objective = space.objective
    metric: str | list[str] = objective.metrics if objective.type == "pareto" else "objective"
    mode: str | list[str] = objective.modes if objective.type == "pareto" else "max"
    return StudySearch(
        space,
        metric=metric,
        mode=mode,
        sampler=build_sampler(space),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(storage_url),
    )
