"""What sharpcal records on Optuna's trials, and how it reads them back: the user attributes,
a trial's settings and configuration, its status, the sampler, the objectives' names. Optuna only,
no Ray: the driver's readers (front, compare, report, status) import this, not the searcher."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState

from trainables.evaluation.splits import ood_splits

log = logging.getLogger(__name__)

STATUS_ATTR = "status"
TRIAL_ID_ATTR = "tune_trial_id"
# Settings a trial takes besides its Optuna params: a point's settings and a repeat's seed.
SETTINGS_ATTR = "settings"
REPEAT_OF_ATTR = "repeat_of"  # the Optuna trial number whose configuration this one repeats
MLFLOW_RUN_ATTR = "mlflow_run_id"  # the trial's MLflow run, set when the run is created
POINT_ATTR = "point"  # the index in the space's ``points`` of the configuration a trial runs
# An Optuna trial user attribute, each rung the trial was recorded at: {"<rung epoch>": {"key",
# "values" (minimised), "stop", "position", "count" (its place in the rung's order then)}}.
# MO-ASHA's state lives in the Optuna database, like the searcher's: a resumed study rebuilds it
# from there and decides alike.
RUNGS_ATTR = "sharpcal.rungs"
# Set on an Optuna trial that a killed driver asked for but Tune never ran (failed by
# ``fail_orphans``): it is no trial of the study and counts nowhere.
ORPHAN_ATTR = "sharpcal.orphan"
# A trial's own val front over its late epochs (``trainables.trial.late``): a list of entries,
# each an epoch's reported metrics with its ``epoch``; absent with late checkpoints off.
LATE_FRONT_ATTR = "sharpcal.late_front"
# On a trial as ``study.analysis.epochs.at_epoch`` shows it: the kept epoch, not its last, whose
# metrics and model it stands for (never stored)
EPOCH_ATTR = "sharpcal.epoch"


def recorded_prefixes() -> tuple[str, ...]:
    """The prefixes of the metrics a trial's Optuna trial records: test, val and every OOD
    split's (a plugin's too, once registered)."""
    return ("test_", "val_", *(f"{split}_" for split in ood_splits()))


RECORDED_PREFIXES = recorded_prefixes()  # of the built-in splits; recorded_prefixes() is live
RECORDED_KEYS = (
    "temperature", "temperature_at_bound", "epoch", "epochs", "train_loss", "train_seconds",
    "at_chance",
)  # fmt: skip


def trial_settings(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What a trial set over the space's ``fixed``: its Optuna params and its point's/seed."""
    return {**(trial.user_attrs.get(SETTINGS_ATTR) or {}), **trial.params}


def configuration_key(trial: optuna.trial.FrozenTrial) -> tuple[tuple[str, str], ...]:
    """Equal for the trials of one configuration (the seeds of a repeat)."""
    return tuple(sorted((k, repr(v)) for k, v in trial_settings(trial).items() if k != "seed"))


def trial_status(result: dict[str, Any] | None, error: bool) -> str:
    """completed, diverged, pruned (stopped by the scheduler before its last epoch) or failed."""
    if error or not result:
        return "failed"
    if result.get("diverged"):
        return "diverged"
    if result.get("epoch", 0) < result.get("epochs_total", 0):
        return "pruned"
    return "completed"


def fail_orphans(
    study: optuna.Study, known: set[str] | None = None, data_uri: str | None = None
) -> list[int]:
    """Fail the Optuna trials still RUNNING that Tune will never tell: asked for by a driver
    that was killed before Tune recorded the trial. Called once every trial of a study has
    ended, when none was ever recorded by Tune, or before a restore with ``known``, the trial
    ids in the state Tune restores (only RUNNING trials outside it are orphans then). They are
    marked ``ORPHAN_ATTR`` and count nowhere (``counted``); with the study's ``data_uri``, any
    evidence an orphan wrote before its driver stopped is removed (it is no trial's). Returns
    their numbers."""
    orphans = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if known is None or t.user_attrs.get(TRIAL_ID_ATTR) not in known
    ]
    for trial in orphans:
        log.warning("failing Optuna trial %d: asked before a crash, never run", trial.number)
        _set_orphan(study, trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
        trial_id = trial.user_attrs.get(TRIAL_ID_ATTR)
        if data_uri and trial_id:
            _discard_evidence(data_uri, str(trial_id))
    return [t.number for t in orphans]


def _discard_evidence(data_uri: str, trial_id: str) -> None:
    import pyarrow.fs as pafs

    from trainables.layout import resolve_fs, trial_evidence_uri

    fs, root = resolve_fs(trial_evidence_uri(data_uri, trial_id))
    if fs.get_file_info(root).type != pafs.FileType.NotFound:
        fs.delete_dir(root)


def _set_orphan(study: optuna.Study, number: int) -> None:
    storage = study._storage  # Optuna's Study has no public setter for another trial's attrs
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    storage.set_trial_user_attr(trial_id, ORPHAN_ATTR, True)


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, without the orphans ``fail_orphans`` failed."""
    return [t for t in trials if not t.user_attrs.get(ORPHAN_ATTR)]


def finished_count(study: optuna.Study) -> int:
    """How many of the study's trials have finished (orphans not counted)."""
    return sum(t.state.is_finished() for t in counted(study.get_trials(deepcopy=False)))
