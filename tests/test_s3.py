"""`--storage s3://...` end to end against a local S3-compatible server (moto) on 127.0.0.1:
Tune state and checkpoints, evidence and trial figures in the bucket, a killed study resumed from
it, and the report read back from it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import boto3
import pytest
from optuna.trial import TrialState

from tests.test_study import (
    PARETO_SEARCH,
    _complete_count,
    optuna_study,
    run_and_kill_while_held,
    write_space,
)
from tests.test_tracking import free_port
from trainables.data.datasets import load_data
from trainables.evaluation.evidence import open_evidence

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_env(tmp_path):
    """A moto S3 server on loopback with one bucket; yields the environment pointing at it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SHARPCAL_STATE": str(tmp_path),  # the driver-side metadata: <tmp_path>/studies/<name>
    }
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.3)
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="sharpcal-test")
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _keys(env: dict[str, str], prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sharpcal-test", Prefix=prefix)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return [k for k in keys if not k.endswith("/")]  # leave out directory markers


def test_study_on_s3_survives_a_killed_driver_and_resumes_from_the_bucket(tmp_path, s3_env):
    path = write_space(
        tmp_path, fixed={"epochs": 3}, search=PARETO_SEARCH, samples=3, concurrency=1, seed=7
    )
    storage = "s3://sharpcal-test/studies"
    # concurrency 1: trial 1 has finished, trial 2 is held after epoch 2, trial 3 not started
    run_and_kill_while_held(
        tmp_path, path, "s3", storage, epoch=2, nth=2, env=s3_env,
        also=lambda: _complete_count(tmp_path, "s3") >= 1,
    )  # fmt: skip
    assert _complete_count(tmp_path, "s3") == 1

    proc = subprocess.run(
        [sys.executable, "-m", "study", "resume", "s3", "--storage", storage],
        cwd=tmp_path,
        env=s3_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    study = optuna_study(tmp_path, "s3")  # the Optuna database stays on the driver
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and not study.get_trials(states=(TrialState.RUNNING,))

    keys = _keys(s3_env, "studies/s3/")
    assert any(k.startswith("studies/s3/tune/") and "checkpoint_" in k for k in keys)
    assert any(k.startswith("studies/s3/tune/") and k.endswith("tuner.pkl") for k in keys)
    figures = [k for k in keys if k.startswith("studies/s3/trials/")]
    assert len(figures) == 3 and all(k.endswith("reliability.png") for k in figures)
    assert not any("/_tmp-" in k for k in keys)  # no half-written evidence left visible

    digits = load_data("digits")
    per_trial = digits.split_size("val") + digits.split_size("test")
    old = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update({k: s3_env[k] for k in old})
    try:
        table = open_evidence(f"{storage}/s3/evidence").to_table(columns=["trial_id", "sample_id"])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert table.num_rows == 3 * per_trial
    assert sorted(set(table.column("trial_id").to_pylist())) == sorted(
        t.user_attrs["tune_trial_id"] for t in complete
    )
    assert (tmp_path / "studies" / "s3" / "report" / "report.md").is_file()
