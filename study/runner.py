"""Build, run and resume a study: a Ray Tune ``Tuner`` searching with Optuna. Where a study
keeps its files is ``trainables.layout``."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import yaml

from search_spaces import SpaceError
from search_spaces.schema import Space, check_space
from trainables.atomic import atomic_write_text
from trainables.layout import LOCK_FILE, TUNE_DIR, StudyPaths, join

# The experiment state is what `study resume` continues from: write it often (it is small).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
# Each epoch's checkpoint forces a (small) state snapshot on purpose; Tune warns about that.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DRIVER_MEMORY = 256 * 1024**2  # what a multi-worker trial's own process reserves


class StudyExists(ValueError):
    """`study run` on a name that already has a study."""


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (e.g. ``auto``), or start a private local Ray."""
    import ray

    if ray.is_initialized():
        return
    common: dict[str, Any] = dict(
        include_dashboard=False, log_to_driver=True, configure_logging=False
    )
    if address:
        ray.init(address=address, **common)
    else:
        with loopback_only():
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **common)


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """A private local Ray started inside the block listens on loopback only.

    On Linux Ray gives its node this machine's own address, and ``ray.init(_node_ip_address=
    "127.0.0.1")`` is turned back into it (``resolve_ip_for_localhost``); Ray's single-machine
    switch, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what it uses on macOS and Windows), gives it
    the loopback address instead. Set for the start only: the processes Ray starts inherit it, and
    once a node runs Ray reads the address from the node, not the switch.
    """
    import ray._private.ray_constants as ray_constants

    saved_env = os.environ.get(SINGLE_MACHINE_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


def _trainable(space: Space, name: str, paths: StudyPaths) -> Any:
    from ray import tune

    from trainables.reporting import TrialContext
    from trainables.trainable import train_trial

    weight = space.objective.weight if space.objective.type == "weighted" else None
    ctx = TrialContext(
        study=name,
        objective_weight=weight,
        cpus_per_trial=space.resources.cpu,
        study_uri=paths.data_uri,
        evidence=space.evidence,
        workers=space.resources.workers,
        gpus_per_worker=space.resources.gpu,
    )
    resources = {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
    if space.resources.workers > 1:
        # The trial only drives its Ray Train workers, which hold the CPUs and GPUs; Ray needs
        # some resource in the trial's own bundle, so it holds a little memory.
        resources = {"cpu": 0, "gpu": 0, "memory": DRIVER_MEMORY}
    return tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)


def _run_config(space: Space, paths: StudyPaths, callbacks: list[Any]) -> Any:
    from ray import tune

    storage_path, storage_filesystem = paths.tune_storage()
    return tune.RunConfig(
        callbacks=callbacks,
        name=TUNE_DIR,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem,
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        # Two, not one: Tune deletes a trial's older checkpoints as soon as a new one is
        # registered, but uploads the experiment state that names the latest a moment later. With
        # one kept, a driver killed in between leaves a state naming a deleted checkpoint, and the
        # trial fails on resume ("Could not recover from checkpoint"); with two, the state would
        # have to miss a whole epoch's snapshots for that (they are taken every 2 s, see above).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=1,
    )


def trial_name(trial: Any) -> str:
    """``trial_<id>``: short names for the Tune trial and its directory."""
    return f"trial_{trial.trial_id}"


def build_tuner(space: Space, name: str, paths: StudyPaths, callbacks: list[Any]) -> Any:
    """A fresh Tuner for ``space``; its Optuna study lives in ``paths.optuna_db``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from study.search import build_search

    search = build_search(space, name, paths.optuna_url)
    scheduler = None
    if space.scheduler == "asha":
        epochs = space.train_config().epochs
        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric="objective",
            mode="max",
            max_t=epochs,
            grace_period=1,
            reduction_factor=2,
        )
    return tune.Tuner(
        _trainable(space, name, paths),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=space.trials,
            max_concurrent_trials=space.concurrency,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=_run_config(space, paths, callbacks),
    )


def refuse_existing(name: str, paths: StudyPaths) -> None:
    """Raise ``StudyExists`` when ``name`` already has a study: `study resume` continues it."""
    if paths.root.exists() and any(p.name != LOCK_FILE for p in paths.root.iterdir()):
        raise StudyExists(
            f"study {name!r} already exists in {paths.root}: continue it with "
            f"'study resume {name}', or choose another --name"
        )


def prepare_study(space: Space, name: str, paths: StudyPaths) -> None:
    """Create the study directory and save the resolved space (without the schema's unset
    ``null`` keys; a setting's ``null`` stays); refuse an existing study."""
    refuse_existing(name, paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    data = space.model_dump(mode="json", exclude_none=True)
    data["name"] = name
    atomic_write_text(paths.space, yaml.safe_dump(data, sort_keys=False))


def load_study_space(paths: StudyPaths, name: str) -> Space:
    """The resolved space a study was created with; ``SpaceError`` when there is no such study."""
    from search_spaces import read_space_yaml

    if not paths.space.is_file():
        raise SpaceError(
            f"no study {name!r} in {paths.root.parent} (missing {paths.space}); "
            "start one with 'study run'"
        )
    return check_space(read_space_yaml(paths.space), str(paths.space))


def has_tune_state(paths: StudyPaths) -> bool:
    """Whether the study's trials have started: Tune saved an experiment state (no Ray needed)."""
    from ray import tune

    storage_path, storage_filesystem = paths.tune_storage()
    tune_path = join(storage_path, TUNE_DIR)
    return tune.Tuner.can_restore(tune_path, storage_filesystem=storage_filesystem)


def check_resumable(paths: StudyPaths, name: str) -> None:
    """``SpaceError`` unless the study has Tune state to resume from (checked without Ray)."""
    if not has_tune_state(paths):
        raise SpaceError(
            f"study {name!r} in {paths.root} has no Tune experiment state to resume from; "
            "start it again with 'study run' under a new --name"
        )


def restore_tuner(space: Space, name: str, paths: StudyPaths) -> Any:
    """The Tuner of an interrupted study: finished trials stay, unfinished ones resume (its
    callbacks, MLflow's included, come back from the saved experiment)."""
    from ray import tune

    check_resumable(paths, name)
    storage_path, storage_filesystem = paths.tune_storage()
    return tune.Tuner.restore(
        join(storage_path, TUNE_DIR),
        storage_filesystem=storage_filesystem,
        trainable=_trainable(space, name, paths),
        resume_unfinished=True,
        resume_errored=True,
    )


def save_tracking(paths: StudyPaths, info: dict[str, str]) -> None:
    """Remember where the study is tracked, for `study resume` and `study report`."""
    atomic_write_text(paths.tracking, json.dumps(info, indent=2))


def load_tracking(paths: StudyPaths) -> dict[str, str]:
    """What ``save_tracking`` wrote, or {} for a study without tracking; ``SpaceError`` when the
    file is not what ``save_tracking`` writes."""
    if not paths.tracking.is_file():
        return {}
    try:
        info = json.loads(paths.tracking.read_text())
    except (ValueError, OSError) as err:
        raise SpaceError(
            f"{paths.tracking}: not readable tracking info ({type(err).__name__}); restore it or "
            f"delete it to resume without MLflow"
        ) from None
    keys = ("tracking_uri", "experiment_id", "parent_run_id")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in keys):
        raise SpaceError(
            f"{paths.tracking}: tracking info must hold {', '.join(keys)} as strings; restore it "
            "or delete it to resume without MLflow"
        )
    return info
