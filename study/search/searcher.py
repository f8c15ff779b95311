"""Optuna behind Ray Tune: the define-by-run space, the sampler, and how trials are asked and told.

``StudySearch`` is a Tune ``Searcher`` written on Optuna's public ask-and-tell API (not on Ray's
``OptunaSearch``, whose private state it would have to reach into): trials stopped early by ASHA
are told PRUNED, each trial records its status and test metrics as Optuna user attributes, and
everything the searcher knows lives in the Optuna database, so a resumed study needs nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search_spaces.schema import Space
from study.search.sampler import SpaceSampler, build_sampler, name_objectives
from study.storage.binding import current
from study.storage.records import (
    LATE_FRONT_ATTR,
    POINT_ATTR,
    RECORDED_KEYS,
    REPEAT_OF_ATTR,
    SETTINGS_ATTR,
    STATUS_ATTR,
    TRIAL_ID_ATTR,
    counted,
    recorded_prefixes,
    trial_settings,
    trial_status,
)
from trainables.trial.late import LATE_FRONT_KEY

# A trial user attribute of a trial MO-ASHA stopped: its objective values at the last epoch it ran
# (a single objective is also Optuna's intermediate value at that epoch).
PRUNED_VALUES_ATTR = "values_when_stopped"
# A study user attribute: the Optuna URL the study was created at. A study whose attribute names
# another URL was copied or moved there (``study.runtime.tuner.check_in_place``).
LOCATION_ATTR = "sharpcal.optuna_url"


class StudySearch(Searcher):
    """A Tune searcher over Optuna's public ask-and-tell API, the Optuna study being the single
    source of truth: which Tune trial is which Optuna trial (a user attribute), which ``points``
    and seed ``repeats`` are still to run, what has been told. Nothing of it lives in this object,
    so a driver killed at any moment resumes from the database alone, whatever Tune's own saved
    state holds.

    Trials stopped early by ASHA are told PRUNED (their partial values would mislead the
    sampler), failed ones FAIL; every trial records its status and test metrics as user
    attributes. Points run first, and each configuration is repeated with ``repeats`` seeds right
    after it is asked for."""

    def __init__(self, space: Space, study_name: str, storage_url: str) -> None:
        metric, mode = searched_metrics(space)
        super().__init__(metric=metric, mode=mode)
        self._space = space
        self._study_name = study_name
        self._storage_url = storage_url
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.BaseStorage | None = None
        self._max_concurrent = 0
        self._live: set[str] = set()  # Tune trials running or to run (asked here, or restored)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_study=None, _storage=None, _live=set())  # rebuilt where unpickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled by a resume (Tuner.restore): the study is where the driver found it now,
        # not where it was when Tune saved this searcher (it may have been copied or moved),
        # and its running trials are the ones Tune restores.
        self.__dict__.update(state)
        self.__dict__.setdefault("_max_concurrent", 0)  # pickled before issue 34
        self._live = set()
        bound = current()
        if bound is not None:
            self._space, self._study_name = bound.space, bound.name
            self._storage_url = bound.optuna_url
            self._live = set(bound.live)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study, created on first use (or loaded: a resumed study)."""
        if self._study is None:
            self._storage = optuna.storages.RDBStorage(self._storage_url)
            modes = self._mode if isinstance(self._mode, list) else [self._mode]
            self._study = optuna.create_study(
                storage=self._storage,
                study_name=self._study_name,
                sampler=build_sampler(self._space),
                directions=["maximize" if m == "max" else "minimize" for m in modes],
                load_if_exists=True,
            )
            name_objectives(self._study, self._space)
            if LOCATION_ATTR not in self._study.user_attrs:
                self._study.set_user_attr(LOCATION_ATTR, self._storage_url)
            done = len(self._study.get_trials(deepcopy=False))
            if done:  # resumed: seeded past what it drew, so it does not draw that again
                self._study.sampler = build_sampler(self._space, offset=done)
        return self._study

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _enqueue_next(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Queue the next seed of a repeated configuration, else the next point, unless a
        queued trial is already waiting."""
        if any(t.state == TrialState.WAITING for t in trials):
            return
        repeat = _next_repeat(trials, self._space)
        if repeat is not None:
            settings, attrs = repeat
        else:
            asked = {t.user_attrs.get(POINT_ATTR) for t in trials}
            left = [i for i in range(len(self._space.points)) if i not in asked]
            if not left:
                return
            settings, attrs = dict(self._space.points[left[0]]), {POINT_ATTR: left[0]}
        params = {k: v for k, v in settings.items() if k in self._space.search}
        self.study.enqueue_trial(
            params, user_attrs={SETTINGS_ATTR: settings, **attrs}, skip_if_exists=False
        )

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit the trials running at once here (Tune then does not wrap this searcher in its
        ``ConcurrencyLimiter``, whose own record of the live trials, restored from a saved state
        that a kill can leave older than the trial list, dropped the results of restored trials
        and could let too few or too many run)."""
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        trials = counted(self._trials())
        started = [t for t in trials if t.state != TrialState.WAITING]
        if len(started) >= self._space.trials:  # every trial of the study is asked for
            return Searcher.FINISHED
        if 0 < self._max_concurrent <= len(self._live):
            return None
        self._enqueue_next(self._trials())
        trial = self.study.ask()
        trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        self._live.add(trial_id)
        constants = SpaceSampler(self._space)(trial)
        return {**constants, **trial.params}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._live.discard(trial_id)
        study = self.study  # opens the storage the recorder writes to
        assert self._storage is not None
        TrialRecorder(study, self._storage, self._metric).record(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        # Tune wants a file; the state is the Optuna study, so it only names it.
        with open(checkpoint_path, "w") as file:
            json.dump({"optuna_study": self._study_name}, file)

    def restore(self, checkpoint_path: str) -> None:
        self._study = None  # everything else comes back from the Optuna storage


class TrialRecorder:
    """Tells the Optuna study how a Tune trial ended — its status and recorded metrics as user
    attributes, then COMPLETE with its objective values, PRUNED (where it stood when the
    scheduler stopped it) or FAIL — once: a trial already finished is left as it is, so the
    searcher and the trial events callback (``study.events``, which Tune calls for every trial
    whatever its searcher wrapper passes on) can both record it."""

    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        metric: str | list[str] | None,
    ) -> None:
        self.study, self.storage, self.metric = study, storage, metric

    @classmethod
    def open(cls, space: Space, study_name: str, url: str) -> TrialRecorder:
        """A recorder on the study ``study_name`` in the Optuna database at ``url``."""
        storage = optuna.storages.RDBStorage(url)
        study = optuna.load_study(study_name=study_name, storage=storage)
        return cls(study, storage, searched_metrics(space)[0])

    def _trial_id(self, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def record(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """Record how Tune trial ``trial_id`` ended (nothing when it was recorded already)."""
        trial = next(
            (
                t
                for t in reversed(self.study.get_trials(deepcopy=False))
                if t.user_attrs.get(TRIAL_ID_ATTR) == trial_id
            ),
            None,
        )
        if trial is None or trial.state.is_finished():  # told before (a driver crash, twice)
            return
        number, storage_id = trial.number, self._trial_id(trial.number)
        status = trial_status(result, error)
        self.storage.set_trial_user_attr(storage_id, STATUS_ATTR, status)
        for key, value in (result or {}).items():
            recorded = key.startswith(recorded_prefixes()) or key in RECORDED_KEYS
            if recorded and isinstance(value, (int, float)):
                self.storage.set_trial_user_attr(storage_id, key, float(value))
        late = (result or {}).get(LATE_FRONT_KEY)
        if isinstance(late, str) and status == "completed":
            self.storage.set_trial_user_attr(storage_id, LATE_FRONT_ATTR, json.loads(late))
        values = _objective_values(result, self.metric)
        if status == "pruned":
            if values is not None:  # where it stood when stopped (Optuna keeps no values)
                self.storage.set_trial_user_attr(storage_id, PRUNED_VALUES_ATTR, values)
                if len(values) == 1:
                    assert result is not None
                    epoch = int(result["epoch"])
                    self.storage.set_trial_intermediate_value(storage_id, epoch, values[0])
            self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        elif status == "failed" or values is None:
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            self.study.tell(number, values, skip_if_finished=True)


def searched_metrics(space: Space) -> tuple[str | list[str], str | list[str]]:
    """What the searcher is told: the objective metric(s) and their mode(s) (``max``/``min``);
    a weighted objective is one metric, ``objective``, maximised."""
    objective = space.objective
    if objective.type == "pareto":
        return list(objective.optuna_metrics), list(objective.modes)
    return "objective", "max"


def create_optuna_db(space: Space, study_name: str, db: Path, url: str) -> None:
    """Create the study's Optuna database whole, where none is yet: its tables and the study
    (directions, objective names, ``LOCATION_ATTR`` = ``url``) in a temporary file renamed into
    place, so a driver killed meanwhile leaves no half-made database, only a ``.tmp-`` file the
    next start removes."""
    if db.exists() or db.is_symlink():
        return
    for stale in db.parent.glob(f".tmp-{db.name}-*"):
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".tmp-{db.name}-{os.getpid()}")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
    quiet = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created" on stderr
    try:
        _, modes = searched_metrics(space)
        modes = modes if isinstance(modes, list) else [modes]
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            directions=["maximize" if m == "max" else "minimize" for m in modes],
        )
        name_objectives(study, space)
        study.set_user_attr(LOCATION_ATTR, url)
    finally:
        optuna.logging.set_verbosity(quiet)
        storage.remove_session()
        storage.engine.dispose()
    os.replace(tmp, db)


def _objective_values(
    result: dict[str, Any] | None, metric: str | list[str] | None
) -> list[float] | None:
    """The result's objective value(s) in the study's order, or None where one is missing."""
    names = metric if isinstance(metric, list) else [metric]
    values = [(result or {}).get(name) for name in names]
    if any(not isinstance(v, (int, float)) for v in values):
        return None
    return [float(v) for v in values]


def _next_repeat(
    trials: list[optuna.trial.FrozenTrial], space: Space
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first seed still to run of a repeated configuration, oldest configuration first:
    its settings and user attributes, or None."""
    if space.repeats < 2:
        return None
    seeds_run: dict[int, set[int]] = {}
    for trial in trials:
        base = trial.user_attrs.get(REPEAT_OF_ATTR)
        if base is not None:
            seeds_run.setdefault(base, set()).add(int(trial_settings(trial)["seed"]))
    default_seed = space.train_config().seed  # the fixed section's, or the settings' default
    stopped = {  # configurations MO-ASHA stopped: their seeds are stopped together
        trial.user_attrs.get(REPEAT_OF_ATTR, trial.number)
        for trial in trials
        if trial.state == TrialState.PRUNED
    }
    for trial in trials:
        if REPEAT_OF_ATTR in trial.user_attrs or trial.number in stopped:
            continue
        settings = trial_settings(trial)
        base_seed = int(settings.get("seed", default_seed))
        for k in range(1, space.repeats):
            if base_seed + k not in seeds_run.get(trial.number, set()):
                seeded = {**settings, "seed": base_seed + k}
                return seeded, {REPEAT_OF_ATTR: trial.number}
    return None


def build_search(space: Space, study_name: str, storage_url: str) -> StudySearch:
    """The searcher of a study, its Optuna study persisted in ``storage_url``."""
    return StudySearch(space, study_name, storage_url)
