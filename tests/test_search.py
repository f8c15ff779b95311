"""The study's Tune searcher on Optuna's public API, driven directly as Tune drives it (no Ray
started): points first, seeds right after their configuration, PRUNED/FAIL/COMPLETE told, and a
searcher rebuilt from its pickle (a resumed driver) going on from the Optuna database alone."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from search_spaces.schema import check_space
from study.search.searcher import StudySearch
from study.storage.records import REPEAT_OF_ATTR, STATUS_ATTR, TRIAL_ID_ATTR
from tests.conftest import DIGITS_FAST

EPOCHS = DIGITS_FAST["epochs"]


def space(**overrides):
    data = {
        "name": "s",
        "fixed": {k: v for k, v in DIGITS_FAST.items() if k != "lr"},
        "search": {"lr": {"loguniform": [0.01, 0.1]}},
        "points": [{"lr": 0.05}],
        "samples": 3,
        "repeats": 2,
        "sampler": "random",
        "scheduler": "none",
        "objective": {"type": "pareto"},
        **overrides,
    }
    return check_space(data, "test space")


def result(accuracy: float, ece: float, epoch: int = EPOCHS) -> dict:
    return {
        "val_accuracy": accuracy,
        "val_ece": ece,
        "objective": accuracy - ece,
        "test_ece": ece,
        "epoch": epoch,
        "epochs_total": EPOCHS,
    }


@pytest.fixture
def searcher(tmp_path):
    return StudySearch(space(), "s", f"sqlite:///{tmp_path / 'optuna.db'}")


def test_points_run_first_and_each_configuration_is_repeated_with_the_next_seed(searcher):
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    seed = 0  # the settings' default
    assert configs[0]["lr"] == 0.05 and configs[0].get("seed", seed) == seed
    assert configs[1]["lr"] == 0.05 and configs[1]["seed"] == seed + 1
    for first, second in ((configs[2], configs[3]), (configs[4], configs[5])):
        assert first["lr"] == second["lr"] and first["lr"] != 0.05
        assert second["seed"] == first.get("seed", seed) + 1
    trials = searcher.study.get_trials()
    assert [t.user_attrs[TRIAL_ID_ATTR] for t in trials] == [f"t{i}" for i in range(6)]
    assert [t.user_attrs.get(REPEAT_OF_ATTR) for t in trials] == [None, 0, None, 2, None, 4]


def test_results_are_told_as_complete_pruned_or_failed_with_status_and_metrics(searcher):
    for i in range(4):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", result(0.9, 0.05))
    searcher.on_trial_complete("t1", result(0.5, 0.2, epoch=1))  # stopped early
    searcher.on_trial_complete("t2", None, error=True)
    searcher.on_trial_complete("t3", {"epoch": EPOCHS, "epochs_total": EPOCHS})  # no objective
    done, pruned, failed, missing = searcher.study.get_trials()
    assert done.state == TrialState.COMPLETE and done.values == [0.9, 0.05]
    assert done.user_attrs[STATUS_ATTR] == "completed" and done.user_attrs["test_ece"] == 0.05
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs[STATUS_ATTR] == "pruned"
    assert failed.state == TrialState.FAIL and failed.user_attrs[STATUS_ATTR] == "failed"
    assert missing.state == TrialState.FAIL


def test_a_searcher_unpickled_after_a_crash_goes_on_from_the_database(searcher, tmp_path):
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", result(0.9, 0.05))
    searcher.save_to_dir(str(tmp_path), "s1")  # what Tune does; the state is the database

    resumed = pickle.loads(pickle.dumps(searcher))  # Tune's pickled tuner, in a new driver
    resumed.restore_from_dir(str(tmp_path))
    resumed.on_trial_complete("t0", result(0.1, 0.9))  # Tune reports it again: not told twice
    resumed.on_trial_complete("t1", result(0.8, 0.1))
    nxt = resumed.suggest("t3")  # t2's configuration still needs its second seed
    trials = resumed.study.get_trials()
    assert trials[0].values == [0.9, 0.05] and trials[1].state == TrialState.COMPLETE
    assert nxt["lr"] == trials[2].params["lr"] and trials[3].user_attrs[REPEAT_OF_ATTR] == 2
    assert len(trials) == 4 and sum(t.user_attrs.get("point") == 0 for t in trials) == 1


def test_a_resumed_random_sampler_does_not_draw_its_first_configurations_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = StudySearch(space(points=[], repeats=1, samples=6), "s", url)
    drawn = [first.suggest(f"a{i}")["lr"] for i in range(3)]
    resumed = pickle.loads(pickle.dumps(first))
    assert not set(drawn) & {resumed.suggest(f"b{i}")["lr"] for i in range(3)}
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 6
