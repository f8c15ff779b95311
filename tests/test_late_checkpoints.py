"""Issue 36, item 3: late checkpoints. A trial keeps the epochs of its own val front in its last
fraction of epochs (checkpoint and evidence), the study's front is over (trial, epoch) pairs, and
status, the front table, the report and ``study register`` use the chosen epoch and say which it
is: a model registered from a non-final epoch serves that epoch's probabilities."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution

from search_spaces.schema import check_space
from study import Study, StudyInputError
from study.analysis.epochs import epoch_of, kept_epochs
from study.analysis.front import front_points, front_rows
from study.storage.records import EPOCH_ATTR, LATE_FRONT_ATTR, STATUS_ATTR
from tests.test_api import served_probability_gap
from tests.test_study import DIGITS
from trainables.config import parse_config
from trainables.engine.loop import Trainer
from trainables.layout import evidence_uri, partition_uri
from trainables.trial.late import (
    LateEpochs,
    checkpoint_uri,
    first_late_epoch,
    own_front,
    read_front,
)
from trainables.trial.outputs import TrialContext, epoch_metrics

BASE = {"fixed": {"dataset": "digits"}, "search": {"lr": {"loguniform": [0.01, 0.1]}}}


@pytest.mark.parametrize(
    "epochs, fraction, first", [(4, 0.25, 4), (4, 0.5, 3), (4, 1.0, 1), (10, 0.01, 10), (3, 0.0, 0)]
)
def test_the_window_is_the_last_fraction_of_the_epochs_at_least_the_last(epochs, fraction, first):
    assert first_late_epoch(epochs, fraction) == first


def test_an_epochs_own_front_keeps_what_no_other_epoch_dominates():
    keys = ("val_accuracy", "val_ece")
    entries = [
        {"epoch": 3, "val_accuracy": 0.90, "val_ece": 0.05},
        {"epoch": 4, "val_accuracy": 0.92, "val_ece": 0.04},  # dominates epoch 3
        {"epoch": 5, "val_accuracy": 0.95, "val_ece": 0.06},  # better accuracy, worse ECE
        {"epoch": 6, "val_accuracy": 0.95, "val_ece": 0.06},  # equal to 5: both kept
    ]
    assert [e["epoch"] for e in own_front(entries, keys)] == [4, 5, 6]
    weighted = [{"epoch": 1, "objective": 0.8}, {"epoch": 2, "objective": 0.7}]
    assert [e["epoch"] for e in own_front(weighted, ("objective",))] == [1]


@pytest.mark.parametrize("value", [0, 1.5, -0.2, True, "half"])
def test_a_bad_fraction_is_one_line_naming_the_key(value):
    with pytest.raises(Exception) as err:
        check_space({**BASE, "late_checkpoints": value}, "space.yaml")
    (line,) = str(err.value).splitlines()
    assert "late_checkpoints" in line and "(0, 1]" in line


def test_off_reads_as_off_from_yaml_and_is_the_default():
    import yaml

    assert check_space(BASE, "s").late_fraction == 0.0
    parsed = yaml.safe_load("late_checkpoints: off")  # YAML 1.1: a bare off is False
    assert check_space({**BASE, **parsed}, "s").late_checkpoints == "off"
    assert check_space({**BASE, "late_checkpoints": 0.25}, "s").late_fraction == 0.25


def test_a_trial_keeps_the_files_of_its_own_front_and_drops_what_a_later_epoch_dominates(
    tmp_path, digits_settings
):
    # the metrics are set by hand so that the front is known: epoch 2 is dominated by epoch 3,
    # epoch 4 (the last) trades accuracy for calibration with epoch 3
    made = {1: (0.5, 0.5), 2: (0.80, 0.10), 3: (0.90, 0.05), 4: (0.95, 0.08)}
    ctx = TrialContext("late", None, 2, study_uri=str(tmp_path), late_fraction=0.75)
    trainer = Trainer(parse_config({**digits_settings, "epochs": 4}))
    late = LateEpochs(ctx, "t1", trainer)
    assert late.first == 2
    seen: dict[int, list[int]] = {}

    def on_epoch(trainer, record):
        metrics = epoch_metrics(trainer, record, ctx)
        assert ("test_accuracy" in metrics) == (record.epoch >= 2)  # tested in the window
        metrics["val_accuracy"], metrics["val_ece"] = made[record.epoch]
        front = late.observe(trainer, record, metrics)
        seen[record.epoch] = [e["epoch"] for e in json.loads(front)] if front else []
        for epoch in (2, 3):
            kept = epoch in seen[record.epoch]
            assert Path(checkpoint_uri(str(tmp_path), "t1", epoch)).is_file() == kept
            for split in ("val", "test"):
                stored = Path(partition_uri(evidence_uri(str(tmp_path)), "t1", split))
                assert (stored / f"epoch-{epoch:04d}.parquet").is_file() == kept

    trainer.fit(on_epoch=on_epoch, test_from=late.first)
    assert seen == {1: [], 2: [2], 3: [3], 4: [3, 4]}
    assert not Path(checkpoint_uri(str(tmp_path), "t1", 2)).parent.exists()
    assert not Path(checkpoint_uri(str(tmp_path), "t1", 4)).exists()  # the last: Tune's own
    assert [e["epoch"] for e in read_front(str(tmp_path), "t1")] == [3, 4]

    # a trial resumed from its epoch-2 checkpoint forgets the epochs it will train again
    again = Trainer(trainer.cfg)
    again.epochs_done = 2
    assert [e["epoch"] for e in LateEpochs(ctx, "t1", again).front] == []
    again.epochs_done = 3
    assert [e["epoch"] for e in LateEpochs(ctx, "t1", again).front] == [3]


def _made_study(space) -> optuna.Study:
    """Two completed trials, their late fronts set by hand, and one diverged."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"lr": FloatDistribution(0.01, 0.1, log=True)}
    fronts = {
        # trial 0: epoch 3 beats everything of trial 1 on ECE; its last epoch is dominated
        0: [{"epoch": 3, "val_accuracy": 0.90, "val_ece": 0.01, "test_ece": 0.02}],
        # trial 1: its last epoch (4) is the most accurate
        1: [
            {"epoch": 3, "val_accuracy": 0.85, "val_ece": 0.05, "test_ece": 0.06},
            {"epoch": 4, "val_accuracy": 0.97, "val_ece": 0.04, "test_ece": 0.05},
        ],
    }
    last = {0: (0.89, 0.03), 1: (0.97, 0.04)}
    for number, front in fronts.items():
        acc, ece = last[number]
        attrs = {
            STATUS_ATTR: "completed",
            "epoch": 4.0,
            "val_accuracy": acc,
            "val_ece": ece,
            "test_ece": {0: 0.5, 1: 0.05}[number],
            "test_ood_only_at_the_end": 1.0,
            LATE_FRONT_ATTR: front,
        }
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": [0.05, 0.02][number]},
                distributions=dist,
                values=[acc, ece],
                user_attrs=attrs,
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 0.1},
            distributions=dist,
            values=[0.0, 1.0],
            user_attrs={STATUS_ATTR: "diverged", "epoch": 2.0},
        )
    )
    return study


def test_the_front_is_over_trial_epoch_pairs_each_with_its_epochs_metrics():
    space = check_space({**BASE, "late_checkpoints": 0.5}, "s")
    study = _made_study(space)
    points = front_points(study, space)
    assert [(p.number, epoch_of(p)) for p in points] == [(0, 3), (1, 4)]
    early = points[0]
    assert early.values == [0.90, 0.01] and early.user_attrs[EPOCH_ATTR] == 3
    assert early.user_attrs["test_ece"] == 0.02
    assert "test_ood_only_at_the_end" not in early.user_attrs  # measured at the last epoch only
    assert EPOCH_ATTR not in points[1].user_attrs  # a trial's last epoch is the trial itself
    assert points[1].user_attrs == study.trials[1].user_attrs
    rows = front_rows(study, space)
    assert [(r["trial"], r["epoch"], r["test_ece"]) for r in rows] == [(0, 3, 0.02), (1, 4, 0.05)]
    assert [epoch_of(v) for v in kept_epochs(study.trials[0], space)] == [3, 4]

    # without late fronts the front is Optuna's own, and the table has no epoch column
    off = check_space(BASE, "s")
    plain = optuna.create_study(directions=["maximize", "minimize"])
    for trial in study.trials:
        attrs = {k: v for k, v in trial.user_attrs.items() if k != LATE_FRONT_ATTR}
        plain.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                values=trial.values,
                user_attrs=attrs,
            )
        )
    assert [t.number for t in front_points(plain, off)] == [t.number for t in plain.best_trials]
    assert "epoch" not in front_rows(plain, off)[0]


# ------------------------------------------------------------------ a study with late checkpoints

# the cost makes the first epoch of the window a sure member of every trial's own front and of
# the study's: no later epoch costs as little
SPACE = {
    "fixed": {**DIGITS, "epochs": 3},
    "points": [{"method": "sgd"}, {"method": "sam", "rho": 0.05}],
    "concurrency": 2,
    "sampler": "random",
    "objective": {"metrics": ["val_accuracy", "val_ece", "epochs"]},
    "late_checkpoints": 1.0,
}


@pytest.fixture(scope="module")
def late_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    import ray

    path = tmp_path_factory.mktemp("late")
    cwd = os.getcwd()
    os.chdir(path)  # the default MLflow store lands here
    try:
        study = Study.create(SPACE, name="late", storage=str(path / "studies"))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            study.run()
        yield study
    finally:
        os.chdir(cwd)
        ray.shutdown()


@pytest.mark.slow
def test_a_studys_front_holds_early_epochs_and_every_view_says_its_epoch(late_study):
    from study.api.status import format_status

    study = late_study
    trials = study.optuna().get_trials()
    assert all(len(t.user_attrs[LATE_FRONT_ATTR]) >= 1 for t in trials)
    assert all(t.user_attrs[LATE_FRONT_ATTR][0]["epoch"] == 1 for t in trials)
    front = study.front()
    assert "epoch" in front.columns and 1 in front["epoch"].tolist()
    status = format_status(study.status(address=None), study.space)
    assert "epoch" in status
    report = study.report().read_text()
    assert "over (trial, epoch) pairs" in report and "| epoch |" in report.replace("  ", " ")


@pytest.mark.slow
def test_a_model_registered_from_a_non_final_epoch_serves_that_epochs_probabilities(late_study):
    study = late_study
    trial = study.optuna().get_trials()[0]
    entry = trial.user_attrs[LATE_FRONT_ATTR][0]
    assert entry["epoch"] == 1 < trial.user_attrs["epoch"]
    version = study.register("late-model", trial=trial.number, epoch=1)
    assert version.tags["epoch"] == "1" and version.tags["trial"] == str(trial.number)
    assert float(version.tags["temperature"]) == pytest.approx(entry["temperature"], rel=1e-5)
    assert float(version.tags["test_ece"]) == pytest.approx(entry["test_ece"], rel=1e-5)

    attrs = {**entry, "tune_trial_id": trial.user_attrs["tune_trial_id"]}
    assert served_probability_gap(study, "late-model", version, attrs, epoch=1) < 2e-3
    last = study.register("late-model", trial=trial.number, epoch=int(trial.user_attrs["epoch"]))
    assert last.tags["epoch"] == str(int(trial.user_attrs["epoch"]))
    assert float(last.tags["test_ece"]) == pytest.approx(trial.user_attrs["test_ece"], rel=1e-5)


@pytest.mark.slow
def test_an_epoch_that_was_not_kept_is_one_line_and_exit_2(late_study, capsys, monkeypatch):
    from study.cli.main import main

    study = late_study
    monkeypatch.chdir(study.paths.root.parent.parent)
    with pytest.raises(StudyInputError, match="kept no model of epoch 9"):
        study.register("late-model", trial=0, epoch=9)
    assert main(["register", "late", "late-model", "--trial", "0", "--epoch", "9"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "kept epochs are" in line
    assert main(["register", "late", "late-model", "--epoch", "1"]) == 2
    assert "give --trial too" in capsys.readouterr().err


def test_stop_after_ends_a_run_at_that_epoch_on_the_schedule_of_all_its_epochs(digits_settings):
    settings = {**digits_settings, "epochs": 3, "schedule": "cosine"}
    full = Trainer(parse_config(settings)).fit()
    stopped = Trainer(parse_config({**settings, "stop_after": 2}))
    result = stopped.fit()
    assert stopped.epochs_done == 2 and len(result.history) == 2

    def measured(history):
        return [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]

    assert measured(result.history) == measured(full.history[:2])  # the same run, cut short
    assert "test_accuracy" in result.final
    with pytest.raises(Exception, match="stop_after"):
        parse_config({**settings, "stop_after": 4})


def test_the_chosen_epoch_of_a_configuration_is_the_rerun_s_stop_after():
    from study.analysis.compare import comparison_tables, top_configurations

    space = check_space({**BASE, "late_checkpoints": 0.5}, "s")
    study = _made_study(space)
    (table,) = comparison_tables(study, space)  # a search with late checkpoints: chosen
    assert "epoch" in table.columns
    chosen = {c.trials[0].number: epoch_of(c.trials[0]) for c in table.confs}
    assert chosen == {0: 3, 1: 4}  # rank score val_accuracy - val_ece: 0.89 at 3 beats 0.86
    (last,) = comparison_tables(study, space, "last")
    assert "epoch" not in last.columns
    assert [epoch_of(c.trials[0]) for c in last.confs] == [4, 4]
    # trial 1's last epoch (0.93) ranks first; trial 0 is rerun to its chosen epoch
    assert top_configurations(study, space, 2) == [{"lr": 0.02}, {"lr": 0.05, "stop_after": 3}]
    points = check_space({**BASE, "points": [{"lr": 0.05}], "late_checkpoints": 0.5}, "s")
    assert comparison_tables(study, points)[0].columns.get("epoch") is None  # points: last


@pytest.mark.slow
def test_compare_and_rerun_take_the_chosen_epoch_when_asked(late_study):
    from study.analysis.compare import at_chosen_epoch

    study = late_study
    assert "epoch" not in study.compare().tables[0].columns  # fixed points: the last epoch
    chosen = study.compare(epoch="chosen")
    assert "epoch" in chosen.tables[0].columns
    assert "| epoch |" in chosen.render("markdown").replace("  ", " ")
    expected = {t.number: at_chosen_epoch(t, study.space) for t in study.optuna().get_trials()}
    for conf in chosen.confs:
        (trial,) = conf.trials
        assert epoch_of(trial) == epoch_of(expected[trial.number])
        assert conf.values("test_ece") == [expected[trial.number].user_attrs["test_ece"]]
    with pytest.raises(StudyInputError, match="epoch must be one of"):
        study.compare(epoch="best")

    rerun = study.rerun(top=2, seeds=1, name="late-rerun", epoch="chosen")
    assert rerun.space.late_checkpoints == "off"
    for point in rerun.space.points:
        (trial,) = [t for t in expected.values() if t.params == {} and _same(t, point)]
        early = EPOCH_ATTR in trial.user_attrs
        assert point.get("stop_after") == (epoch_of(trial) if early else None)


def _same(trial, point) -> bool:
    from study.storage.records import trial_settings

    settings = {k: v for k, v in trial_settings(trial).items() if k != "seed"}
    return settings == {k: v for k, v in point.items() if k != "stop_after"}
