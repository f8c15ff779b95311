"""Issue 35, item 4: a study made before the layout moved still resumes.

``tests/fixtures/pre-move-study.tar.gz`` is a study made by the code before the move (commit in
its ``FIXTURE.json``): digits, MO-ASHA (rungs at epochs 1 and 2 of 4), five trials one at a time,
SIGKILLed with its second trial held after its rung-1 decision was stored. Tune's pickles in it
name the old module paths (``study.search.StudySearch``, ``study.schedulers.MOASHAScheduler``,
``study.events.TrialEvents``, ``study.tracking.MlflowTrialCallback``, ``study.tuner.trial_name``).
It was tracked in MLflow while it ran and is untracked in the fixture, as a copied study must be.
The new code resumes it where it is unpacked, to exactly its five trials, every decision taken
before the kill standing and every decision replayable from the database.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.storage.records import RUNGS_ATTR, TRIAL_ID_ATTR
from tests.test_cli import run_study
from tests.test_moasha_study import replayed_decisions_match

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).with_name("fixtures") / "pre-move-study.tar.gz"
NAME = "pre-move"


def test_a_study_killed_mid_rung_before_the_move_resumes_with_the_same_decisions(tmp_path):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    made = json.loads((tmp_path / "studies" / "FIXTURE.json").read_text())
    url = f"sqlite:///{tmp_path / 'studies' / NAME / 'optuna.db'}"
    before = {
        t.user_attrs[TRIAL_ID_ATTR]: t.user_attrs[RUNGS_ATTR]
        for t in optuna.load_study(study_name=NAME, storage=url).get_trials(deepcopy=False)
        if RUNGS_ATTR in t.user_attrs
    }
    assert made["held"]["trial_id"] in before and 2 <= len(before) < 5
    pickled = (tmp_path / "studies" / NAME / "tune" / "tuner.pkl").read_bytes()
    assert b"study.schedulers" in pickled and b"study.events" in pickled  # the old paths

    proc = run_study("resume", NAME, "--storage", "studies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = optuna.load_study(study_name=NAME, storage=url).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5 and any(t.state == TrialState.COMPLETE for t in finished)
    for tune_id, rungs in before.items():  # what was decided before the kill stands
        (after,) = [t for t in trials if t.user_attrs.get(TRIAL_ID_ATTR) == tune_id]
        for milestone, record in rungs.items():
            assert after.user_attrs[RUNGS_ATTR][milestone] == record
    # every trial reached rung 1, the last one ranked among all five: the ladder was rebuilt from
    # the database, not counted from 1 again after the resume
    assert sorted(t.user_attrs[RUNGS_ATTR]["1"]["count"] for t in finished) == [1, 2, 3, 4, 5]
    assert replayed_decisions_match(trials, made["asha"]) >= 5
