"""Tune's schedulers for a study, made to keep every trial of a resumed study where the study
is now (``study.binding``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from study.binding import current
from trainables.layout import is_remote, resolve_fs


class _TrialsInPlace:
    """A scheduler mixin: every trial added to a resumed study is stored where the study is now.

    Tune rebases the trials it restores onto the restored experiment's path, but creates new
    ones in the storage of the ``Experiment`` its search generator pickled: a study copied or
    moved on disk would have its next trials' checkpoints written into the original's
    directory. The scheduler is the one place that sees each trial before it runs
    (``on_trial_add``); unpickled by a resume, it takes the study's storage from
    ``study.binding`` and moves each new trial there (``Trial.set_storage``, as Tune does for
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


class InPlaceASHAScheduler(_TrialsInPlace, ASHAScheduler):
    """Tune's ASHA scheduler, trials kept in place (``_TrialsInPlace``)."""
