"""A study on a real multi-node Ray cluster on one machine (a head and two worker raylets): trials
spread over the nodes, and losing a worker mid-trial loses and duplicates nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.cluster_utils import Cluster

from tests.test_study import PARETO_SEARCH, optuna_study, write_space
from trainables.data import load_data
from trainables.evidence import open_evidence

pytestmark = pytest.mark.slow

SAMPLES = 3
EPOCHS = 6


def _rows(tune_dir: Path) -> dict[str, list[dict]]:
    rows = {}
    for result in tune_dir.glob("trial_*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        rows[result.parent.name] = [json.loads(line) for line in lines]
    return rows


def test_trials_spread_over_nodes_and_survive_a_lost_worker(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
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
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "study",
                "run",
                str(path),
                "--name",
                "nodes",
                "--storage",
                "studies",
                "--address",
                cluster.address,
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        tune_dir = tmp_path / "studies" / "nodes" / "tune"
        deadline = time.monotonic() + 300
        victim = None
        while victim is None and time.monotonic() < deadline:
            assert driver.poll() is None, "the study ended before a node could be removed"
            for rows in _rows(tune_dir).values():
                if len(rows) >= 2 and rows[-1]["epoch"] < EPOCHS:
                    victim = rows[-1]["node_id"]
                    break
            time.sleep(0.3)
        assert victim is not None
        (node,) = [w for w in workers if w.node_id == victim]
        cluster.remove_node(node)
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
    table = open_evidence(str(tmp_path / "studies" / "nodes" / "evidence")).to_table(
        columns=["trial_id", "split", "sample_id"]
    )
    assert table.num_rows == SAMPLES * (digits.split_size("val") + digits.split_size("test"))
    keys = set(zip(*(table.column(c).to_pylist() for c in ("trial_id", "split", "sample_id"))))
    assert len(keys) == table.num_rows  # no duplicated row
