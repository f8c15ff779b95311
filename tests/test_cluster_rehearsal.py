"""The cloud of cluster.yaml rehearsed on one machine (``make cluster-rehearsal``): Ray's own
autoscaler on its fake multi-node provider, with cluster.yaml's worker node types, launches GPU
workers from zero for a study on S3, replaces a spot node taken away mid-trial, falls back to
on-demand when spot is at its maximum, and removes idle workers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from optuna.trial import TrialState

from study.runtime.cluster import HEAD, nodes_by_type
from study.runtime.rehearsal import CLUSTER_YAML, FakeCluster, fake_cluster_config, free_port
from tests.test_multinode import _rows
from tests.test_s3 import s3_env  # noqa: F401  (a fixture)
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
from trainables.trial.hold import HOLD_ENV

EPOCHS = 5
S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
S3_KEYS += ("AWS_EC2_METADATA_DISABLED", "SHARPCAL_STATE")


def _cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_the_rehearsal_takes_its_worker_types_from_cluster_yaml():
    cluster = _cluster_yaml()
    config = fake_cluster_config(cluster, "127.0.0.1:1234", 0.1, {"gpu_spot": 1})
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert config["available_node_types"]["ray.head.default"]["resources"] == head["resources"]
    for name, spec in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        fake = config["available_node_types"][name]
        assert fake["resources"] == spec["resources"] and fake["labels"] == spec["labels"]
        assert fake["min_workers"] == spec["min_workers"]
        expected = 1 if name == "gpu_spot" else spec["max_workers"]
        assert fake["max_workers"] == expected
    assert config["provider"]["gcs_address"] == "127.0.0.1:1234"


def test_no_cluster_at_an_address_shows_no_nodes_at_once():
    started = time.monotonic()
    assert nodes_by_type(f"127.0.0.1:{free_port()}") is None
    assert time.monotonic() - started < 10  # not Ray's 40 s of retries


def _wait(ready, what: str, timeout: float = 120.0, shown=None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting until {what}: {shown and shown()}"
        time.sleep(1.0)


def _status_nodes(tmp_path, storage: str, cluster: FakeCluster) -> str:
    """The "nodes:" line of ``study status`` run beside the study (a few tries: Ray's state API
    answers once the head's dashboard is up)."""
    for _ in range(10):
        status = subprocess.run(
            [sys.executable, "-m", "study", "status", "cloud", "--storage", storage,
             "--address", cluster.address],
            cwd=tmp_path, env=cluster.env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        found = [line for line in status.stdout.splitlines() if line.startswith("nodes:")]
        if found:
            return found[0]
        time.sleep(2)
    raise AssertionError(f"study status showed no nodes:\n{status.stdout}")


def _space(tmp_path, samples: int, concurrency: int):
    return write_space(
        tmp_path,
        fixed={"epochs": EPOCHS},
        search=PARETO_SEARCH,
        samples=samples,
        concurrency=concurrency,
        seed=5,
        resources={"cpu": 1, "gpu": 1},
        max_failures=3,
    )


@pytest.mark.slow
def test_scale_up_from_zero_a_spot_node_preempted_mid_trial_and_scale_down(
    tmp_path,
    s3_env,  # noqa: F811  (the fixture imported above)
    monkeypatch,
):
    """Issue 25, items 1, 2 and 4."""
    for key in S3_KEYS:  # the fake nodes' trials write to the bucket too
        monkeypatch.setenv(key, s3_env[key])
    hold_dir = tmp_path / "hold"
    monkeypatch.setenv(HOLD_ENV, f"{hold_dir}:2")  # inherited by the nodes the autoscaler starts
    samples = 3
    storage = "s3://sharpcal-test/studies"
    cluster = FakeCluster(tmp_path / "cluster")
    cluster.start()
    try:
        _wait(lambda: nodes_by_type(cluster.address) == {HEAD: 1}, "the head alone is up", 60)
        driver = start_study_run(
            tmp_path, _space(tmp_path, samples, 2), "cloud", storage, "--address",
            cluster.address, env=cluster.env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_until(lambda: held_trial(hold_dir) is not None, driver, "a trial was held")
        nodes = _status_nodes(tmp_path, storage, cluster)
        assert "gpu_spot" in nodes and "1 head" in nodes, nodes
        victim = held_trial(hold_dir)["node_id"]
        assert cluster.preempt(victim) >= 1
        release_hold(hold_dir)
        out, _ = driver.communicate(timeout=900)
        assert driver.returncode == 0, out[-4000:]
        # the autoscaler removes the idle workers after the (shortened) idle timeout
        _wait(
            lambda: nodes_by_type(cluster.address) == {HEAD: 1},
            "the workers were removed",
            shown=lambda: nodes_by_type(cluster.address),
        )
    finally:
        left = cluster.stop()
    assert left == [], "processes of the rehearsal outlived it"

    study = optuna_study(tmp_path, "cloud")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == samples and len(study.trials) == samples
    rows = _rows(f"{storage}/cloud/tune")
    assert len(rows) == samples
    every = [r for trial in rows.values() for r in trial]
    # on launched spot workers, never on the head (which has no GPU and no node-type label),
    # and not on on-demand while spot has room
    assert {r.get("node_type") for r in every} == {"gpu_spot"}
    assert len({r["node_id"] for r in every}) >= 2  # launched workers, the replacement among them
    moved = [trial for trial in rows.values() if len({r["node_id"] for r in trial}) > 1]
    assert moved, "the preempted trial did not move to another node"
    for trial in moved:
        assert victim in {r["node_id"] for r in trial}
        assert sorted({r["epoch"] for r in trial}) == list(range(1, EPOCHS + 1))
        first_after = next(r for r in trial if r["node_id"] != victim and r["epoch"] > 1)
        assert first_after["epoch"] > 1  # from its last checkpoint on S3, not from epoch 1
    assert "on gpu_spot" in out  # the console names the node a trial ran on

    digits = load_data("digits")
    table = open_evidence(f"{storage}/cloud/evidence").to_table(
        columns=["trial_id", "split", "sample_id"]
    )
    assert table.num_rows == samples * (digits.split_size("val") + digits.split_size("test"))
    keys = set(zip(*(table.column(c).to_pylist() for c in ("trial_id", "split", "sample_id"))))
    assert len(keys) == table.num_rows  # each sample's evidence once per trial


@pytest.mark.slow
def test_on_demand_is_launched_when_spot_is_at_its_maximum(tmp_path, monkeypatch):
    """Issue 25, item 2's second case: gpu_spot capped at one node, two trials at once (the
    first held on its node until both types run, so the second cannot wait for it)."""
    hold_dir = tmp_path / "hold"
    monkeypatch.setenv(HOLD_ENV, f"{hold_dir}:1")
    cluster = FakeCluster(tmp_path / "cluster", max_workers={"gpu_spot": 1})
    cluster.start()
    try:
        driver = start_study_run(
            tmp_path, _space(tmp_path, 2, 2), "fallback", "studies", "--address",
            cluster.address, env=cluster.env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_until(lambda: held_trial(hold_dir) is not None, driver, "a trial was held")
        both = {"gpu_spot", "gpu_ondemand"}
        _wait(lambda: both <= set(nodes_by_type(cluster.address) or {}), "on-demand launched")
        release_hold(hold_dir)
        out, _ = driver.communicate(timeout=900)
        assert driver.returncode == 0, out[-4000:]
    finally:
        left = cluster.stop()
    assert left == []
    rows = _rows(str(tmp_path / "studies" / "fallback" / "tune"))
    types = {trial[0]["node_type"] for trial in rows.values()}
    assert types == {"gpu_spot", "gpu_ondemand"}, types
