"""The Python API (``from study import Study``) in-process, on a real local Ray, Optuna database,
MLflow store and Parquet evidence: create, run, front, compare, evidence, report, rerun, load."""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
from optuna.trial import TrialState

from study import RunSummary, Study, StudyInputError
from study.storage.records import trial_settings
from tests.test_study import DIGITS

pytestmark = pytest.mark.slow

SPACE = {
    "fixed": {**DIGITS, "epochs": 2},
    "points": [{"method": "sgd"}, {"method": "sam", "rho": 0.05}],
    "repeats": 2,
    "concurrency": 2,
    "sampler": "random",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A working directory for the module's studies; Ray shut down after them."""
    import ray

    path = tmp_path_factory.mktemp("api")
    cwd = os.getcwd()
    os.chdir(path)  # the default MLflow store (sqlite:///<cwd>/mlflow.db) lands here
    try:
        yield path
    finally:
        os.chdir(cwd)
        ray.shutdown()


@pytest.fixture(scope="module")
def finished(workdir: Path) -> tuple[Study, RunSummary, str, str]:
    """The module's study, run in-process; with what it printed on stdout and stderr."""
    study = Study.create(SPACE, name="api", storage=str(workdir / "studies"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        summary = study.run()
    return study, summary, out.getvalue(), err.getvalue()


def test_a_study_runs_from_a_dict_and_reports(finished):
    study, summary, *_ = finished
    assert summary == RunSummary(trials=4, errors=0, report=study.paths.report / "report.md")
    assert summary.report.is_file()
    trials = study.optuna().get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    # issue 17, item 9: MLflow's artifacts live in the study, nothing beside the store
    artifacts = [p for p in study.paths.mlflow_artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "reliability.png" for p in artifacts)
    assert not (study.paths.root.parent.parent / "mlruns").exists()


def test_front_is_optunas_best_trials_as_a_dataframe(finished):
    study, *_ = finished
    front = study.front()
    best = sorted(study.optuna().best_trials, key=lambda t: t.number)
    assert front["trial"].tolist() == [t.number for t in best]
    assert front["val_accuracy"].tolist() == pytest.approx([t.values[0] for t in best])


def test_compare_gives_means_over_seeds_and_paired_differences(finished):
    study, *_ = finished
    comparison = study.compare(baseline="SGD")
    assert comparison.paired is not None and comparison.paired.baseline.label == "SGD"
    table = comparison.frame()
    assert table["configuration"].tolist() == ["SGD", "SAM (ρ=0.05)"]
    assert table["seeds"].tolist() == [2, 2]
    trials = study.optuna().get_trials()
    sgd = [t.user_attrs["test_ece"] for t in trials if trial_settings(t)["method"] == "sgd"]
    rows = table.set_index("configuration")
    assert rows.loc["SGD", "test_ece_mean"] == pytest.approx(sum(sgd) / 2)
    assert math.isnan(rows.loc["SGD", "test_ece_diff"])  # the baseline itself
    sam = [t.user_attrs["test_ece"] for t in trials if trial_settings(t)["method"] == "sam"]
    diff = rows.loc["SAM (ρ=0.05)"]
    assert diff["test_ece_diff"] == pytest.approx((sum(sam) - sum(sgd)) / 2)
    assert diff["test_ece_diff_low"] <= diff["test_ece_diff"] <= diff["test_ece_diff_high"]


def test_the_console_shows_each_trials_events_and_ray_writes_to_the_log(finished):
    study, _, out, err = finished
    lines = out.splitlines()
    ids = {t.user_attrs["tune_trial_id"] for t in study.optuna().get_trials()}
    started = [line.split()[2] for line in lines if line.split()[3:4] == ["started"]]
    ended = [line.split()[2] for line in lines if line.split()[3:4] == ["completed"]]
    assert sorted(started) == sorted(ended) == sorted(ids)
    assert len(lines) == 2 * len(ids) and err == ""  # nothing else: Ray's output is in the log
    assert "method=sgd" in out and "seed=1" in out  # the settings each trial runs with
    assert "(4/4 done, 0 running, 0 pending, " in lines[-1]
    assert ", nothing left, front " in lines[-1]
    assert "\x1b" not in out
    log = study.paths.log.read_text()
    assert "trial_" in log and "TERMINATED" in log  # Tune's own table


def test_objectives_are_named_and_trials_carry_their_mlflow_run(finished):
    study, *_ = finished
    optuna_study = study.optuna()
    assert optuna_study.metric_names == ["val_accuracy", "val_ece"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.tracking()["tracking_uri"])
    for trial in optuna_study.get_trials():
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["sharpcal.trial_id"] == trial.user_attrs["tune_trial_id"]


def test_status_of_the_finished_study(finished):
    study, *_ = finished
    status = study.status()
    assert status.counts["completed"] == 4 and sum(status.counts.values()) == 4
    assert status.driver is None and status.elapsed_s > 0
    assert [row["trial"] for row in status.best] == study.front()["trial"].tolist()


def test_evidence_is_a_dataset_with_every_sample_of_every_trial(finished):
    study, *_ = finished
    dataset = study.evidence()
    assert isinstance(dataset, pads.Dataset)
    table = dataset.to_table(columns=["trial_id", "split"])
    assert len(set(table["trial_id"].to_pylist())) == 4
    assert set(table["split"].to_pylist()) == {"val", "test"}


def test_load_finds_the_study_and_a_second_run_is_refused(finished, workdir):
    study, *_ = finished
    again = Study.load("api", storage=str(workdir / "studies"))
    assert again.space == study.space and again.paths == study.paths
    with pytest.raises(StudyInputError, match="resume api"):
        again.run()
    with pytest.raises(StudyInputError, match="already exists"):
        Study.create(SPACE, name="api", storage=str(workdir / "studies"))


def test_rerun_creates_a_new_study_of_the_best_configurations(finished, workdir):
    study, *_ = finished
    rerun = study.rerun(top=1, seeds=2, name="api-best")
    assert rerun.paths.root == workdir / "studies" / "api-best"
    assert rerun.space.samples == 1 and rerun.space.repeats == 2
    assert rerun.run().trials == 2


def test_a_study_whose_start_failed_runs_later_by_name(workdir):
    Study.create(SPACE, name="later", storage=str(workdir / "studies"), overrides={"repeats": 1})
    later = Study.load("later", storage=str(workdir / "studies"))  # e.g. Ray did not start
    with pytest.raises(StudyInputError, match="none of its trials has started"):
        later.front()
    assert later.resume().trials == 2  # `study resume later` starts its trials
    assert len(optuna.load_study(study_name="later", storage=later.paths.optuna_url).trials) == 2


def test_bad_input_is_one_line_and_leaves_nothing(workdir):
    with pytest.raises(StudyInputError) as err:
        Study.create({**SPACE, "repeats": 0}, name="bad", storage=str(workdir / "fresh"))
    assert len(str(err.value).splitlines()) == 1 and "repeats" in str(err.value)
    with pytest.raises(StudyInputError, match="name"):
        Study.create(SPACE, name="../out", storage=str(workdir / "fresh"))
    assert not (workdir / "fresh").exists()


def test_front_models_are_logged_and_a_registered_model_gives_calibrated_probabilities(
    finished, workdir
):
    from mlflow.tracking import MlflowClient

    from study.analysis.front import best_trials
    from study.tracking.model_registry import MODEL_URI_TAG

    study, *_ = finished
    uri = study.tracking()["tracking_uri"]
    client = MlflowClient(uri)
    front = best_trials(study.optuna())
    for trial in study.optuna().get_trials():
        tags = client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags
        assert (MODEL_URI_TAG in tags) == (trial.number in {t.number for t in front})

    version = study.register("api-model")
    trial = study.optuna().trials[int(version.tags["trial"])]
    assert float(version.tags["temperature"]) == pytest.approx(trial.user_attrs["temperature"])
    assert float(version.tags["test_ece"]) == pytest.approx(trial.user_attrs["test_ece"], rel=1e-5)

    gap = served_probability_gap(study, "api-model", version, trial.user_attrs)
    assert gap < 2e-3  # float16 storage of the evidence


def served_probability_gap(
    study: Study, model: str, version, attrs: dict, epoch: int | None = None
) -> float:
    """The largest difference between what registered ``model`` ``version`` serves on digits'
    test images and the trial's stored test evidence (of ``epoch``, else of every stored epoch:
    one) scaled by the temperature in ``attrs`` (the trial's, or its kept epoch's)."""
    import mlflow

    from trainables.data.datasets import load_data

    mlflow.set_tracking_uri(study.tracking()["tracking_uri"])
    served = mlflow.pyfunc.load_model(f"models:/{model}/{version.version}")
    data = load_data("digits")
    x = np.concatenate([b[0].numpy() for b in data.eval_batches("test", 128)])
    predicted = served.predict(x)
    where = (pc.field("trial_id") == attrs["tune_trial_id"]) & (pc.field("split") == "test")
    if epoch is not None:
        where &= pc.field("epoch") == epoch
    rows = study.evidence().to_table(filter=where).to_pandas().sort_values("sample_id")
    stored = np.stack(rows.probs.to_list()).astype(np.float64)  # float16, before scaling
    scaled = stored ** (1 / attrs["temperature"])
    scaled /= scaled.sum(axis=1, keepdims=True)
    assert predicted.shape == scaled.shape == (data.split_size("test"), 10)
    return float(np.abs(predicted - scaled).max())


def test_register_by_trial_number_and_its_one_line_errors(finished, capsys, monkeypatch):
    from study.cli.main import main

    study, *_ = finished
    monkeypatch.chdir(study.paths.root.parent.parent)
    assert main(["register", "api", "api-model", "--trial", "0"]) == 0
    assert "registered: models:/api-model/" in capsys.readouterr().out
    assert main(["register", "api", "api-model", "--trial", "99"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no finished trial 99" in line


# ------------------------------------------------------------ issue 34, item 5: what is served

# no BatchNorm: lr 100 diverges (on every digit: on 256 it happens not to)
DIVERGES = {"method": "sgd", "lr": 100.0, "model": "cnn_fc", "train_subset": None}


@pytest.fixture(scope="module")
def kinds(workdir: Path) -> Study:
    """A study whose trials are the five kinds of model the registry serves (plain, MC dropout,
    MIMO, rank-1, bSAM; ``tests.test_model_registry.KINDS``) and a diverged one, one epoch."""
    from tests.test_model_registry import KINDS

    space = {
        "fixed": {**SPACE["fixed"], "epochs": 1, "train_subset": 256},
        "points": [*KINDS.values(), DIVERGES],
        "concurrency": 2,
        "sampler": "random",
    }
    study = Study.create(space, name="kinds", storage=str(workdir / "studies"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert study.run().trials == len(KINDS) + 1
    return study


@contextlib.contextmanager
def model_servers(uris: dict[str, str], tracking_uri: str) -> Iterator[dict[str, str]]:
    """``mlflow models serve`` of each model URI, started together on 127.0.0.1; their URLs."""
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.test_tracking import free_port, stop_server

    bin_dir = str(Path(sys.executable).parent)  # uvicorn, which the server runs, is beside it
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": bin_dir + ":" + os.environ["PATH"],
    }
    servers, urls = [], {}
    try:
        for key, uri in uris.items():
            port = free_port()
            command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
            command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
            servers.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # uvicorn, its child, dies with it
                    env=env,
                )
            )
            urls[key] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        for proc, url in zip(servers, urls.values(), strict=True):
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2):
                        break
                except OSError:
                    pass
                assert proc.poll() is None, f"mlflow models serve of {url} exited"
                assert time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(0.5)
        yield urls
    finally:
        for proc in servers:
            stop_server(proc)


def point_of(trial: optuna.trial.FrozenTrial) -> dict:
    """The point of the space a trial ran (its settings but the seed)."""
    return {k: v for k, v in trial_settings(trial).items() if k != "seed"}


def invoke(url: str, images: np.ndarray) -> tuple[int, dict]:
    """POST ``images`` to a model server's ``/invocations``; the status and the JSON answer."""
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"inputs": images.tolist()}).encode()  # NaN and Infinity as JSON allows
    request = urllib.request.Request(
        f"{url}/invocations", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_every_kind_of_model_serves_the_probabilities_its_trial_logged_for_any_batch(kinds):
    import torch
    from mlflow.tracking import MlflowClient

    from study.analysis.front import best_trials
    from study.tracking.model_registry import MODEL_FORMAT_TAG, MODEL_URI_TAG
    from tests.test_model_registry import KINDS
    from trainables.data.datasets import load_data
    from trainables.metrics import calibration

    study = kinds
    trials = {
        kind: trial
        for trial in study.optuna().get_trials()
        for kind, point in KINDS.items()
        if point_of(trial) == point
    }
    assert sorted(trials) == sorted(KINDS)
    assert all(t.user_attrs["status"] == "completed" for t in trials.values())
    # a model logged before this format (one that took batches of two only) is logged again
    client = MlflowClient(study.tracking()["tracking_uri"])
    front = {t.number for t in best_trials(study.optuna())}
    old = next(t for t in trials.values() if t.number in front)  # logged at the end of the run
    run_id = old.user_attrs["mlflow_run_id"]
    before = client.get_run(run_id).data.tags[MODEL_URI_TAG]
    client.delete_tag(run_id, MODEL_FORMAT_TAG)
    versions = {kind: study.register(f"kinds-{kind}", trial=t.number) for kind, t in trials.items()}
    assert client.get_run(run_id).data.tags[MODEL_URI_TAG] != before
    uris = {kind: f"models:/kinds-{kind}/{v.version}" for kind, v in versions.items()}
    x = np.concatenate([b[0].numpy() for b in load_data("digits").eval_batches("test", 1024)])
    with model_servers(uris, study.tracking()["tracking_uri"]) as urls:
        for kind, trial in trials.items():
            status, answer = invoke(urls[kind], x)
            assert status == 200, answer
            served = np.asarray(answer["predictions"])
            rows = (
                study.evidence()
                .to_table(
                    filter=(pc.field("trial_id") == trial.user_attrs["tune_trial_id"])
                    & (pc.field("split") == "test")
                )
                .to_pandas()
                .sort_values("sample_id")
            )
            # what the trial logged: its calibrated confidence (float32) and probabilities
            # (float16, before scaling), and the version's metric tags
            assert served.shape == (len(rows), 10)
            np.testing.assert_allclose(served.max(axis=1), rows.confidence_ts, rtol=0, atol=1e-5)
            stored = np.stack(rows.probs.to_list()).astype(np.float64)
            scaled = stored ** (1 / trial.user_attrs["temperature"])
            scaled /= scaled.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(served, scaled, rtol=0, atol=2e-3)
            tags = versions[kind].tags
            labels = torch.tensor(rows.label.to_numpy(), dtype=torch.int64)
            probs = torch.tensor(served, dtype=torch.float32)
            assert float(tags["test_accuracy"]) == pytest.approx(
                (probs.argmax(dim=1) == labels).float().mean().item(), abs=1e-6
            )
            assert float(tags["test_ece_ts"]) == pytest.approx(
                float(calibration.ece(probs, labels, 15)), abs=1e-5
            )
            start = 0
            for size in (1, 3, 7):  # any batch: the same rows
                status, answer = invoke(urls[kind], x[start : start + size])
                assert status == 200, f"{kind}, a batch of {size}: {answer}"
                found = np.asarray(answer["predictions"])
                np.testing.assert_allclose(found, served[start : start + size], rtol=0, atol=1e-6)
                start += size
        # a NaN or infinite pixel: 400, naming the problem, for every kind
        for kind, value in zip(KINDS, [np.nan, np.inf, -np.inf, np.nan, np.inf], strict=True):
            bad = x[:3].copy()
            bad[1, 0, 2, 3] = value
            status, answer = invoke(urls[kind], bad)
            assert status == 400, f"{kind}: {status} {answer}"
            assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "non-finite value" in answer["message"] and "[1, 0, 2, 3]" in answer["message"]


def test_a_diverged_trial_is_never_registered(kinds, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from study.cli.main import main
    from study.tracking.model_registry import MODEL_URI_TAG

    study = kinds
    (diverged,) = [
        t
        for t in study.optuna().get_trials()
        if t.params.get("lr") == 100.0 or trial_settings(t).get("lr") == 100.0
    ]
    assert diverged.user_attrs["status"] == "diverged"
    with pytest.raises(StudyInputError, match=f"trial {diverged.number} diverged"):
        study.register("kinds-diverged", trial=diverged.number)
    monkeypatch.chdir(study.paths.root.parent.parent)
    assert main(["register", "kinds", "kinds-diverged", "--trial", str(diverged.number)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "diverged" in line and "predicts NaN" in line
    client = MlflowClient(study.tracking()["tracking_uri"])
    assert MODEL_URI_TAG not in client.get_run(diverged.user_attrs["mlflow_run_id"]).data.tags
    assert not client.search_model_versions("name = 'kinds-diverged'")
