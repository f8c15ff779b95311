"""Tune's schedulers for a study, registered by name in ``SCHEDULERS`` (what a space's
``scheduler:`` names): ``none`` (first-in-first-out) and ``asha`` (MO-ASHA: ``study.search.rungs``'s
pure rung logic behind Tune's public ``TrialScheduler`` API); both keep every trial of a resumed
study where the study is now (``study.storage.binding``).

A scheduler is a ``Scheduler`` part: ``check(space)`` refuses settings it cannot run (one line,
before anything is written), ``build(space, optuna_url, study_name)`` makes Tune's scheduler.
A user's own registers the same way from a plugin (``@register_scheduler("name")``). The Tune
classes keep their import paths: a study's Tune state pickles them by path."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search_spaces import SpaceError
from search_spaces.schema import Space
from study.search.rungs import MAX_RUNGS, Decision, RungLadder, minimised, rung_milestones
from study.storage.binding import current
from study.storage.records import REPEAT_OF_ATTR, RUNGS_ATTR, STATUS_ATTR, TRIAL_ID_ATTR
from trainables.errors import InputError
from trainables.layout import is_remote, resolve_fs
from trainables.parts import Part
from trainables.registry import Registry

if TYPE_CHECKING:
    import optuna


class _TrialsInPlace:
    """A scheduler mixin: every trial added to a resumed study is stored where the study is now.

    Tune rebases the trials it restores onto the restored experiment's path, but creates new
    ones in the storage of the ``Experiment`` its search generator pickled: a study copied or
    moved on disk would have its next trials' checkpoints written into the original's
    directory. The scheduler is the one place that sees each trial before it runs
    (``on_trial_add``); unpickled by a resume, it takes the study's storage from
    ``study.storage.binding`` and moves each new trial there (``Trial.set_storage``, as Tune does for
    restored trials)."""

    def __getstate__(self) -> dict[str, Any]:
        # Never empty: pickle skips __setstate__ for an object whose state is empty.
        return {"_data_uri": None, **self.__dict__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        bound = current()
        if bound is not None:
            self._data_uri = bound.data_uri

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        data_uri = getattr(self, "_data_uri", None)
        if data_uri is not None:
            _store_trial_at(trial, data_uri)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]


def _store_trial_at(trial: Any, data_uri: str) -> None:
    """Move ``trial``'s storage under ``data_uri`` (its experiment directory name kept)."""
    fs, fs_path = resolve_fs(data_uri) if is_remote(data_uri) else (None, data_uri)
    fs_path = Path(fs_path).as_posix()
    if trial.storage.storage_fs_path == fs_path:
        return
    storage = copy.copy(trial.storage)
    storage.storage_fs_path = fs_path
    if fs is not None:
        storage.storage_filesystem = fs
    trial.set_storage(storage)


class InPlaceFIFOScheduler(_TrialsInPlace, FIFOScheduler):
    """Tune's first-in-first-out scheduler, trials kept in place (``_TrialsInPlace``)."""


class MOASHAScheduler(_TrialsInPlace, FIFOScheduler):
    """Multi-objective ASHA for a study: Tune's adapter over ``study.search.rungs.RungLadder``.

    Each result with an ``epoch`` and every objective ``metrics`` (in ``modes``) is put to the
    ladder under its configuration's key (the Optuna number of the trial whose configuration it
    runs: a trial's own, or the first seed's under ``repeats``), and the trial stops when its
    configuration was stopped at a rung it has reached. What each rung recorded is written to
    the Optuna trial (``RUNGS_ATTR``) as it is decided; the ladder is rebuilt from the database
    when this object is unpickled by a resume, so the resumed study decides as it would have.
    """

    def __init__(self, space: Space, optuna_url: str, study_name: str) -> None:
        super().__init__()
        self._space = space
        self._objectives = list(
            zip(space.objective.optuna_metrics, space.objective.modes, strict=True)
        )
        self._optuna_url, self._study_name = optuna_url, study_name
        self._ladder: RungLadder | None = None
        self._trials: dict[str, tuple[int, str]] = {}  # Tune id -> (Optuna number, key)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_ladder=None, _trials={})  # rebuilt from the Optuna database
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        bound = current()
        if bound is not None:
            self._space = bound.space
            self._optuna_url, self._study_name = bound.optuna_url, bound.name

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        values = [result.get(metric) for metric, _ in self._objectives]
        epoch = result.get("epoch")
        if not isinstance(epoch, int) or not all(_finite(v) for v in values):
            return TrialScheduler.CONTINUE  # a diverged trial ends by itself
        found = self._optuna_trial(trial.trial_id)
        if found is None:
            return TrialScheduler.CONTINUE
        number, key = found
        vector = minimised(values, [mode for _, mode in self._objectives])  # type: ignore[arg-type]
        ladder = self.ladder()
        decision = ladder.on_result(key, epoch, vector, member=trial.trial_id)
        if decision is not None:
            self._save(number, key, decision, vector)
        stopped = ladder.stopped_at(key)
        return (
            TrialScheduler.STOP
            if stopped is not None and stopped <= epoch
            else TrialScheduler.CONTINUE
        )

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        """A trial that ran its last epoch: its final values are a pair of the rungs'
        agreement (``RungLadder.record_final``). Tune calls this for a trial a rung stopped too,
        and for a diverged one: neither has final values."""
        super().on_trial_complete(tune_controller, trial, result)
        values = [(result or {}).get(metric) for metric, _ in self._objectives]
        found = self._optuna_trial(trial.trial_id)
        if found is None or (result or {}).get("diverged") or not all(map(_finite, values)):
            return
        ladder = self.ladder()
        if ladder.stopped_at(found[1]) is not None:
            return
        modes = [mode for _, mode in self._objectives]
        ladder.record_final(found[1], minimised(values, modes), member=trial.trial_id)  # type: ignore[arg-type]

    def ladder(self) -> RungLadder:
        """The rung ladder, rebuilt from the Optuna database on first use: every rung record,
        and the final values of every trial that completed (the agreement's pairs)."""
        if self._ladder is None:
            import optuna

            self._ladder = ladder_for(self._space)
            modes = [mode for _, mode in self._objectives]
            for trial in self._study().get_trials(deepcopy=False):
                tune_id = trial.user_attrs.get(TRIAL_ID_ATTR)
                for milestone, rec in (trial.user_attrs.get(RUNGS_ATTR) or {}).items():
                    if int(milestone) in self._ladder.rungs and tune_id:
                        self._ladder.record(
                            int(milestone), rec["key"], tune_id, rec["values"], rec["stop"]
                        )
                completed = trial.user_attrs.get(STATUS_ATTR) == "completed"
                if tune_id and completed and trial.state == optuna.trial.TrialState.COMPLETE:
                    key = str(trial.user_attrs.get(REPEAT_OF_ATTR, trial.number))
                    self._ladder.record_final(key, minimised(trial.values, modes), member=tune_id)
        return self._ladder

    def _study(self) -> optuna.Study:
        import optuna

        return optuna.load_study(study_name=self._study_name, storage=self._optuna_url)

    def _optuna_trial(self, tune_id: str) -> tuple[int, str] | None:
        """The Optuna trial number of Tune trial ``tune_id`` and its configuration's key."""
        if tune_id not in self._trials:
            for trial in self._study().get_trials(deepcopy=False):
                if trial.user_attrs.get(TRIAL_ID_ATTR) == tune_id:
                    key = str(trial.user_attrs.get(REPEAT_OF_ATTR, trial.number))
                    self._trials[tune_id] = (trial.number, key)
                    break
            else:
                return None
        return self._trials[tune_id]

    def _save(self, number: int, key: str, decision: Decision, vector: list[float]) -> None:
        import optuna

        storage = optuna.storages.RDBStorage(self._optuna_url)
        try:
            study_id = storage.get_study_id_from_name(self._study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            rungs = dict(storage.get_trial(trial_id).user_attrs.get(RUNGS_ATTR) or {})
            rungs[str(decision.milestone)] = {
                "key": key,
                "values": vector,
                "stop": decision.stop,
                "position": decision.position,
                "count": decision.count,
            }
            if decision.agreement:  # as measured for this decision
                rungs[str(decision.milestone)]["agreement"] = [
                    [a.tau, a.lower, a.pairs, a.acts] for a in decision.agreement
                ]
            storage.set_trial_user_attr(trial_id, RUNGS_ATTR, rungs)
        finally:
            storage.remove_session()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def ladder_for(space: Space) -> RungLadder:
    """The ladder of a study of ``space``: its objectives and its ``asha`` settings (what the
    Tune adapter builds, and what ``bench/replay_search.py`` replays)."""
    return RungLadder(
        num_objectives=len(space.objective.optuna_metrics),
        max_t=space.asha_max_t,
        grace_period=space.asha.grace_period,
        reduction_factor=space.asha.reduction_factor,
        ranking=space.asha.ranking,
        agreement=space.asha.agreement,
    )


def check_rungs(space: Space) -> None:
    """``SpaceError`` when the space's ``asha`` settings put more than ``MAX_RUNGS`` rungs below
    ``max_t`` (counted by the rule's own ``rung_milestones``, in bounded time)."""
    if space.scheduler != "asha":
        return
    asha, max_t = space.asha, space.asha_max_t
    rungs = rung_milestones(asha.grace_period, asha.reduction_factor, max_t, MAX_RUNGS)
    if len(rungs) > MAX_RUNGS:
        raise SpaceError(
            f"asha: reduction_factor {asha.reduction_factor} with grace_period "
            f"{asha.grace_period} puts more than {MAX_RUNGS} rungs below max_t ({max_t}): "
            "raise reduction_factor (3 is usual) or grace_period"
        )


# ----------------------------------------------------------------------------- the registry


class Scheduler(Part):
    """A study's trial scheduler, registered by name (``@register_scheduler("asha")``).

    ``check(space)`` raises ``SpaceError`` (one line) for settings of ``space`` it cannot run;
    ``build(space, optuna_url, study_name)`` returns Tune's ``TrialScheduler`` for the study
    (keep its logic apart from Tune's API, as ``study.search.rungs`` is for MO-ASHA).
    ``stops_early``: whether it ends trials before their last epoch."""

    stops_early: ClassVar[bool] = False

    def check(self, space: Space) -> None:
        """``SpaceError`` for settings of ``space`` this scheduler cannot run."""

    def build(self, space: Space, optuna_url: str, study_name: str) -> TrialScheduler:
        """Tune's scheduler of a study of ``space`` (its Optuna study at ``optuna_url``)."""
        raise NotImplementedError


def _check_scheduler(name: str, part: Any) -> None:
    if not (isinstance(part, type) and issubclass(part, Scheduler)):
        raise TypeError("register a subclass of study.search.schedulers.Scheduler")
    if part.build is Scheduler.build:
        raise TypeError("it does not define build")
    if not part.title:
        raise ValueError("it has no title")


SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler", check=_check_scheduler)
register_scheduler = SCHEDULERS  # ``@register_scheduler("name")`` on a Scheduler subclass


@register_scheduler("none")
class NoScheduler(Scheduler):
    """Every trial runs to its last epoch, first in first out."""

    title = "none (every trial to its last epoch)"
    description = "first in first out; no trial is stopped early"

    def build(self, space: Space, optuna_url: str, study_name: str) -> TrialScheduler:
        return InPlaceFIFOScheduler()


@register_scheduler("asha")
class AshaScheduler(Scheduler):
    """MO-ASHA with the space's ``asha`` settings (``search_spaces.schema.Asha``)."""

    title = "MO-ASHA"
    description = (
        "multi-objective asynchronous successive halving: at each rung a configuration "
        "continues when its place among the non-dominated fronts is within 1/reduction_factor"
    )
    reference = "Schmucker et al., Multi-objective ASHA, 2021"
    stops_early = True

    def check(self, space: Space) -> None:
        check_rungs(space)

    def build(self, space: Space, optuna_url: str, study_name: str) -> TrialScheduler:
        return MOASHAScheduler(space, optuna_url=optuna_url, study_name=study_name)


def scheduler_of(space: Space) -> Scheduler:
    """The registered scheduler ``space`` names; ``SpaceError`` (one line, the known names)
    when none is."""
    try:
        return SCHEDULERS.get(space.scheduler)()
    except InputError as err:
        raise SpaceError(f"'scheduler': {err}") from None


def check_scheduler(space: Space, source: str = "space") -> None:
    """``space``'s scheduler is registered and can run its settings (``Scheduler.check``);
    else one ``SpaceError`` line naming ``source`` (the space file)."""
    try:
        scheduler_of(space).check(space)
    except SpaceError as err:
        raise SpaceError(f"{source}: {err}") from None


def build_scheduler(space: Space, optuna_url: str, study_name: str) -> TrialScheduler:
    """Tune's scheduler for a study of ``space`` (``SCHEDULERS``)."""
    return scheduler_of(space).build(space, optuna_url, study_name)
