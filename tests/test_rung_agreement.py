"""Issue 36, item 2: a rung that checks its own assumption — the rank agreement between an
objective's value at a rung and its final value, measured over finished entries, on hand-made
curves where that agreement is known (``study.search.rungs``, no Ray), and in a real study
killed mid-rung and resumed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from study.search.rungs import (
    AGREEMENT_Z,
    MIN_AGREEMENT_PAIRS,
    RungLadder,
    kendall_lower_bound,
)


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


@pytest.mark.slow  # a Ray study, killed and resumed
def test_a_study_killed_mid_rung_resumes_measuring_the_agreement_as_it_would_have(tmp_path):
    """A real study (concurrency 1, so trial n sees the n trials before it finished), SIGKILLed
    with its 6th trial held after its rung-1 decision was stored, then resumed: each rung
    decision, before the kill and after, stores the agreement measured over every trial finished
    before it (the finals rebuilt from the database, not counted from none again); the first
    ``MIN_AGREEMENT_PAIRS`` trials are never ranked, the later ones are (``agreement: -1`` lets
    every measured objective); the decisions taken before the kill stand; the report shows the
    agreement per rung and objective; a scheduler rebuilt from the database has the same pairs."""
    import optuna

    from study.search.schedulers import MOASHAScheduler
    from study.storage.files import load_study_space
    from study.storage.records import ORPHAN_ATTR, RUNGS_ATTR, STATUS_ATTR, TRIAL_ID_ATTR
    from tests.test_cli import run_study
    from tests.test_study import held_trial, hold_env, wait_until, write_space
    from trainables.layout import study_paths

    # the last trial kept whatever its rank (one final short): later ones may stop at the rung
    name, held_nth = "agree", MIN_AGREEMENT_PAIRS
    space = write_space(
        tmp_path,
        fixed={"epochs": 3, "method": "sgd"},
        search={"lr": {"loguniform": [0.01, 0.3]}},
        samples=8,
        concurrency=1,
        seed=3,
        scheduler="asha",
        asha={"grace_period": 1, "reduction_factor": 2, "agreement": -1.0},
    )
    url = f"sqlite:///{tmp_path / 'studies' / name / 'optuna.db'}"

    def decided(trial_id: str) -> bool:
        if not (tmp_path / "studies" / name / "optuna.db").exists():
            return False
        found = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        return any(
            t.user_attrs.get(TRIAL_ID_ATTR) == trial_id and "1" in t.user_attrs.get(RUNGS_ATTR, {})
            for t in found
        )

    hold_dir = tmp_path / "hold"
    driver = subprocess.Popen(
        [sys.executable, "-m", "study", "run", str(space), "--name", name, "--storage",
         "studies"], cwd=tmp_path, env=hold_env(hold_dir, 1, held_nth), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: held_trial(hold_dir) is not None, driver, "a trial was held")
    held = held_trial(hold_dir)["trial_id"]
    wait_until(lambda: decided(held), driver, "the held trial's rung decision was stored")
    # and Tune's snapshot names it (taken every few seconds): killed before, the trial is one
    # Tune never knew, failed as an orphan on resume (tested in test_faults_lifecycle)
    tune = tmp_path / "studies" / name / "tune"
    wait_until(
        lambda: any(held in p.read_text() for p in tune.glob("experiment_state-*.json")),
        driver,
        "Tune's experiment state named the held trial",
    )
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, as a reboot would
    driver.communicate(timeout=120)
    before = {
        t.user_attrs[TRIAL_ID_ATTR]: t.user_attrs[RUNGS_ATTR]
        for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        if RUNGS_ATTR in t.user_attrs
    }
    assert len(before) == held_nth

    proc = run_study("resume", name, "--storage", "studies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = sorted(
        (t for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
         if not t.user_attrs.get(ORPHAN_ATTR)),
        key=lambda t: t.number,
    )  # fmt: skip
    assert len(trials) == 8 and all(t.state.is_finished() for t in trials)
    for tune_id, rungs in before.items():  # what was decided before the kill stands
        (after,) = [t for t in trials if t.user_attrs[TRIAL_ID_ATTR] == tune_id]
        assert after.user_attrs[RUNGS_ATTR]["1"] == rungs["1"]
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
    assert trials[-1].user_attrs[RUNGS_ATTR]["1"]["position"] >= 1  # decided after the resume
    root = tmp_path / "studies" / name
    report = (root / "report" / "report.md").read_text()
    assert "The agreement as last measured at each rung" in report
    assert "| 1 | val_accuracy |" in report and "| 1 | val_ece |" in report
    paths = study_paths(name, str(tmp_path / "studies"))
    rebuilt = MOASHAScheduler(load_study_space(paths, name), url, name).ladder()
    finished = {str(t.number) for t in trials if t.user_attrs[STATUS_ATTR] == "completed"}
    assert set(rebuilt.finals) == finished
    assert {a.pairs for a in rebuilt.agreement_at(1)} == {len(finished)}
