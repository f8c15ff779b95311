"""A study on a real multi-node Ray cluster on one machine (a head and two worker raylets): trials
spread over the nodes, and losing a worker mid-trial loses and duplicates nothing."""

from __future__ import annotations

import json
import subprocess

import pyarrow.fs as pafs
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.cluster_utils import Cluster

from tests.test_s3 import s3_env  # noqa: F401  (a fixture, used through getfixturevalue)
from tests.test_study import (
    PARETO_SEARCH,
    held_trial,
    optuna_study,
    release_hold,
    start_study_run,
    wait_until,
    write_space,
)
from trainables.data.datasets import load_data
from trainables.evaluation.evidence import open_evidence
from trainables.layout import resolve_fs
from trainables.trial.hold import HOLD_ENV

pytestmark = pytest.mark.slow

SAMPLES = 3
EPOCHS = 6


def _rows(tune_uri: str) -> dict[str, list[dict]]:
    """Each trial's reported rows, read from Tune's storage (a local path or s3://)."""
    fs, root = resolve_fs(tune_uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return {}
    rows = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type == pafs.FileType.File and info.base_name == "result.json":
            with fs.open_input_stream(info.path) as src:
                text = src.read().decode()
            trial = info.path.rsplit("/", 2)[-2]
            rows[trial] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_trials_spread_over_nodes_and_survive_a_lost_worker(
    tmp_path, storage, request, monkeypatch
):
    env = request.getfixturevalue("s3_env") if storage == "s3" else None
    storage_arg = "s3://sharpcal-test/studies" if env else "studies"
    if env:  # this process reads the bucket too
        for key in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "SHARPCAL_STATE",
        ):
            monkeypatch.setenv(key, env[key])
    data_uri = f"{storage_arg}/nodes" if env else str(tmp_path / "studies" / "nodes")
    hold_dir = tmp_path / "hold"
    # Set before the nodes start, so that the trials' worker processes inherit it: the first trial
    # to finish epoch 2 waits there, provably mid-run, until the test has removed its node.
    monkeypatch.setenv(HOLD_ENV, f"{hold_dir}:2")
    loopback = {"node_ip_address": "127.0.0.1"}  # every node on loopback, never the machine's IP
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **loopback})
    workers = [cluster.add_node(num_cpus=1, **loopback) for _ in range(2)]
    cluster.wait_for_nodes()
    assert cluster.address.startswith("127.0.0.1:")
    assert {n.node_ip_address for n in [cluster.head_node, *workers]} == {"127.0.0.1"}
    try:
        path = write_space(
            tmp_path,
            fixed={"epochs": EPOCHS},
            search=PARETO_SEARCH,
            samples=SAMPLES,
            concurrency=2,
            seed=11,
            max_failures=3,
        )
        driver = start_study_run(
            tmp_path, path, "nodes", storage_arg, "--address", cluster.address,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        tune_dir = f"{data_uri}/tune"
        wait_until(lambda: held_trial(hold_dir) is not None, driver, "a trial was held")
        victim = held_trial(hold_dir)["node_id"]
        (node,) = [w for w in workers if w.node_id == victim]
        cluster.remove_node(node)
        release_hold(hold_dir)
        out, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, out[-4000:]
    finally:
        cluster.shutdown()

    study = optuna_study(tmp_path, "nodes")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == SAMPLES and len(study.trials) == SAMPLES

    rows = _rows(tune_dir)
    assert len(rows) == SAMPLES
    assert len({r["node_id"] for trial in rows.values() for r in trial}) == 2  # both workers
    moved = [t for t, trial in rows.items() if len({r["node_id"] for r in trial}) > 1]
    assert moved, "the trial on the removed node did not move to the surviving one"
    for trial_name in moved:
        trial = rows[trial_name]
        assert sorted({r["epoch"] for r in trial}) == list(range(1, EPOCHS + 1))
        first_on_survivor = next(r for r in trial if r["node_id"] != trial[0]["node_id"])
        assert first_on_survivor["epoch"] > 1  # continued from its last checkpoint, not epoch 1

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nodes")
    children = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    ]
    assert len(children) == SAMPLES
    assert len({r.data.tags["sharpcal.trial_id"] for r in children}) == SAMPLES

    digits = load_data("digits")
    table = open_evidence(f"{data_uri}/evidence").to_table(
        columns=["trial_id", "split", "sample_id"]
    )
    assert table.num_rows == SAMPLES * (digits.split_size("val") + digits.split_size("test"))
    keys = set(zip(*(table.column(c).to_pylist() for c in ("trial_id", "split", "sample_id"))))
    assert len(keys) == table.num_rows  # no duplicated row
