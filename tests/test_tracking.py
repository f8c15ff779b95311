"""MLflow over HTTP against a real `mlflow server`, and the study's evidence read back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.test_cli import run_study, study_in_process
from tests.test_study import (
    PARETO_SEARCH,
    held_trial,
    hold_env,
    optuna_study,
    release_hold,
    start_study_run,
    wait_until,
    write_space,
)
from trainables.data.datasets import dataset_source, load_data
from trainables.evaluation.evidence import open_evidence
from trainables.metrics import calibration

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(directory: Path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{directory / 'mlflow.db'}",
            "--artifacts-destination",
            str(directory / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers die with it
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url, proc
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen) -> None:
    """Kill the server and its workers (uvicorn runs in child processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


SAMPLES = 3
EPOCHS = 2
_digits = load_data("digits")
DIGITS_TRAIN, DIGITS_VAL, DIGITS_TEST = (_digits.split_size(s) for s in ("train", "val", "test"))


@pytest.fixture(scope="module")
def tracked_study(tmp_path_factory):
    """A 3-trial study on digits run in-process, tracked by a real MLflow server over HTTP."""
    work = tmp_path_factory.mktemp("tracked")
    with mlflow_server(work / "server") as (url, _):
        path = write_space(
            work,
            fixed={"epochs": EPOCHS},
            search=PARETO_SEARCH,
            samples=SAMPLES,
            concurrency=2,
            seed=3,
        )
        proc = study_in_process(
            "run",
            str(path),
            "--name",
            "tracked",
            "--storage",
            "studies",
            "--tracking-uri",
            url,
            cwd=work,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("tracked")
        runs = client.search_runs([experiment.experiment_id])
        details = {
            run.info.run_id: (
                run,
                {a.path for a in client.list_artifacts(run.info.run_id)},
                {a.path for a in client.list_artifacts(run.info.run_id, "evidence")},
                [m.step for m in client.get_metric_history(run.info.run_id, "val_ece")],
                [d.dataset for d in client.get_run(run.info.run_id).inputs.dataset_inputs],
            )
            for run in runs
        }
        yield work, details


def test_one_parent_and_one_nested_child_per_trial(tracked_study):
    _, details = tracked_study
    runs = [d[0] for d in details.values()]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == SAMPLES
    parent = parents[0]
    assert parent.data.tags["sampler"] == "tpe" and parent.data.tags["objective"] == "pareto"
    assert parent.data.params["fixed.dataset"] == "digits"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert len({c.info.run_name for c in children}) == SAMPLES
    for child in children:
        _, artifacts, evidence, steps, datasets = details[child.info.run_id]
        assert child.data.tags["status"] == "completed"
        assert child.info.run_name == child.data.tags["sharpcal.trial_id"]
        assert steps == list(range(1, EPOCHS + 1))  # per-epoch metrics, step = epoch
        assert "test_ece" in child.data.metrics and "test_ece_ts" in child.data.metrics
        assert child.data.params["dataset"] == "digits"
        assert "reliability.png" in artifacts and "evidence" in artifacts
        assert {"evidence/split=val", "evidence/split=test"} <= evidence
        (dataset,) = datasets  # logged once, though every epoch reports it
        assert (dataset.name, dataset.digest) == ("digits", dataset_source("digits")[1][:36])
        splits = json.loads(dataset.profile)["splits"]
        assert splits == {"train": DIGITS_TRAIN, "val": DIGITS_VAL, "test": DIGITS_TEST}


def test_evidence_has_every_sample_once_and_reproduces_logged_ece(tracked_study):
    work, details = tracked_study
    root = str(work / "studies" / "tracked" / "evidence")
    table = open_evidence(root).to_table()
    n_val, n_test = DIGITS_VAL, DIGITS_TEST
    assert table.num_rows == SAMPLES * (n_val + n_test)
    sql = (
        f"select trial_id, split, count(*) n, count(distinct sample_id) d "
        f"from read_parquet('{root}/**/*.parquet', hive_partitioning=true, "
        "hive_types={'trial_id': VARCHAR, 'split': VARCHAR}) group by 1, 2"
    )
    counts = duckdb.sql(sql).fetchall()
    assert len(counts) == SAMPLES * 2
    assert all(n == d == (n_val if split == "val" else n_test) for _, split, n, d in counts)

    frame = table.to_pandas()
    logged = {
        run.data.tags["sharpcal.trial_id"]: run.data.metrics["test_ece"]
        for run, *_ in details.values()
        if "sharpcal.trial_id" in run.data.tags
    }
    for trial_id, test_ece in logged.items():
        rows = frame[(frame.trial_id == trial_id) & (frame.split == "test")]
        probs = torch.from_numpy(np.stack(rows.probs.to_list()).astype(np.float32))
        labels = torch.tensor(rows.label.to_numpy()).long()
        exact = torch.from_numpy(rows.confidence.to_numpy())  # float32 max-softmax
        assert calibration.ece(probs, labels).item() == pytest.approx(test_ece, abs=3e-3)
        correct = torch.from_numpy(rows.correct.to_numpy()).float()
        bins = torch.clamp((exact * 15).long(), max=14)
        gap = torch.zeros(15).index_add_(0, bins, correct - exact).abs().sum() / len(rows)
        assert gap.item() == pytest.approx(test_ece, abs=1e-5)


def test_unreachable_tracking_server_is_a_clear_error_before_any_trial(tmp_path):
    path = write_space(tmp_path, fixed={"epochs": 1}, search=PARETO_SEARCH, samples=1)
    url = f"http://127.0.0.1:{free_port()}"
    proc = study_in_process(
        "run", str(path), "--name", "x", "--storage", "studies", "--tracking-uri", url, cwd=tmp_path
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert url in line and "--tracking-uri" in line
    assert not (tmp_path / "studies").exists()


def test_server_lost_mid_study_does_not_stop_training(tmp_path):
    with mlflow_server(tmp_path / "server") as (url, server):
        path = write_space(
            tmp_path, fixed={"epochs": 3}, search=PARETO_SEARCH, samples=3, concurrency=1, seed=4
        )
        hold_dir = tmp_path / "hold"  # the first trial waits after epoch 1 until released
        driver = start_study_run(
            tmp_path, path, "lost", "studies", "--tracking-uri", url,
            env=hold_env(hold_dir, epoch=1),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_until(lambda: held_trial(hold_dir) is not None, driver, "a trial was held")
        stop_server(server)
        release_hold(hold_dir)
        out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-3000:]
    assert "unreachable" in out
    study = optuna_study(tmp_path, "lost")
    assert len([t for t in study.trials if t.user_attrs.get("status") == "completed"]) == 3
    root = str(tmp_path / "studies" / "lost" / "evidence")
    assert open_evidence(root).count_rows() == 3 * (DIGITS_VAL + DIGITS_TEST)


def test_study_train_logs_one_run(tmp_path):
    with mlflow_server(tmp_path / "server") as (url, _):
        proc = run_study(
            "train",
            "--set",
            "dataset=digits",
            "--set",
            "train_subset=null",
            "--set",
            "epochs=2",
            "--tracking-uri",
            url,
            "--experiment",
            "one",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        client = MlflowClient(url)
        (run,) = client.search_runs([client.get_experiment_by_name("one").experiment_id])
        assert run.data.tags["status"] == "completed"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_ece")] == [1, 2]
        assert "test_ece" in run.data.metrics
        assert "reliability.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
