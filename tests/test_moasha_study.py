"""Issue 23, item 2: MO-ASHA in real studies (real Ray, Optuna, MLflow): a Pareto study stops
trials early and tells them PRUNED, a study killed mid-rung resumes and decides as it would have,
and a repeated configuration's seeds are stopped together."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search_spaces.schema import check_space
from study.search.rungs import RungLadder
from study.search.searcher import PRUNED_VALUES_ATTR, _next_repeat
from study.storage.records import REPEAT_OF_ATTR, RUNGS_ATTR, SETTINGS_ATTR, TRIAL_ID_ATTR
from tests.test_study import (
    DIGITS,
    PARETO_SEARCH,
    api_study,  # noqa: F401  (a fixture)
)

ASHA = {"grace_period": 1, "reduction_factor": 2}  # rungs at epochs 1 and 2 of 4


def replayed_decisions_match(trials: list[optuna.trial.FrozenTrial], asha: dict[str, Any]) -> int:
    """Replay every rung record the study stored, each rung in the order its decisions were
    taken (the rung's count then), through a fresh ladder: every decision and place must come
    out as stored. Returns how many records were replayed."""
    records = [
        (int(m), rec, t.user_attrs[TRIAL_ID_ATTR])
        for t in trials
        for m, rec in (t.user_attrs.get(RUNGS_ATTR) or {}).items()
    ]
    ladder = RungLadder(2, max_t=4, **asha)
    for milestone, rec, member in sorted(records, key=lambda r: (r[0], r[1]["count"])):
        decision = ladder.on_result(rec["key"], milestone, rec["values"], member)
        assert decision is not None and decision.milestone == milestone
        assert (decision.stop, decision.position, decision.count) == (
            rec["stop"], rec["position"], rec["count"],
        ), (milestone, rec)  # fmt: skip
    return len(records)


@pytest.mark.slow
def test_a_pareto_study_with_moasha_stops_trials_and_tells_them_pruned(request, capsys):
    study = request.getfixturevalue("api_study")(
        "mo",
        fixed={"epochs": 4},
        search=PARETO_SEARCH,
        scheduler="asha",
        asha=ASHA,
        samples=6,
        concurrency=2,
        seed=3,
    )
    summary = study.run()
    assert summary.trials == 6
    trials = study.optuna().get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 6
    for trial in pruned:
        epoch = int(trial.user_attrs["epoch"])
        assert trial.user_attrs["status"] == "pruned" and epoch < 4
        assert trial.user_attrs[RUNGS_ATTR][str(epoch)]["stop"] is True  # stopped at its rung
        assert len(trial.user_attrs[PRUNED_VALUES_ATTR]) == 2  # where it stood, both objectives
    for trial in complete:
        assert trial.user_attrs["epoch"] == 4
        assert not any(rec["stop"] for rec in trial.user_attrs[RUNGS_ATTR].values())
    assert replayed_decisions_match(trials, ASHA) >= 6
    out = capsys.readouterr().out
    assert all(f"{t.user_attrs[TRIAL_ID_ATTR]} pruned" in out for t in pruned)
    report = study.report()
    search = json.loads((report.parent / "report.json").read_text())["search"]
    assert len(search["hypervolume"]) == 6 and search["hypervolume"][-1] > 0
    assert search["hypervolume"] == sorted(search["hypervolume"])  # a front only grows
    stops = [
        sum(t.user_attrs[RUNGS_ATTR].get(str(m), {}).get("stop", False) for t in trials)
        for m in (1, 2)
    ]
    assert [row[2] for row in search["rungs"]] == stops  # stopped per rung, as recorded
    assert search["epochs_saved"] == sum(4 - int(t.user_attrs["epoch"]) for t in pruned) > 0
    text = report.read_text()
    assert (
        "## The search" in text and f"saved **{search['epochs_saved']:.0f} of 24 epochs**" in text
    )
    assert (report.parent / "search.png").stat().st_size > 0


def test_seeds_of_a_stopped_configuration_are_not_queued():
    space = check_space(
        {"fixed": {**DIGITS, "epochs": 4}, "search": {"lr": {"uniform": [0.01, 0.1]}},
         "repeats": 2, "scheduler": "asha"},
        "inline",
    )  # fmt: skip
    study = optuna.create_study()
    for lr, state in ((0.05, TrialState.PRUNED), (0.07, TrialState.COMPLETE)):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1)})
        trial.set_user_attr(SETTINGS_ATTR, {"lr": lr})
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    settings, attrs = _next_repeat(study.get_trials(), space)
    assert attrs == {REPEAT_OF_ATTR: 1}  # the pruned configuration 0 gets no second seed
    assert settings["seed"] == 1


@pytest.mark.slow
def test_a_repeated_configurations_seeds_stop_together(request):
    study = request.getfixturevalue("api_study")(
        "seeds",
        fixed={"epochs": 3, "method": "sgd"},
        search={"lr": {"loguniform": [0.0005, 0.2]}},
        scheduler="asha",
        asha=ASHA,
        samples=3,
        repeats=2,
        concurrency=2,
        seed=2,
    )
    study.run()
    trials = study.optuna().get_trials(deepcopy=False)
    assert len(trials) == 6
    groups: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        groups.setdefault(trial.user_attrs.get(REPEAT_OF_ATTR, trial.number), []).append(trial)
    stopped = [g for g in groups.values() if any(t.state == TrialState.PRUNED for t in g)]
    assert stopped, [(t.number, t.state, t.user_attrs.get(RUNGS_ATTR)) for t in trials]
    for group in stopped:  # every seed that ran was stopped, at the same rung
        assert {t.state for t in group} == {TrialState.PRUNED}
        assert len({int(t.user_attrs["epoch"]) for t in group}) == 1
    for group in groups.values():  # one key per configuration at every rung
        keys = {rec["key"] for t in group for rec in t.user_attrs[RUNGS_ATTR].values()}
        assert keys == {str(group[0].number)}


@pytest.mark.slow
def test_a_two_worker_trial_is_stopped_at_its_rung_like_a_single_process_one(request):
    """Multi-worker trials (Ray Train inside the Tune trial, rank 0 reporting): the second point,
    far behind the first at epoch 1, is stopped there, told PRUNED, and its workers end."""
    study = request.getfixturevalue("api_study")(
        "ddp",
        fixed={"epochs": 2, "method": "sgd"},
        points=[{"lr": 0.1}, {"lr": 1.0e-5}],
        scheduler="asha",
        asha={"grace_period": 1, "reduction_factor": 2},  # a rung at epoch 1: 2 entries decide
        samples=2,
        concurrency=1,
        resources={"cpu": 1, "workers": 2},
    )
    study.run()
    first, second = study.optuna().get_trials(deepcopy=False)
    assert first.state == TrialState.COMPLETE and first.user_attrs["epoch"] == 2
    assert second.state == TrialState.PRUNED and second.user_attrs["epoch"] == 1
    assert second.user_attrs[RUNGS_ATTR]["1"] == {
        **second.user_attrs[RUNGS_ATTR]["1"], "stop": True, "position": 2, "count": 2,
    }  # fmt: skip
    assert len(second.user_attrs[PRUNED_VALUES_ATTR]) == 2
