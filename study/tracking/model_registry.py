"""Trained models where MLflow users look for them: the final model of each Pareto-front trial (or
of the best trial) logged on its trial's run, returning calibrated probabilities, and a trial's
model registered in the Model Registry.

The model is rebuilt on the driver from the trial's last Tune checkpoint (its weights and settings)
and wrapped in ``CalibratedClassifier`` with the temperature the trial fitted on val and, for a
stochastic evaluation (MC dropout, a rank-1 BNN, bSAM), the very draws of every pass the trial's
evaluation made (``trainables.engine.passes``), so it returns the probabilities the trial logged, for any
batch size. Its input is what the trial evaluated: normalised images, float32 ``[N, C, H, W]``
(the dataset's mean and std; ``trainables.data.datasets.Normaliser``). The network is exported with
``torch.export`` (MLflow's ``pt2`` format, batch size dynamic) and served by
``study/served_model.py``, which refuses non-finite inputs: ``mlflow.pyfunc.load_model(uri)
.predict(x)`` returns the probabilities, ``[N, classes]``; loading it needs MLflow, NumPy and
torch, not sharpcal.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from study.storage.records import STATUS_ATTR, TRIAL_ID_ATTR
from trainables.engine.passes import FrozenPasses
from trainables.errors import InputError
from trainables.layout import StudyPaths, join, resolve_fs
from trainables.metrics import calibration
from trainables.trial.outputs import CHECKPOINT_FILE

MODEL_NAME = "model"  # the logged model's name within its run
MODEL_URI_TAG = "sharpcal.model_uri"  # on the trial's run, once its model is logged
# the format of the logged model: a run whose model has another (or none: logged before issue 34,
# a pt2 export that took only batches of two) logs it again
MODEL_FORMAT_TAG = "sharpcal.model_format"
MODEL_FORMAT = "served-pt2-2"
EXAMPLE_SIZE = 2  # images in the input example
SERVED_MODEL = Path(__file__).with_name("served_model.py")


class CalibratedClassifier(nn.Module):
    """A classifier whose output is ``softmax(log(p) / temperature)``: calibrated probabilities,
    ``p`` being its softmax or, with ``passes``, the mean softmax of the trial's stochastic
    evaluation passes (MC dropout's masks, a rank-1 BNN's draws, bSAM's posterior samples),
    frozen as the trial drew them."""

    def __init__(
        self, model: nn.Module, temperature: float, passes: FrozenPasses | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.passes = passes
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passes is None:
            return torch.softmax(self.model(x).float() / self.temperature, dim=1)
        probs = [self.passes.pass_probs(self.model, x, k) for k in range(self.passes.passes)]
        return torch.softmax(calibration.log_mean_probs(probs) / self.temperature, dim=1)


class DivergedTrial(InputError):
    """A trial whose training diverged: its weights predict NaN, it is never logged."""


def last_checkpoint(paths: StudyPaths, tune_trial_id: str) -> dict[str, Any] | None:
    """The last Tune checkpoint of a trial (local or object storage), or None."""
    import pyarrow.fs as pafs

    fs, root = resolve_fs(join(paths.tune, f"trial_{tune_trial_id}"))
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(i.base_name for i in found if i.base_name.startswith("checkpoint_"))
    if not names:
        return None
    with fs.open_input_file(f"{root}/{names[-1]}/{CHECKPOINT_FILE}") as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def calibrated_model(state: dict[str, Any], temperature: float) -> tuple[nn.Module, Any]:
    """The trial's model from its checkpoint, wrapped with ``temperature`` and the draws of its
    stochastic evaluation; and its data."""
    from trainables.config import parse_config
    from trainables.engine.loop import build_optimizer, config_data, config_model
    from trainables.engine.passes import SeededPasses
    from trainables.methods import METHODS

    cfg = parse_config({**state["config"], "device": "cpu", "compile": False}, where="a model")
    data = config_data(cfg)
    model = config_model(cfg, data.info)
    weights = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    model.eval()
    passes = cfg.rank1_eval_samples if cfg.rank1 is not None else cfg.mc_samples
    method = METHODS.get(cfg.method)
    posterior = None
    if method.eval_passes(cfg) is not None:  # the method samples its weights (bSAM's posterior)
        optimizer = build_optimizer(cfg, model, data.split_size("train"))
        optimizer.load_state_dict(state["optimizer"])
        posterior = method.posterior(optimizer)
        passes = method.eval_passes(cfg)
    frozen = None
    if passes > 1 or cfg.rank1 is not None:
        seeded = SeededPasses(model, cfg.seed, passes, cfg.mc_samples > 1, posterior)
        example, _ = next(iter(data.eval_batches("test", 1)))
        frozen = FrozenPasses(seeded, example)
    return CalibratedClassifier(model, temperature, frozen).eval(), data


def is_diverged(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial diverged: its loss became non-finite, or it was still at chance (the
    chance guard)."""
    return trial.user_attrs.get(STATUS_ATTR) == "diverged"


def refuse_diverged(trial: optuna.trial.FrozenTrial) -> None:
    """Raise ``DivergedTrial`` for a diverged trial."""
    if is_diverged(trial):
        why = (
            "it was still at chance when the chance guard stopped it, so its model guesses"
            if trial.user_attrs.get("at_chance")
            else "its training loss became non-finite, so its model predicts NaN"
        )
        raise DivergedTrial(
            f"trial {trial.number} diverged ({why}): it is not registered; choose a completed "
            "trial with --trial ('study status' lists them)"
        )


@contextmanager
def _tracking(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``tracking_uri`` inside the block."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _warm_model_logging() -> None:
    """What logging the first model pays once per process in pure Python: MLflow's model modules
    and its map of installed packages (read to check a model's requirements). ``torch.export``'s
    first export is left to the caller's own thread: its thread safety is not documented. A
    failure costs nothing but the time."""
    with contextlib.suppress(Exception):
        import mlflow.pyfunc  # noqa: F401
        import mlflow.pytorch  # noqa: F401
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()  # private: may go, then skipped


WARM_UP_TIMEOUT_S = 120.0


@contextmanager
def model_logging_warmed(enabled: bool = True) -> Iterator[None]:
    """Inside the block, a daemon thread pays ``_warm_model_logging``'s costs (seconds on 2
    cores) while the caller waits on something else (its trials). A block that ends normally
    waits for the thread, so that the caller's own model logging does not import beside it; one
    that raises (an interrupt) does not wait."""
    if not enabled:
        yield
        return
    thread = threading.Thread(target=_warm_model_logging, name="sharpcal-warm-up", daemon=True)
    thread.start()
    yield
    thread.join(WARM_UP_TIMEOUT_S)


def log_trial_model(
    paths: StudyPaths, trial: optuna.trial.FrozenTrial, tracking_uri: str, run_id: str
) -> str | None:
    """Log ``trial``'s final model (or, for a trial ``front.at_epoch`` made, the model of that
    kept epoch: ``model-epoch-<N>``) on its MLflow run ``run_id`` (once: a run that has it in
    this format, ``MODEL_FORMAT``, keeps it); returns the model's URI, or None when the trial
    left no checkpoint or diverged (its weights predict NaN: never logged)."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from study.storage.records import EPOCH_ATTR
    from trainables.trial.late import load_epoch_checkpoint

    if is_diverged(trial):
        return None
    epoch = trial.user_attrs.get(EPOCH_ATTR)
    suffix = "" if epoch is None else f".epoch-{epoch}"
    uri_tag, format_tag = MODEL_URI_TAG + suffix, MODEL_FORMAT_TAG + suffix
    client = MlflowClient(tracking_uri)
    tags = client.get_run(run_id).data.tags
    logged = tags.get(uri_tag)
    if logged and tags.get(format_tag) == MODEL_FORMAT:
        return logged
    tune_id = trial.user_attrs[TRIAL_ID_ATTR]
    if epoch is None:
        state = last_checkpoint(paths, tune_id)
    else:
        state = load_epoch_checkpoint(paths.data_uri, tune_id, int(epoch))
    if state is None or state.get("diverged"):
        return None
    module, data = calibrated_model(state, trial.user_attrs.get("temperature", 1.0))
    x, _ = next(iter(data.eval_batches("test", EXAMPLE_SIZE)))
    example = x.numpy()
    with torch.no_grad():
        signature = infer_signature(example, module(x).numpy())
    requirements = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
    from study.tracking.served_model import NETWORK

    with tempfile.TemporaryDirectory(prefix="sharpcal-model-") as tmp:
        network = Path(tmp) / NETWORK
        mlflow.pytorch.save_model(
            module,
            network,
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            serialization_format="pt2",  # torch.export, batch dimension dynamic; no pickle
        )
        with _tracking(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME if epoch is None else f"{MODEL_NAME}-epoch-{epoch}",
                python_model=str(SERVED_MODEL),
                artifacts={NETWORK: str(network)},
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
                # MLflow tags a logged model with MLFLOW_TRACKING_USERNAME (a credential) as its
                # user; the machine's user, as MLflow records without one
                tags={"mlflow.user": local_user()},
            )
    client.set_tag(run_id, uri_tag, info.model_uri)
    client.set_tag(run_id, format_tag, MODEL_FORMAT)
    return info.model_uri


def trial_run_id(tracking_uri: str, experiment_id: str, trial: optuna.trial.FrozenTrial) -> str:
    """The MLflow run of an Optuna trial (its ``mlflow_run_id`` attribute, else by its Tune id)."""
    from mlflow.tracking import MlflowClient

    from study.storage.records import MLFLOW_RUN_ATTR
    from study.tracking.runs import TRIAL_TAG

    if MLFLOW_RUN_ATTR in trial.user_attrs:
        return trial.user_attrs[MLFLOW_RUN_ATTR]
    tune_id = trial.user_attrs[TRIAL_ID_ATTR]
    found = MlflowClient(tracking_uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{tune_id}'", max_results=1
    )
    if not found:
        raise LookupError(f"no MLflow run for trial {trial.number} (Tune trial {tune_id})")
    return found[0].info.run_id


def choose_trial(
    study: optuna.Study,
    space: Any,
    name: str,
    number: int | None = None,
    epoch: int | None = None,
) -> optuna.trial.FrozenTrial:
    """The trial to register, at the epoch whose model is registered (``front.at_epoch``):
    trial ``number`` if it finished and did not diverge, at ``epoch`` or else at the best of its
    kept epochs; else (no ``number``) the best completed point of the front (under a Pareto
    objective, the one with the highest ``compare.rank_score``). Diverged trials, which Optuna
    holds as complete with the worst values, are never chosen. Raises ``LookupError`` or
    ``DivergedTrial``."""
    from study.analysis.compare import is_completed, rank_score
    from study.analysis.epochs import epoch_of, kept_epochs
    from study.analysis.front import front_points

    trials = study.get_trials(deepcopy=False)
    if number is not None:
        found = {t.number: t for t in trials}
        if number not in found or not found[number].state.is_finished():
            raise LookupError(
                f"study {name!r} has no finished trial {number}; 'study status {name}' lists "
                "its trials"
            )
        refuse_diverged(found[number])
        if not is_completed(found[number]):
            return found[number]
        views = kept_epochs(found[number], space)
        if epoch is None:
            return max(views, key=lambda t: rank_score(t, space))
        chosen = [v for v in views if epoch_of(v) == epoch]
        if not chosen:
            kept = ", ".join(str(epoch_of(v)) for v in views)
            raise LookupError(
                f"trial {number} of study {name!r} kept no model of epoch {epoch}: its kept "
                f"epochs are {kept} (late_checkpoints in the space keeps more)"
            )
        return chosen[0]
    if epoch is not None:
        raise LookupError(f"an epoch ({epoch}) is chosen within a trial: give --trial too")
    completed = [t for t in trials if is_completed(t)]
    if not completed:
        diverged = sum(is_diverged(t) for t in trials)
        why = f" ({diverged} diverged: their models predict NaN)" if diverged else ""
        raise LookupError(f"study {name!r} has no completed trial to register{why}")
    front = [t for t in front_points(study, space) if is_completed(t)] or completed
    return max(front, key=lambda t: rank_score(t, space))


def register_trial_model(
    paths: StudyPaths,
    trial: optuna.trial.FrozenTrial,
    tracking: dict[str, str],
    model_name: str,
) -> Any:
    """Register ``trial``'s model (logged first if it is not yet) as a new version of
    ``model_name``, tagged with the trial's test metrics and fitted temperature; returns the
    ``ModelVersion``. Raises ``DivergedTrial`` for a diverged trial."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from study.analysis.epochs import epoch_of

    refuse_diverged(trial)
    run_id = trial_run_id(tracking["tracking_uri"], tracking["experiment_id"], trial)
    uri = log_trial_model(paths, trial, tracking["tracking_uri"], run_id)
    if uri is None:
        raise LookupError(f"trial {trial.number} left no checkpoint to register")
    tags = {
        k: f"{v:.6g}"
        for k, v in trial.user_attrs.items()
        if (k.startswith("test_") or k == "temperature") and isinstance(v, float)
    }
    tags.update(
        study=paths.root.name,
        trial=str(trial.number),
        epoch=str(epoch_of(trial)),
        settings=json.dumps(trial.params),
    )
    with _tracking(tracking["tracking_uri"]):
        version = mlflow.register_model(uri, model_name, tags=tags)
    MlflowClient(tracking["tracking_uri"]).set_tag(run_id, "sharpcal.registered", model_name)
    return version


def local_user() -> str:
    """The user of this process, as MLflow names it when no tracking username is set."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
