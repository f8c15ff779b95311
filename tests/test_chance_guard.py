"""Issue 36, item 2's guard: a run still at chance (val accuracy at most ``chance_factor`` x
1 / classes) after ``chance_epoch``, before its last epoch, stops there as a diverged run does,
for every scheduler (it is the trainer's own rule), and says why wherever a diverged run is
shown."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search_spaces.schema import check_space
from study.api.status import STATES, StudyStatus, format_status
from study.storage.records import STATUS_ATTR
from study.tracking.model_registry import DivergedTrial, refuse_diverged
from trainables.config import ConfigError, parse_config
from trainables.engine.loop import RunResult, Trainer
from trainables.messages import diverged_reason


def _fit(settings: dict, **overrides) -> tuple[Trainer, RunResult]:
    trainer = Trainer(parse_config({**settings, "epochs": 3, **overrides}))
    return trainer, trainer.fit()


def test_a_run_at_or_under_the_bound_after_the_guards_epoch_stops_there_as_diverged(
    digits_settings,
):
    # a factor of 10 on ten classes puts the bound at accuracy 1: every run is "at chance"
    trainer, result = _fit(digits_settings, chance_epoch=2, chance_factor=10.0)
    assert trainer.chance_bound() == pytest.approx(1.0)
    assert trainer.epochs_done == 2 and len(result.history) == 2
    assert trainer.diverged and trainer.at_chance
    assert result.status == "diverged" and result.final == {}
    assert result.reason == diverged_reason(True, 2)
    assert "at chance after epoch 2: stopped by the chance guard" in result.reason


def test_a_run_that_learns_goes_on_and_the_guard_can_be_turned_off(digits_settings):
    learned, result = _fit(digits_settings, chance_epoch=1, chance_factor=2.0)
    assert result.history[0]["val_accuracy"] > learned.chance_bound() == 0.2
    assert result.status == "completed" and learned.epochs_done == 3
    assert not learned.at_chance and result.reason == ""

    off, result = _fit(digits_settings, chance_epoch=0, chance_factor=10.0)
    assert result.status == "completed" and off.epochs_done == 3 and not off.at_chance


def test_the_last_epoch_is_never_cut_short(digits_settings):
    # stopping after the last epoch saves nothing: the run completes with its test metrics
    _, result = _fit(digits_settings, chance_epoch=3, chance_factor=10.0)
    assert result.status == "completed" and "test_accuracy" in result.final


def test_a_stopped_run_resumes_stopped(digits_settings):
    trainer, _ = _fit(digits_settings, chance_epoch=1, chance_factor=10.0)
    again = Trainer(trainer.cfg)
    again.load_state_dict(trainer.state_dict())
    assert again.at_chance and again.diverged
    assert again.fit().status == "diverged" and again.epochs_done == 1


@pytest.mark.parametrize(
    "key, value", [("chance_epoch", -1), ("chance_factor", 0.5), ("chance_epoch", 1.5)]
)
def test_bad_guard_settings_are_refused_with_the_key(digits_settings, key, value):
    with pytest.raises(ConfigError, match=key):
        parse_config({**digits_settings, key: value})


def test_status_and_register_say_the_guard_stopped_it():
    counts = {**dict.fromkeys(STATES, 0), "completed": 2, "diverged": 2}
    status = StudyStatus("st", 4, counts, None, None, at_chance=1)
    space = check_space(
        {"fixed": {"dataset": "digits"}, "search": {"lr": {"loguniform": [0.01, 0.1]}}}, "test"
    )
    assert "(2 completed, 2 diverged (1 at chance))" in format_status(status, space)

    def trial(at_chance: bool) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            params={"lr": 0.05},
            distributions={"lr": FloatDistribution(0.01, 0.1, log=True)},
            values=[0.0, 1.0],
            user_attrs={STATUS_ATTR: "diverged", **({"at_chance": 1.0} if at_chance else {})},
        )

    with pytest.raises(DivergedTrial, match="still at chance"):
        refuse_diverged(trial(True))
    with pytest.raises(DivergedTrial, match="non-finite"):
        refuse_diverged(trial(False))


def test_a_checkpoint_made_before_the_guard_resumes_with_it_at_its_default(digits_settings):
    trainer = Trainer(parse_config({**digits_settings, "epochs": 3}))
    trainer.fit()
    state = trainer.state_dict()
    for key in ("chance_epoch", "chance_factor", "at_chance"):
        (state["config"] if key.startswith("chance") else state).pop(key)
    again = Trainer(trainer.cfg)
    again.load_state_dict(state)
    assert again.epochs_done == 3 and not again.at_chance
    changed = Trainer(parse_config({**digits_settings, "epochs": 3, "chance_epoch": 1}))
    with pytest.raises(ValueError, match="different config"):
        changed.load_state_dict(state)
