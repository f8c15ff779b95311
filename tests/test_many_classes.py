"""A study of more than 100 classes with repeat seeds (the ImageNet presets' shape): its evidence
keeps no probability vectors, and the report, the ensembles and the front's models must cope."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from study import Study
from study.analysis.front import best_trials
from study.tracking.model_registry import MODEL_URI_TAG
from trainables.evaluation.evidence import MAX_PROBS_CLASSES

CLASSES = 1000


def write_many_classes(root: Path, classes: int = CLASSES) -> Path:
    """An ImageNet-style folder: one 4x4 image per class in train and in val."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            folder = root / split / f"c{k:04d}"
            folder.mkdir(parents=True)
            pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "0.png")
    return root


@pytest.mark.slow
def test_a_1000_class_study_with_repeats_reports_refuses_ensembles_and_logs_its_models(tmp_path):
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient

    data = write_many_classes(tmp_path / "folder")
    space = {
        "fixed": {
            "dataset": "imagefolder",
            "data_root": str(data),
            "model": "cnn",
            "train_subset": 32,
            "val_fraction": 0.25,
            "test_subset": 32,
            "data_seed": 0,  # the seeds share their test samples: an ensemble could be formed
            "epochs": 1,
            "batch_size": 32,
            "num_workers": 0,
            "device": "cpu",
        },
        "points": [{"method": "sgd"}],
        "repeats": 2,
        "sampler": "random",
    }
    try:
        study = Study.create(
            space,
            name="wide",
            storage=str(tmp_path / "studies"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        )
        summary = study.run()
    finally:
        ray.shutdown()
    assert summary.errors == 0 and summary.report is not None

    evidence = pads.dataset(study.paths.evidence, partitioning="hive").to_table()
    assert evidence.num_rows and evidence["probs"].null_count == evidence.num_rows  # > 100 classes

    text = summary.report.read_text()
    data = json.loads((study.paths.report / "report.json").read_text())
    (reason,) = data["ensembles_skipped"]
    assert (
        reason.startswith("no ensemble of SGD") and f"up to {MAX_PROBS_CLASSES} classes" in reason
    )
    assert f"Note: {reason}." in text
    assert data["ensemble"]["refused"].endswith(f"up to {MAX_PROBS_CLASSES} classes")
    trials = study.optuna().trials
    (sgd,) = data["methods"].values()
    assert sorted(sgd["trials"]) == [0, 1]
    for number, metrics in zip(sgd["trials"], sgd["per_trial"], strict=True):
        trial = trials[number]
        assert metrics["accuracy"] == trial.user_attrs["test_accuracy"]  # from `correct`
        assert metrics["ece"] == pytest.approx(trial.user_attrs["test_ece"], abs=1e-6)
        assert metrics["nll"] == pytest.approx(trial.user_attrs["test_nll"], rel=1e-5)
        assert math.isnan(metrics["brier"])  # needs the full vector: not stored

    client = MlflowClient(study.tracking()["tracking_uri"])
    front = {t.number for t in best_trials(study.optuna())}
    assert front
    for trial in trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        logged = MODEL_URI_TAG in client.get_run(run_id).data.tags
        assert logged == (trial.number in front)
        if logged:
            uri = client.get_run(run_id).data.tags[MODEL_URI_TAG]
            where = client.get_logged_model(uri.removeprefix("models:/")).artifact_location
            files = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=where)}
            assert {"MLmodel", "artifacts"} <= files, files  # pyfunc: the network an artifact
