"""Trained models where MLflow users look for them: the final model of each Pareto-front trial (or
of the best trial) logged on its trial's run as an MLflow PyTorch model returning calibrated
probabilities, and a trial's model registered in the Model Registry.

The model is rebuilt on the driver from the trial's last Tune checkpoint (its weights and settings)
and wrapped in ``CalibratedClassifier`` with the temperature the trial fitted on val. Its input is
what the trial evaluated: normalised images, float32 ``[N, C, H, W]`` (the dataset's mean and std;
``trainables.data.Normaliser``). ``mlflow.pyfunc.load_model(uri).predict(x)`` returns the
probabilities, ``[N, classes]``; the model carries sharpcal's ``trainables`` package, so loading
it needs only torch (and timm for timm models).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from study.trials import TRIAL_ID_ATTR
from trainables import calibration
from trainables.layout import StudyPaths, join, resolve_fs
from trainables.trial_outputs import CHECKPOINT_FILE

MODEL_NAME = "model"  # the logged model's name within its run
MODEL_URI_TAG = "sharpcal.model_uri"  # on the trial's run, once its model is logged
EXAMPLE_SIZE = 2  # images in the input example


class CalibratedClassifier(nn.Module):
    """A classifier whose output is ``softmax(log(p) / temperature)``: calibrated probabilities,
    ``p`` being its softmax or, with ``mc_samples > 1``, the mean softmax of that many passes
    with dropout on (MC dropout, as the trial evaluated it; the masks are not seeded here) or a
    rank-1 BNN's posterior samples (its members are averaged in every pass)."""

    def __init__(self, model: nn.Module, temperature: float, mc_samples: int = 1) -> None:
        super().__init__()
        self.model = model
        self.mc_samples = mc_samples
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mc_samples <= 1:
            return torch.softmax(self.model(x).float() / self.temperature, dim=1)
        for module in self.model.modules():
            if isinstance(module, nn.Dropout):
                module.train()
        passes = [self.model(x).float().softmax(dim=1) for _ in range(self.mc_samples)]
        return torch.softmax(calibration.log_mean_probs(passes) / self.temperature, dim=1)


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
    """The trial's model from its checkpoint, wrapped with ``temperature``; and its data."""
    from trainables.config import parse_config
    from trainables.loop import config_data, config_model

    cfg = parse_config({**state["config"], "device": "cpu", "compile": False}, where="a model")
    data = config_data(cfg)
    model = config_model(cfg, data.info)
    weights = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    passes = cfg.rank1_eval_samples if cfg.rank1 is not None else cfg.mc_samples
    return CalibratedClassifier(model, temperature, passes).eval(), data


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


def log_trial_model(
    paths: StudyPaths, trial: optuna.trial.FrozenTrial, tracking_uri: str, run_id: str
) -> str | None:
    """Log ``trial``'s final model on its MLflow run ``run_id`` (once: a run that has one keeps
    it); returns the model's URI, or None when the trial left no checkpoint."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    logged = client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if logged:
        return logged
    state = last_checkpoint(paths, trial.user_attrs[TRIAL_ID_ATTR])
    if state is None:
        return None
    module, data = calibrated_model(state, trial.user_attrs.get("temperature", 1.0))
    x, _ = next(iter(data.eval_batches("test", EXAMPLE_SIZE)))
    example = x.numpy()
    with torch.no_grad():
        signature = infer_signature(example, module(x).numpy())
    import trainables

    with _tracking(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            module,
            name=MODEL_NAME,
            signature=signature,
            input_example=example,
            code_paths=[str(Path(trainables.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )
    client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def trial_run_id(tracking_uri: str, experiment_id: str, trial: optuna.trial.FrozenTrial) -> str:
    """The MLflow run of an Optuna trial (its ``mlflow_run_id`` attribute, else by its Tune id)."""
    from mlflow.tracking import MlflowClient

    from study.tracking import TRIAL_TAG
    from study.trials import MLFLOW_RUN_ATTR

    if MLFLOW_RUN_ATTR in trial.user_attrs:
        return trial.user_attrs[MLFLOW_RUN_ATTR]
    tune_id = trial.user_attrs[TRIAL_ID_ATTR]
    found = MlflowClient(tracking_uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{tune_id}'", max_results=1
    )
    if not found:
        raise LookupError(f"no MLflow run for trial {trial.number} (Tune trial {tune_id})")
    return found[0].info.run_id


def register_trial_model(
    paths: StudyPaths,
    trial: optuna.trial.FrozenTrial,
    tracking: dict[str, str],
    model_name: str,
) -> Any:
    """Register ``trial``'s model (logged first if it is not yet) as a new version of
    ``model_name``, tagged with the trial's test metrics and fitted temperature; returns the
    ``ModelVersion``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    run_id = trial_run_id(tracking["tracking_uri"], tracking["experiment_id"], trial)
    uri = log_trial_model(paths, trial, tracking["tracking_uri"], run_id)
    if uri is None:
        raise LookupError(f"trial {trial.number} left no checkpoint to register")
    tags = {
        k: f"{v:.6g}"
        for k, v in trial.user_attrs.items()
        if (k.startswith("test_") or k == "temperature") and isinstance(v, float)
    }
    tags.update(study=paths.root.name, trial=str(trial.number), settings=json.dumps(trial.params))
    with _tracking(tracking["tracking_uri"]):
        version = mlflow.register_model(uri, model_name, tags=tags)
    MlflowClient(tracking["tracking_uri"]).set_tag(run_id, "sharpcal.registered", model_name)
    return version
