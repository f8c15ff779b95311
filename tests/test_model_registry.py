"""Issue 34, item 5: a stochastic evaluation (MC dropout, a rank-1 BNN, bSAM) whose predictions do
not depend on the batch, and a registered model that returns, for any batch size, the
probabilities the trial evaluated (in-process; ``tests/test_api.py`` checks the same through
``mlflow models serve``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.conftest import DIGITS_FAST
from trainables.config import parse_config
from trainables.engine.loop import Trainer

# the five kinds of model the registry serves, small: digits, one epoch
KINDS: dict[str, dict[str, Any]] = {
    "plain": {"method": "sgd"},
    "mc-dropout": {"method": "sgd", "dropout": 0.3, "mc_samples": 3},
    "mimo": {"method": "sgd", "mimo": 2},
    "rank1": {"method": "sgd", "rank1": 2, "rank1_eval_samples": 2},
    "bsam": {"method": "bsam", "bsam_samples": 3},
}
TEMPERATURE = 1.3
BATCHES = (1, 3, 7)


@pytest.fixture(scope="module")
def trained() -> dict[str, Trainer]:
    """A trainer of each kind after one epoch on digits."""
    trainers = {}
    for kind, settings in KINDS.items():
        trainer = Trainer(
            parse_config({**DIGITS_FAST, "epochs": 1, "train_subset": 256, **settings})
        )
        trainer.fit()
        trainers[kind] = trainer
    return trainers


def in_batches(f: Any, x: torch.Tensor, size: int) -> torch.Tensor:
    """``f`` over ``x`` in batches of ``size``, concatenated."""
    with torch.no_grad():
        return torch.cat([f(x[i : i + size]) for i in range(0, len(x), size)])


@pytest.mark.parametrize("kind", KINDS)
def test_a_prediction_does_not_depend_on_its_batch(trained, kind):
    trainer = trained[kind]
    logits, _ = trainer.predict("test")  # batches of 1024: the whole split at once
    x = torch.cat([x for x, _ in trainer.data.eval_batches("test", 1024)])[:21]
    for size in BATCHES:
        with trainer.evaluating():
            found = in_batches(trainer.eval_logits, x, size)
        torch.testing.assert_close(found, logits[:21], rtol=0, atol=1e-5)
    assert torch.equal(trainer.predict("test")[0], logits)  # and every evaluation is the same


@pytest.mark.parametrize("kind", KINDS)
def test_the_registered_model_returns_the_trials_probabilities_for_any_batch(trained, kind):
    from torch.export import Dim

    from study.tracking.model_registry import calibrated_model

    trainer = trained[kind]
    logits, _ = trainer.predict("test")
    expected = (logits / TEMPERATURE).softmax(dim=1)
    module, data = calibrated_model(trainer.state_dict(), TEMPERATURE)
    x = torch.cat([x for x, _ in data.eval_batches("test", 1024)])
    torch.testing.assert_close(in_batches(module, x, len(x)), expected, rtol=0, atol=1e-5)
    # exported as MLflow exports it (pt2: the batch dimension Dim.AUTO, an example of two)
    exported = torch.export.export(module, (x[:2],), dynamic_shapes=({0: Dim.AUTO},)).module()
    for size in BATCHES:
        found = in_batches(exported, x[:21], size)
        torch.testing.assert_close(found, expected[:21], rtol=0, atol=1e-5)


def test_a_diverged_trial_is_never_chosen_for_the_registry():
    import optuna

    from search_spaces.schema import check_space
    from study.tracking.model_registry import DivergedTrial, choose_trial

    space = check_space({"fixed": DIGITS_FAST, "points": [{"method": "sgd"}]}, "test")
    study = optuna.create_study(directions=["maximize", "minimize"])

    def told(status: str, values: list[float]) -> None:
        trial = study.ask()
        trial.set_user_attr("status", status)
        study.tell(trial, values)

    for _ in range(2):  # told as the driver tells them: complete, with the worst values
        told("diverged", [0.0, 1.0])
    with pytest.raises(LookupError, match=r"no completed trial to register \(2 diverged"):
        choose_trial(study, space, "s")
    with pytest.raises(DivergedTrial, match="trial 1 diverged .* not registered"):
        choose_trial(study, space, "s", 1)
    told("completed", [0.0, 1.0])  # as bad as the diverged ones, yet the one to register
    assert choose_trial(study, space, "s").number == 2
    told("completed", [0.9, 0.05])
    assert choose_trial(study, space, "s").number == 3
