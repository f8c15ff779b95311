"""`study status` on a study's storage alone: counts by state, the driver from the lock, elapsed
time, the best so far and the MLflow run; no Ray (see also test_modules)."""

from __future__ import annotations

import datetime as dt
import os

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search_spaces.schema import check_space
from study import Study, StudyInputError
from study.api.status import STATES
from study.cli.main import main
from study.search.sampler import name_objectives
from study.storage.lock import StudyLock
from study.storage.records import STATUS_ATTR
from trainables.layout import study_paths

SPACE = {
    "fixed": {"dataset": "digits", "train_subset": None, "epochs": 1},
    "search": {"lr": {"loguniform": [0.01, 0.1]}},
    "samples": 8,
}
T0 = dt.datetime(2026, 11, 1, 8, 0, 0)  # in the past: elapsed "to now" exceeds 5 minutes


def _trial(state: TrialState, status: str | None, accuracy: float, minutes: int):
    done = state != TrialState.RUNNING
    return optuna.trial.create_trial(
        state=state,
        params={"lr": 0.05},
        distributions={"lr": FloatDistribution(0.01, 0.1, log=True)},
        values=[accuracy, 1 - accuracy] if state == TrialState.COMPLETE else None,
        user_attrs={STATUS_ATTR: status} if status else {},
    ), (
        T0 + dt.timedelta(minutes=minutes),
        T0 + dt.timedelta(minutes=minutes + 1) if done else None,
    )


def _make_study(tmp_path) -> Study:
    """A study directory as `study run` leaves it: space, Optuna database, tracking file; 6 of
    its 8 trials asked (2 completed, 1 diverged, 1 pruned, 1 failed, 1 unfinished)."""
    paths = study_paths("st", str(tmp_path / "studies"))
    paths.root.mkdir(parents=True)
    space = check_space(dict(SPACE), "test")
    paths.space.write_text(yaml.safe_dump({**space.model_dump(mode="json"), "name": "st"}))
    paths.tracking.write_text(
        '{"tracking_uri": "sqlite:///m.db", "experiment_id": "3", "parent_run_id": "abc123"}'
    )
    study = optuna.create_study(
        study_name="st", storage=paths.optuna_url, directions=["maximize", "minimize"]
    )
    name_objectives(study, space)
    made = [
        _trial(TrialState.COMPLETE, "completed", 0.9, 0),
        _trial(TrialState.COMPLETE, "completed", 0.8, 1),
        _trial(TrialState.COMPLETE, "diverged", 0.1, 2),
        _trial(TrialState.PRUNED, "pruned", 0.0, 3),
        _trial(TrialState.FAIL, "failed", 0.0, 4),
        _trial(TrialState.RUNNING, None, 0.0, 5),
    ]
    for trial, (start, end) in made:
        trial.datetime_start, trial.datetime_complete = start, end
        study.add_trial(trial)
    return Study.load("st", str(tmp_path / "studies"))


def test_counts_by_state_elapsed_best_and_mlflow_without_a_driver(tmp_path):
    status = _make_study(tmp_path).status()
    assert set(status.counts) == set(STATES)
    assert status.counts == {
        "completed": 2, "diverged": 1, "pruned": 1, "failed": 1,
        "running": 0, "interrupted": 1, "pending": 2,
    }  # fmt: skip
    assert status.driver is None
    assert status.elapsed_s == 5 * 60  # first start 08:00, last end 08:05 on that day
    assert [row["trial"] for row in status.best] == [0]
    assert status.tracking["parent_run_id"] == "abc123"


def test_an_unfinished_trial_is_running_while_a_driver_holds_the_study(tmp_path):
    study = _make_study(tmp_path)
    with StudyLock(study.paths.root, "st"):
        status = study.status()
    assert status.counts["running"] == 1 and status.counts["interrupted"] == 0
    assert status.driver is not None and "pid" in status.driver
    assert status.elapsed_s > 5 * 60  # to now: the study is still running


def test_the_command_prints_the_counts_and_the_front(tmp_path, capsys, monkeypatch):
    _make_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["status", "st"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study st: 5/8 trials finished (2 completed, 1 diverged, 1 pruned, ")
    assert "1 interrupted, 2 pending" in out and "study resume st" in out
    assert "elapsed: 5m 00s" in out and "run abc123" in out
    assert "Pareto front so far:" in out
    assert main(["status", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_objectives_are_named_for_optuna_dashboard(tmp_path):
    study = _make_study(tmp_path).optuna()
    assert study.metric_names == ["val_accuracy", "val_ece"]
    weighted = check_space({**SPACE, "objective": {"type": "weighted", "weight": 2}}, "test")
    single = optuna.create_study(direction="maximize")
    name_objectives(single, weighted)
    assert single.metric_names == ["val_accuracy - 2 * val_ece"]


def test_a_finished_study_shows_its_front_and_no_resume_hint(tmp_path, capsys, monkeypatch):
    """Issue 22, item 9: all trials finished: "Pareto front", not "so far", and no resume."""
    paths = study_paths("done", str(tmp_path / "studies"))
    paths.root.mkdir(parents=True)
    space = check_space({**SPACE, "samples": 1}, "test")
    paths.space.write_text(yaml.safe_dump({**space.model_dump(mode="json"), "name": "done"}))
    study = optuna.create_study(
        study_name="done", storage=paths.optuna_url, directions=["maximize", "minimize"]
    )
    trial, (start, end) = _trial(TrialState.COMPLETE, "completed", 0.9, 0)
    trial.datetime_start, trial.datetime_complete = start, end
    study.add_trial(trial)
    monkeypatch.chdir(tmp_path)
    assert main(["status", "done"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study done: 1/1 trial finished (1 completed)")
    assert "resume" not in out and "so far" not in out
    assert "\nPareto front:\n" in out
    assert "driver:  none (the study is finished)" in out


def test_rerun_refuses_a_study_still_running_or_unfinished(tmp_path):
    """Issue 34, item 10: `study rerun` of a study still running ranked its partial results
    (and `study rerun` then ran them)."""
    study = _make_study(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    running = StudyLock(study.paths.root, "st")  # as `study run` holds it
    with running, pytest.raises(StudyInputError, match="still running") as err:
        study.rerun(top=1, seeds=2, name="again", tracking_uri=tracking)
    assert f"pid {os.getpid()}" in str(err.value) and "study status st" in str(err.value)
    # no driver: 5 of its 8 trials finished, one interrupted, two never started
    with pytest.raises(StudyInputError, match="unfinished") as err:
        study.rerun(top=1, seeds=2, name="again", tracking_uri=tracking)
    assert "(5 of 8 trials finished)" in str(err.value) and "study resume st" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "studies" / "again").exists() and not (tmp_path / "mlflow.db").exists()


# A driver's private local Ray in its own process, up until its stdin closes.
PRIVATE_RAY = """
import sys
import ray
from study.runtime.tuner import init_ray
init_ray(None, num_cpus=1)
print("up", flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.mark.slow
def test_status_beside_a_running_local_study_is_fast_and_quiet(tmp_path, capfd, monkeypatch):
    """Issue 34, item 11: with the default ``--address auto``, `study status` of a study whose
    driver runs a private local Ray waited ~40 s and printed three Ray warnings (Ray's ``auto``
    found the driver's GCS, tried it on the machine's address, and retried)."""
    import subprocess
    import sys
    import time

    _make_study(tmp_path)
    # no cluster of `ray start` on this machine (another user's would be listed, as it should)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-ray-start"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    driver = subprocess.Popen(
        [sys.executable, "-c", PRIVATE_RAY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"},
    )
    try:
        assert driver.stdout.readline().strip() == "up"
        capfd.readouterr()
        with StudyLock(tmp_path / "studies" / "st", "st"):  # the lock the driver holds
            started = time.monotonic()
            code = main(["status", "st"])  # --address auto
            seconds = time.monotonic() - started
            out, err = capfd.readouterr()  # Ray's warnings come from its C++ core, on fd 2
    finally:
        driver.communicate(timeout=120)  # stdin closed: the driver stops its Ray
    assert code == 0, err
    assert "driver:  pid" in out and "1 running" in out
    assert err.strip() == "", err  # no Ray warning
    assert seconds < 10, seconds  # Ray's retries took 40 s
