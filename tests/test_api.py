"""The Python API (``from study import Study``) in-process, on a real local Ray, Optuna database,
MLflow store and Parquet evidence: create, run, front, compare, evidence, report, rerun, load."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import optuna
import pyarrow.dataset as pads
import pytest
from optuna.trial import TrialState

from study import RunSummary, Study, StudyInputError
from study.search import trial_settings
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
def finished(workdir: Path) -> tuple[Study, RunSummary]:
    study = Study.create(SPACE, name="api", storage=str(workdir / "studies"))
    return study, study.run()


def test_a_study_runs_from_a_dict_and_reports(finished):
    study, summary = finished
    assert summary == RunSummary(trials=4, errors=0, report=study.paths.report / "report.md")
    assert summary.report.is_file()
    trials = study.optuna().get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)


def test_front_is_optunas_best_trials_as_a_dataframe(finished):
    study, _ = finished
    front = study.front()
    best = sorted(study.optuna().best_trials, key=lambda t: t.number)
    assert front["trial"].tolist() == [t.number for t in best]
    assert front["val_accuracy"].tolist() == pytest.approx([t.values[0] for t in best])


def test_compare_gives_means_over_seeds_and_paired_differences(finished):
    study, _ = finished
    table = study.compare(baseline="SGD")
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


def test_evidence_is_a_dataset_with_every_sample_of_every_trial(finished):
    study, _ = finished
    dataset = study.evidence()
    assert isinstance(dataset, pads.Dataset)
    table = dataset.to_table(columns=["trial_id", "split"])
    assert len(set(table["trial_id"].to_pylist())) == 4
    assert set(table["split"].to_pylist()) == {"val", "test"}


def test_load_finds_the_study_and_a_second_run_is_refused(finished, workdir):
    study, _ = finished
    again = Study.load("api", storage=str(workdir / "studies"))
    assert again.space == study.space and again.paths == study.paths
    with pytest.raises(StudyInputError, match="resume api"):
        again.run()
    with pytest.raises(StudyInputError, match="already exists"):
        Study.create(SPACE, name="api", storage=str(workdir / "studies"))


def test_rerun_creates_a_new_study_of_the_best_configurations(finished, workdir):
    study, _ = finished
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
