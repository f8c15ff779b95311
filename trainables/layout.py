"""Where a study keeps its files: the one owner of the layout, for the driver and its trials alike
(it imports neither torch nor Ray, so the driver can use it for paths alone).

Metadata, in a local directory ``root`` (``<storage>/<name>``, or ``$SHARPCAL_STATE/studies/<name>``
when the data lives in object storage)::

    space.yaml    the resolved space (what `study resume` reruns)
    optuna.db     the Optuna study (optuna-dashboard sqlite:///.../optuna.db)
    mlflow.json   where the study is tracked (tracking URI, experiment, parent run)
    mlflow/       the MLflow artifacts of its runs, when the tracking store is local
    driver.lock   held by the one driver running the study
    driver.log    what Ray and Tune printed while the study ran (the console shows its events)
    report/       what `study report` writes

Data, under ``data_uri`` (the same directory, or ``s3://bucket/prefix/<name>``)::

    tune/                                   Ray Tune's experiment state, results, checkpoints
    evidence/trial_id=<id>/split=<split>/   per-sample Parquet evidence (trainables/evidence.py)
    trials/<id>/                            per-trial figures (reliability.png)
    train/                                  Ray Train's runs of multi-worker trials
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.errors import InputError
from trainables.messages import shown

SPACE_FILE = "space.yaml"
OPTUNA_FILE = "optuna.db"
TRACKING_FILE = "mlflow.json"
MLFLOW_ARTIFACTS_DIR = "mlflow"
LOCK_FILE = "driver.lock"
LOG_FILE = "driver.log"
REPORT_DIR = "report"
TUNE_DIR = "tune"
EVIDENCE_DIR = "evidence"
TRIALS_DIR = "trials"
TRAIN_DIR = "train"


# A study's name becomes a directory, an MLflow experiment, an Optuna study and part of a SQLite
# URI, so it is a plain name: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a
# digit (never ``.``, ``..`` or a hidden name), at most 64 characters.
MAX_NAME = 64
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")


def check_study_name(name: object, where: str = "study name") -> str:
    """``name`` if it is a valid study name (one path segment, checked in one place for every
    command and every source), else ``InputError`` saying what a name may hold."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    raise InputError(
        f"{where} {shown(name)} is not a plain name: use 1-{MAX_NAME} letters, digits, '.', '_' "
        "or '-', starting with a letter or digit (no '/', no '..')"
    )


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage (``s3://...``) rather than a local path."""
    return "://" in uri


def resolve_fs(uri: str) -> tuple[Any, str]:
    """A ``pyarrow.fs`` filesystem and the path inside it, for a local path or a URI."""
    import pyarrow.fs as pafs

    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def write_whole(uri: str, write: Callable[[Any], None], suffix: str = "") -> None:
    """Create or replace the file ``uri`` (local or object storage) with what ``write`` writes
    to the output stream it is given: written under a hidden name (``_tmp-...``, which dataset
    discovery skips) beside it and moved into place, so it appears whole or not at all."""
    import uuid

    fs, path = resolve_fs(uri)
    directory = path.rsplit("/", 1)[0]
    fs.create_dir(directory, recursive=True)
    tmp = f"{directory}/_tmp-{uuid.uuid4().hex}{suffix}"
    try:
        with fs.open_output_stream(tmp) as out:
            write(out)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def join(uri: str, *parts: str) -> str:
    """``uri/part/...`` for local paths and URIs alike."""
    return "/".join([uri.rstrip("/"), *parts])


def evidence_uri(data_uri: str) -> str:
    """Where a study's Parquet evidence lives."""
    return join(data_uri, EVIDENCE_DIR)


def trial_evidence_uri(data_uri: str, trial_id: str) -> str:
    """One trial's evidence (all its splits)."""
    return join(evidence_uri(data_uri), f"trial_id={trial_id}")


def partition_uri(evidence_root: str, trial_id: str, split: str) -> str:
    """``<evidence root>/trial_id=<id>/split=<split>``: one split of one trial."""
    return join(evidence_root, f"trial_id={trial_id}", f"split={split}")


def trial_artifacts_uri(data_uri: str, trial_id: str) -> str:
    """Where a trial's figures live (the driver logs them to MLflow)."""
    return join(data_uri, TRIALS_DIR, trial_id)


def train_storage(data_uri: str) -> tuple[str | None, Any]:
    """Ray Train's ``storage_path`` and ``storage_filesystem`` for multi-worker trials' runs."""
    if not data_uri:
        return None, None
    uri = join(data_uri, TRAIN_DIR)
    if not is_remote(uri):
        return uri, None
    fs, path = resolve_fs(uri)
    return path, fs


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps its files: metadata in a local directory (``root``) and its data
    under ``data_uri`` — the same directory, or an ``s3://`` prefix (see the module's doc)."""

    root: Path
    data_uri: str

    @property
    def space(self) -> Path:
        return self.root / SPACE_FILE

    @property
    def optuna_db(self) -> Path:
        return self.root / OPTUNA_FILE

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.optuna_db}"

    @property
    def tracking(self) -> Path:
        return self.root / TRACKING_FILE

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / MLFLOW_ARTIFACTS_DIR

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def tune(self) -> str:
        return join(self.data_uri, TUNE_DIR)

    @property
    def evidence(self) -> str:
        return evidence_uri(self.data_uri)

    @property
    def remote(self) -> bool:
        """Whether the data lives in object storage rather than in ``root``."""
        return is_remote(self.data_uri)

    def tune_storage(self) -> tuple[str, Any]:
        """Tune's ``storage_path`` and ``storage_filesystem`` for the study's data."""
        if not self.remote:
            return self.data_uri, None
        fs, path = resolve_fs(self.data_uri)
        return path, fs


def study_paths(name: str, storage: str | None) -> StudyPaths:
    """``<storage>/<name>``, storage defaulting to ``./studies`` (made absolute: trials chdir);
    ``name`` must be a plain name (``SpaceError`` otherwise), so it never leaves the storage.

    With an object-store URI (``s3://bucket/prefix``) the data goes to ``<uri>/<name>`` and the
    metadata stays on the driver's machine (the Optuna database is SQLite) in
    ``$SHARPCAL_STATE/studies/<name>``, ``SHARPCAL_STATE`` defaulting to ``~/sharpcal-state``: a
    fixed place, since a Ray job's working directory is temporary."""
    check_study_name(name)
    if storage and is_remote(storage):
        state = Path(os.environ.get("SHARPCAL_STATE", "~/sharpcal-state")).expanduser()
        return StudyPaths(state.resolve() / "studies" / name, join(storage, name))
    base = Path(storage) if storage else Path("studies")
    root = base.expanduser().resolve() / name
    return StudyPaths(root, str(root))
