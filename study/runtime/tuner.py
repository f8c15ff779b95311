"""Build, run and resume a study: a Ray Tune ``Tuner`` searching with Optuna, on a Ray it joins
or starts. The study's own files are ``study.storage.files``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from search_spaces import SpaceError
from search_spaces.schema import Space
from study.storage.files import check_resumable
from trainables.errors import PluginError
from trainables.layout import TUNE_DIR, StudyPaths, join
from trainables.plugins import ship_paths

# The experiment state is what `study resume` continues from: write it often (it is small).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
# Each epoch's checkpoint forces a (small) state snapshot on purpose; Tune warns about that.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DRIVER_MEMORY = 256 * 1024**2  # what a multi-worker trial's own process reserves


# What Tune copies from the driver's environment into every trial's runtime environment, which
# Ray's runtime-env agent then logs in plain text: not done (see ``keep_credentials_off_workers``).
PROPAGATED_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN",
)  # fmt: skip


def keep_credentials_off_workers() -> None:
    """Stop Tune from copying the driver's ``AWS_*`` credentials into each trial's runtime
    environment: Ray's runtime-env agent writes that environment, secrets included, to a log
    that every user of the machine can read. A private local Ray's workers inherit the driver's
    environment anyway, and a cluster's nodes reach object storage through their own role
    (cluster.yaml's instance profile, the KubeRay service account)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(PROPAGATED_CREDENTIALS)


def init_ray(address: str | None, num_cpus: int | None = None, plugins: Sequence[str] = ()) -> None:
    """Join the cluster at ``address`` (e.g. ``auto``), or start a private local Ray whose
    temporary directory (sockets, logs, spilled objects) only this user can enter. ``plugins``
    (a study's ``Space.plugins``, imported here already) that are local files or packages not
    installed travel to every worker in the job's runtime environment (``plugin_runtime_env``);
    a Ray started before (by the caller) keeps its own environment."""
    import ray

    keep_credentials_off_workers()
    if ray.is_initialized():
        return
    common: dict[str, Any] = dict(
        include_dashboard=False, log_to_driver=True, configure_logging=False
    )
    runtime_env = plugin_runtime_env(plugins)
    if runtime_env:
        common["runtime_env"] = runtime_env
    try:
        _init(address, num_cpus, common)
    except Exception as err:
        if not runtime_env or ray.is_initialized():
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PluginError(
            f"plugins {', '.join(runtime_env['py_modules'])}: cannot be shipped to Ray's "
            f"workers ({reason}); keep them small (under 512 MiB, large files listed in "
            ".gitignore) or install them on every node"
        ) from None


# Left out of a plugin shipped to the workers (as well as what its .gitignore lists).
SHIP_EXCLUDES = ("__pycache__/", "*.pyc", ".git/")


def plugin_runtime_env(plugins: Sequence[str]) -> dict[str, Any]:
    """The job's runtime environment that ships ``plugins`` to every Ray worker: Ray's
    ``py_modules`` with each plugin file (importable there by its stem) and each package not
    installed (its directory), ``trainables.plugins.ship_paths``; {} when there is nothing to
    ship. An installed package is expected on every node and is not shipped."""
    paths = ship_paths(plugins)
    if not paths:
        return {}
    return {"py_modules": paths, "excludes": list(SHIP_EXCLUDES)}


PROBE_TIMEOUT_S = 300.0  # a cluster may first have to start a node with a CPU


def probe_plugins(plugins: Sequence[str]) -> dict[str, str]:
    """Import every plugin (and the installed ``sharpcal.plugins`` entry points) on a Ray
    worker with one small task, before any trial runs; returns each plugin's module file there.
    A plugin a worker cannot import is a one-line ``PluginError``; no answer within
    ``PROBE_TIMEOUT_S`` (no worker free yet) is a warning, and the trials will say it."""
    import ray

    from study.output import warn
    from trainables.plugins import ENTRY_POINT_GROUP, check_on_worker

    if not plugins and not _has_entry_points(ENTRY_POINT_GROUP):
        return {}
    probe = ray.remote(num_cpus=1, max_retries=0)(check_on_worker)
    try:
        return ray.get(probe.remote(list(plugins)), timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        warn(f"no Ray worker answered in {PROBE_TIMEOUT_S:.0f} s to check the plugins")
        return {}
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, PluginError):
            raise PluginError(f"on a Ray worker: {cause}") from None
        raise PluginError(f"plugins on a Ray worker: {_first_line(cause)}") from None
    except ray.exceptions.RuntimeEnvSetupError as err:
        raise PluginError(
            f"plugins {', '.join(plugins)}: a Ray worker cannot set up the job's runtime "
            f"environment ({_first_line(err)})"
        ) from None


def _has_entry_points(group: str) -> bool:
    from importlib.metadata import entry_points

    return bool(entry_points(group=group))


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def _init(address: str | None, num_cpus: int | None, common: dict[str, Any]) -> None:
    import ray

    if address and is_loopback_address(address):
        # A cluster on loopback (its nodes started with --node-ip-address 127.0.0.1): this
        # driver must take the loopback address too, or it waits for a raylet on the
        # machine's own address that never comes.
        with loopback_only():
            ray.init(address=address, **common)
    elif address:
        ray.init(address=address, **common)
    else:
        from study.runtime.ray_temp import private_ray_temp_dir

        with loopback_only():
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count(),
                _temp_dir=str(private_ray_temp_dir()),
                **common,
            )


def is_loopback_address(address: str) -> bool:
    """Whether a Ray address (``HOST:PORT``, possibly with a scheme) names this machine's
    loopback interface."""
    import ipaddress

    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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

    from trainables.trial.outputs import TrialContext
    from trainables.trial.trainable import train_trial

    weight = space.objective.weight if space.objective.type == "weighted" else None
    ctx = TrialContext(
        study=name,
        objective_weight=weight,
        cpus_per_trial=space.resources.cpu,
        study_uri=paths.data_uri,
        evidence=space.evidence,
        workers=space.resources.workers,
        gpus_per_worker=space.resources.gpu,
        objective_metrics=space.objective.metrics,
        plugins=tuple(space.plugins),
        late_fraction=space.late_fraction,
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


def build_tuner(
    space: Space, name: str, paths: StudyPaths, callbacks: list[Any], trials: int | None = None
) -> Any:
    """A fresh Tuner for ``space`` running ``trials`` trials (default: all of the study's); its
    Optuna study lives in ``paths.optuna_db``."""
    from ray import tune

    from study.search.schedulers import build_scheduler
    from study.search.searcher import build_search

    search = build_search(space, name, paths.optuna_url)
    scheduler = build_scheduler(space, paths.optuna_url, name)
    return tune.Tuner(
        _trainable(space, name, paths),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=space.trials if trials is None else trials,
            max_concurrent_trials=space.concurrency,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=_run_config(space, paths, callbacks),
    )


def check_in_place(space: Space, name: str, paths: StudyPaths) -> None:
    """``SpaceError`` unless the study at ``paths`` can resume where it is now: its directory
    still has the name its ``space.yaml`` gives it, and a study copied or moved from another
    place (its Optuna study records where it was created) is not tracked in MLflow, whose
    experiment and runs belong to the original (checked without Ray)."""
    from study.storage.files import check_study_name, load_tracking

    check_study_name(paths, name, space)
    created = _created_at(paths, name)
    if created is None or created == paths.optuna_url or not load_tracking(paths):
        return
    origin = created.removeprefix("sqlite:///").removesuffix("/optuna.db")
    raise SpaceError(
        f"study {name!r} in {paths.root} was copied or moved from {origin}, and its MLflow runs "
        f"belong to the study there: resume it there, or delete {paths.tracking} to resume "
        "this copy without MLflow tracking"
    )


def _created_at(paths: StudyPaths, name: str) -> str | None:
    """The Optuna URL the study was created at, as its Optuna study records it (None: not
    recorded, or no Optuna study yet)."""
    import optuna

    from study.search.searcher import LOCATION_ATTR

    if not paths.optuna_db.is_file():
        return None
    from study.storage.files import read_only_url

    storage = optuna.storages.RDBStorage(read_only_url(paths.optuna_db), skip_table_creation=True)
    try:
        study_id = storage.get_study_id_from_name(name)
        return storage.get_study_user_attrs(study_id).get(LOCATION_ATTR)
    except KeyError:
        return None
    finally:
        storage.remove_session()


def fail_unrecorded(paths: StudyPaths, name: str, known: set[str]) -> list[int]:
    """Before a restore: fail (as orphans) the Optuna trials left RUNNING that the experiment
    state Tune is about to restore does not list (``known``: a driver killed between asking for
    a trial and Tune's next snapshot, or a state Tune cannot read): Tune will never run nor tell
    them, and they must not hold a place among the running trials. Returns their numbers."""
    import optuna

    from study.storage.records import fail_orphans

    if not paths.optuna_db.is_file():
        return []
    try:
        study = optuna.load_study(study_name=name, storage=paths.optuna_url)
    except KeyError:
        return []
    return fail_orphans(study, known=known, data_uri=paths.data_uri)


def restore_tuner(space: Space, name: str, paths: StudyPaths) -> Any:
    """The Tuner of an interrupted study: finished trials stay, unfinished ones resume. What
    Tune pickled (the searcher, the callbacks, MLflow's included) is bound to the study where
    it is now (``study.storage.binding``), never to where it was saved."""
    from ray import tune

    from study.runtime.legacy import alias_moved_modules
    from study.storage.binding import BoundStudy, bound_study
    from study.storage.files import load_tracking, tune_trial_states

    check_resumable(paths, name)
    check_in_place(space, name, paths)
    alias_moved_modules()  # a study saved before issue 35 names the old modules
    states = tune_trial_states(paths)
    fail_unrecorded(paths, name, set(states))
    live = frozenset(t for t, status in states.items() if status != "TERMINATED")
    bound = BoundStudy(
        name, space, paths.optuna_url, paths.data_uri, load_tracking(paths), live=live
    )
    storage_path, storage_filesystem = paths.tune_storage()
    with bound_study(bound):
        return tune.Tuner.restore(
            join(storage_path, TUNE_DIR),
            storage_filesystem=storage_filesystem,
            trainable=_trainable(space, name, paths),
            resume_unfinished=True,
            resume_errored=True,
        )
