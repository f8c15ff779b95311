"""MLflow tracking: one experiment per study, a parent run for the study, a nested run per trial.

Everything goes through ``MlflowClient`` from the driver (no global active run). A tracking store
that cannot be reached at the start is an error before any trial starts; one lost mid-study only
costs what could not be logged: training goes on, a warning says what is missing, and every file
on disk stays complete.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.tune import Callback

from study.output import warn
from study.storage.binding import current
from study.storage.records import MLFLOW_RUN_ATTR, TRIAL_ID_ATTR
from trainables.errors import StorageError
from trainables.layout import resolve_fs, trial_artifacts_uri, trial_evidence_uri

# Fail fast on a dead server: a lost server costs a warning, not minutes of retries per call.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

TRIAL_TAG = "sharpcal.trial_id"

# A new sqlite store announces its table creation at INFO on stderr: not news to a user.
for _chatty in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)
STATUS_TAG = "status"
PARENT_TAG = "mlflow.parentRunId"


class TrackingError(StorageError):
    """The tracking store cannot be reached or used: one line saying which and how to fix."""


def default_tracking_uri() -> str:
    """``sqlite:///<absolute cwd>/mlflow.db``: `mlflow ui` started here shows it with no flags."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def git_commit() -> str | None:
    """The commit of the sharpcal code that runs (None when it is not a git checkout, e.g. an
    installed wheel) — not of the directory the user runs it from."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: ``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a result (bools and Tune's bookkeeping left out)."""
    skip = {"epoch", "epochs_total", "timestamp", "pid", "time_this_iter_s", "done"}
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k not in skip
        and not k.startswith(("time_", "iterations_", "training_iteration"))
    }


def make_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` for ``tracking_uri``, checked to answer; ``TrackingError`` if not."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as err:  # any transport or store error means the same to the user
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise TrackingError(
            f"MLflow tracking store {tracking_uri} cannot be reached ({reason}); start the "
            "server or pass another --tracking-uri"
        ) from None
    return client


def experiment_id(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if needed (its artifacts in ``artifact_location``,
    or where the tracking store puts them)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def sqlite_artifacts(tracking_uri: str) -> str | None:
    """The ``mlruns`` directory beside a sqlite store's file, as a URI (MLflow would put a new
    experiment's artifacts in the working directory's ``mlruns``); None for any other store."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri.removeprefix(prefix)).resolve().parent / "mlruns").as_uri()


def is_local_store(tracking_uri: str) -> bool:
    """A tracking store in a local file (sqlite or a directory), not a server."""
    scheme = tracking_uri.split("://", 1)[0] if "://" in tracking_uri else "file"
    return scheme in ("sqlite", "file")


def log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int) -> None:
    """One batch of metrics at ``step``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Params in batches (MLflow takes at most 100 at a time)."""
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def copy_to_local(uri: str, directory: Path) -> list[Path]:
    """Copy a file or a directory tree from any pyarrow filesystem into ``directory``."""
    import pyarrow.fs as pafs

    fs, path = resolve_fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    infos = (
        [info]
        if info.type == pafs.FileType.File
        else fs.get_file_info(pafs.FileSelector(path, recursive=True))
    )
    copied = []
    for item in infos:
        if item.type != pafs.FileType.File or Path(item.path).name.startswith(("_", ".")):
            continue
        rel = (
            Path(item.path).name
            if info.type == pafs.FileType.File
            else Path(item.path).relative_to(path)
        )
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(item.path) as src:
            target.write_bytes(src.read())
        copied.append(target)
    return copied


class StudyTracker:
    """The study's experiment and parent run; ``MlflowTrialCallback`` logs the trials under it."""

    def __init__(self, tracking_uri: str, study: str, artifacts: Path | None = None) -> None:
        """``artifacts``: the directory of a new experiment's artifacts when the tracking store
        is local (a server keeps its own)."""
        self.tracking_uri = tracking_uri
        self.study = study
        self.client = make_client(tracking_uri)
        location = artifacts.as_uri() if artifacts and is_local_store(tracking_uri) else None
        self.experiment_id = experiment_id(self.client, study, location)

    def parent_run(self, existing: str | None, params: dict[str, str], tags: dict[str, str]) -> str:
        """Reuse the parent run of a resumed study, or start one."""
        if existing:
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study)
        log_params(self.client, run.info.run_id, params)
        return run.info.run_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Close the parent run."""
        self.client.set_terminated(run_id, status=status)


@contextmanager
def parent_run_open(info: dict[str, str], study: str) -> Iterator[None]:
    """The study's MLflow parent run (``info`` as in mlflow.json; {} without tracking) marked
    running inside the block and finished after it. Unreachable tracking at the start is a
    ``TrackingError``; at the end only a warning (the study is done and on disk)."""
    if not info:
        yield
        return
    tracker = StudyTracker(info["tracking_uri"], study)
    tracker.parent_run(info["parent_run_id"], {}, {})
    yield
    try:
        tracker.finish(info["parent_run_id"])
    except Exception as err:
        warn(f"could not close MLflow run {info['parent_run_id']}: {err}")


def log_dataset(client: Any, run_id: str, dataset: dict[str, Any]) -> None:
    """Log a trial's data set (``trainables.trial.outputs.dataset_input``) as the run's training
    input: name, digest, source and split sizes, as the MLflow UI's Dataset column shows them;
    not again when the run already has it (a resumed trial)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    have = client.get_run(run_id).inputs.dataset_inputs
    if any(d.dataset.digest == dataset["digest"][:36] for d in have):
        return
    sizes = {split: dataset[split] for split in ("train", "val", "test") if split in dataset}
    entity = Dataset(
        name=dataset["name"],
        digest=dataset["digest"][:36],
        source_type="local",
        source=json.dumps({"uri": dataset["source"]}),
        profile=json.dumps({"num_rows": sizes.get("train"), "splits": sizes}),
    )
    tags = [InputTag(key="mlflow.data.context", value="training")]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=tags)])


def set_trial_attr(url: str, study_name: str, tune_trial_id: str, key: str, value: Any) -> None:
    """Set a user attribute of the unfinished Optuna trial that runs Tune's ``tune_trial_id``."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
        for trial in reversed(storage.get_all_trials(study_id, deepcopy=False)):
            if (
                trial.user_attrs.get(TRIAL_ID_ATTR) == tune_trial_id
                and not trial.state.is_finished()
            ):
                row = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_user_attr(row, key, value)
                return
    finally:
        storage.remove_session()


class MlflowTrialCallback(Callback):
    """A Tune callback: one nested MLflow run per trial, metrics per epoch, status and artifacts.

    A trial that is restarted or resumed finds its run again by the ``sharpcal.trial_id`` tag, so
    MLflow never holds two runs for one trial.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        study_uri: str,
        optuna_study: tuple[str, str] | None = None,
    ) -> None:
        """``optuna_study``: (storage URL, study name) of the Optuna study whose trials get their
        MLflow run id as a user attribute."""
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study_uri = study_uri
        self.optuna_study = optuna_study
        self._client: Any = None
        self._runs: dict[str, str] = {}
        self._warned: set[str] = set()
        self._inputs: set[str] = set()  # trials whose dataset input is logged

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A study saved by an earlier version lacks the newer attributes.
        self.__dict__.update({"optuna_study": None, "_inputs": set(), **state})
        bound = current()  # unpickled by a resume: the study is where the driver found it now
        if bound is not None:
            self.study_uri = bound.data_uri
            self.optuna_study = (bound.optuna_url, bound.name)
            self._untracked = not bound.tracking  # its mlflow.json was deleted: log nothing
            if bound.tracking:
                self.tracking_uri = bound.tracking["tracking_uri"]
                self.experiment_id = bound.tracking["experiment_id"]
                self.parent_run_id = bound.tracking["parent_run_id"]

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _safely(self, what: str, trial_id: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as err:  # a lost tracking server must not stop training
            key = f"{trial_id}:{what}"
            if key not in self._warned:
                self._warned.add(key)
                reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
                warn(
                    f"MLflow ({self.tracking_uri}) unreachable: {what} of trial {trial_id} not "
                    f"logged ({reason}); the study's files on disk are complete"
                )
            return None

    def _find_or_create(self, trial: Any) -> str:
        trial_id = trial.trial_id
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_id,
            tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, STATUS_TAG: "running"},
        )
        log_params(self.client, run.info.run_id, flatten(dict(trial.config)))
        return run.info.run_id

    def _run_id(self, trial: Any) -> str | None:
        if getattr(self, "_untracked", False):
            return None
        if trial.trial_id not in self._runs:
            run_id = self._safely("run", trial.trial_id, self._find_or_create, trial)
            if run_id is None:
                return None
            self._runs[trial.trial_id] = run_id
            self._safely("run id", trial.trial_id, self._record_run_id, trial.trial_id, run_id)
        return self._runs[trial.trial_id]

    def _record_run_id(self, trial_id: str, run_id: str) -> None:
        """Set ``run_id`` on the running Optuna trial that Tune's ``trial_id`` names."""
        if self.optuna_study is None:
            return
        set_trial_attr(*self.optuna_study, trial_id, MLFLOW_RUN_ATTR, run_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        run_id = self._run_id(trial)
        dataset = result.get("dataset")
        if run_id is not None and isinstance(dataset, dict) and trial.trial_id not in self._inputs:
            self._safely("dataset", trial.trial_id, log_dataset, self.client, run_id, dataset)
            self._inputs.add(trial.trial_id)
        if run_id is not None:
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            self._safely(
                "metrics",
                trial.trial_id,
                log_metrics,
                self.client,
                run_id,
                numeric_metrics(result),
                step,
            )

    def _finish(self, trial: Any, error: bool) -> None:
        from study.storage.records import trial_status

        run_id = self._run_id(trial)
        if run_id is None:
            return
        status = trial_status(trial.last_result, error)
        self._safely("status", trial.trial_id, self.client.set_tag, run_id, STATUS_TAG, status)
        self._safely("artifacts", trial.trial_id, self._log_artifacts, run_id, trial.trial_id)
        self._safely(
            "end",
            trial.trial_id,
            self.client.set_terminated,
            run_id,
            "FAILED" if error else "FINISHED",
        )

    def _log_artifacts(self, run_id: str, trial_id: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            figures = Path(tmp, "figures")
            copy_to_local(trial_artifacts_uri(self.study_uri, trial_id), figures)
            if figures.exists():
                self.client.log_artifacts(run_id, str(figures))
            rows = Path(tmp, "evidence")
            copy_to_local(trial_evidence_uri(self.study_uri, trial_id), rows)
            if rows.exists():
                self.client.log_artifacts(run_id, str(rows), artifact_path="evidence")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)


class TrainRunLogger:
    """`study train`'s single MLflow run: params, per-epoch metrics, test metrics, status and the
    reliability diagram, logged the way a study's trial runs are."""

    def __init__(self, tracking_uri: str, experiment: str, params: dict[str, Any]) -> None:
        self.tracking_uri = tracking_uri
        self.client = make_client(tracking_uri)
        exp = experiment_id(self.client, experiment, sqlite_artifacts(tracking_uri))
        run = self.client.create_run(exp, tags={STATUS_TAG: "running", "sharpcal.kind": "train"})
        self.run_id = run.info.run_id
        log_params(self.client, self.run_id, flatten(params))
        self._warned = False

    def _safely(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # keep training; say once what is missing
            if not self._warned:
                self._warned = True
                warn(
                    f"MLflow ({self.tracking_uri}) unreachable, run {self.run_id} is incomplete:"
                    f" {str(err).splitlines()[0][:160]}"
                )

    def epoch(self, metrics: dict[str, Any], step: int) -> None:
        """Log one epoch's numbers at ``step``."""
        self._safely(log_metrics, self.client, self.run_id, numeric_metrics(metrics), step)

    def finish(self, status: str, files: dict[str, bytes]) -> None:
        """Tag the status, attach ``files`` (name -> bytes) and close the run."""
        self._safely(self.client.set_tag, self.run_id, STATUS_TAG, status)
        if files:
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in files.items():
                    Path(tmp, name).write_bytes(data)
                self._safely(self.client.log_artifacts, self.run_id, tmp)
        self._safely(self.client.set_terminated, self.run_id, "FINISHED")
