"""Issue 36, item 2: a rung that checks its own assumption — the rank agreement between an
objective's value at a rung and its final value, measured over finished entries, on hand-made
curves where that agreement is known (``study.search.rungs``, no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.search.rungs import (
    AGREEMENT_Z,
    MIN_AGREEMENT_PAIRS,
    RungLadder,
    kendall_lower_bound,
)
from tests.test_study import api_study  # noqa: F401  (a fixture)


def test_the_agreement_bound_is_fishers_z_of_tau_and_orders_rankings():
    tau, lower = kendall_lower_bound(range(12), range(12))
    assert tau == pytest.approx(1.0) and lower > 0.9
    tau, lower = kendall_lower_bound(range(12), range(12, 0, -1))
    assert tau == pytest.approx(-1.0) and lower < -0.99
    swapped = [1, 0, *range(2, 10)]  # one discordant pair of 45
    tau, lower = kendall_lower_bound(range(10), swapped)
    assert tau == pytest.approx(1 - 2 / 45)
    expected = math.tanh(math.atanh(1 - 2 / 45) - AGREEMENT_Z * math.sqrt(0.437 / 6))
    assert lower == pytest.approx(expected)
    assert kendall_lower_bound(range(8), [3.0] * 8) == (0.0, -1.0)  # a constant side
    with pytest.raises(ValueError, match="pairs"):
        kendall_lower_bound(range(MIN_AGREEMENT_PAIRS - 1), range(MIN_AGREEMENT_PAIRS - 1))


def _ladder(agreement: float | None, finished: int = 9) -> RungLadder:
    """Rungs at epochs 1 and 3; ``finished`` entries recorded at rung 1 and finished, whose
    first objective there ranks them as at the end (tau 1) and whose second ranks them in
    reverse (tau -1): the learning curves of an accuracy and of an ECE that turns over."""
    ladder = RungLadder(2, max_t=9, grace_period=1, reduction_factor=3, agreement=agreement)
    for i in range(finished):
        ladder.record(1, f"f{i}", f"f{i}", [i, i], stop=False)
        ladder.record_final(f"f{i}", [i - 0.5, -i])
    return ladder


def test_a_rung_ranks_only_on_the_objective_whose_rung_values_rank_as_the_final_ones():
    ladder = _ladder(agreement=0.3)
    first, second = ladder.agreement_at(1)
    assert first.pairs == second.pairs == 9
    assert first.tau == pytest.approx(1.0) and first.lower > 0.3 and first.acts
    assert second.tau == pytest.approx(-1.0) and not second.acts
    # worst on the objective that ranks, best on the one that does not: stopped
    decision = ladder.on_result("bad", 1, [100.0, -100.0])
    assert decision.stop and decision.position == 10 and decision.count == 10
    # best on the objective that ranks: continues
    assert not ladder.on_result("good", 1, [-1.0, 100.0]).stop
    # the published rule ranks on both: the first entry is on the first front and continues
    plain = _ladder(agreement=None)
    assert not plain.on_result("bad", 1, [100.0, -100.0]).stop
    assert plain.agreement_at(1)[0].acts is False  # measured, never acted on


def test_a_rung_keeps_everyone_until_enough_entries_have_finished():
    ladder = _ladder(agreement=0.3, finished=MIN_AGREEMENT_PAIRS - 1)
    assert all(a.lower is None and not a.acts for a in ladder.agreement_at(1))
    for i in range(6):  # far worse than everything recorded, on both objectives
        decision = ladder.on_result(f"worse{i}", 1, [1000.0 + i, 1000.0 + i])
        assert not decision.stop and decision.position == 0


def test_a_rung_keeps_everyone_while_no_objective_agrees():
    rng = np.random.default_rng(3)
    ladder = RungLadder(2, max_t=9, grace_period=1, reduction_factor=3, agreement=0.2)
    for i in range(12):  # final values unrelated to the rung's: noise
        ladder.record(1, f"f{i}", f"f{i}", [i, i], stop=False)
        ladder.record_final(f"f{i}", list(rng.permutation(12)[:2].astype(float)))
    assert not any(a.acts for a in ladder.agreement_at(1))
    assert all(a.lower < 0.2 for a in ladder.agreement_at(1))
    assert not ladder.on_result("worst", 1, [99.0, 99.0]).stop


def test_the_agreement_is_rebuilt_from_what_was_recorded_and_decides_the_same():
    ladder = _ladder(agreement=0.3)
    decisions = {k: ladder.on_result(k, 1, v) for k, v in (("a", [50.0, 0.0]), ("b", [-2.0, 9.0]))}
    restored = RungLadder(2, max_t=9, grace_period=1, reduction_factor=3, agreement=0.3)
    for milestone, entries in ladder.rungs.items():
        for key, entry in entries.items():
            for member, vector in entry.members.items():
                restored.record(milestone, key, member, vector, entry.stop)
    for key, members in ladder.finals.items():
        for member, vector in members.items():
            restored.record_final(key, vector, member)
    assert restored.agreement_at(1) == ladder.agreement_at(1)
    again = restored.on_result("c", 1, [40.0, 0.0])
    assert again == ladder.on_result("c", 1, [40.0, 0.0])
    assert [d.stop for d in decisions.values()] == [True, False]


def test_an_agreement_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="agreement"):
        RungLadder(2, max_t=9, agreement=1.0)


@pytest.mark.slow  # a Ray study
def test_a_study_measures_the_agreement_at_each_rung_acts_once_it_can_and_reports_it(
    request, tmp_path
):
    """A real study (concurrency 1, so trial n sees the n trials before it finished): each rung
    decision stores the agreement measured then; the first ``MIN_AGREEMENT_PAIRS`` trials are
    never ranked (nothing to measure yet), the later ones are, on the objectives that cleared
    the bound (``agreement: -1`` lets every measured one); the report shows the agreement per
    rung and objective; a scheduler rebuilt from the database has the same pairs."""
    from study.search.schedulers import MOASHAScheduler
    from study.storage.records import RUNGS_ATTR, STATUS_ATTR

    study = request.getfixturevalue("api_study")(
        "agree",
        fixed={"epochs": 3, "method": "sgd"},
        search={"lr": {"loguniform": [0.01, 0.3]}},
        samples=8,
        concurrency=1,
        seed=3,
        scheduler="asha",
        asha={"grace_period": 1, "reduction_factor": 2, "agreement": -1.0},
    )
    summary = study.run()
    assert (summary.trials, summary.errors) == (8, 0)
    trials = sorted(study.optuna().get_trials(deepcopy=False), key=lambda t: t.number)
    completed_before = 0
    for trial in trials:
        first = trial.user_attrs[RUNGS_ATTR]["1"]
        measured = first["agreement"]
        assert len(measured) == 2 and {m[2] for m in measured} == {completed_before}
        if completed_before < MIN_AGREEMENT_PAIRS:
            assert measured == [[None, None, completed_before, False]] * 2
            assert not first["stop"] and first["position"] == 0
        else:
            assert all(-1 <= m[0] <= 1 and m[1] < m[0] and m[3] for m in measured), measured
            assert first["position"] >= 1  # ranked
        completed_before += trial.user_attrs[STATUS_ATTR] == "completed"
    assert any(t.user_attrs[RUNGS_ATTR]["1"]["position"] >= 1 for t in trials)
    report = (study.paths.root / "report" / "report.md").read_text()
    assert "The agreement as last measured at each rung" in report
    assert "| 1 | val_accuracy |" in report and "| 1 | val_ece |" in report
    rebuilt = MOASHAScheduler(study.space, f"sqlite:///{study.paths.optuna_db}", "agree").ladder()
    finished = {str(t.number) for t in trials if t.user_attrs[STATUS_ATTR] == "completed"}
    assert set(rebuilt.finals) == finished
    assert {a.pairs for a in rebuilt.agreement_at(1)} == {len(finished)}
