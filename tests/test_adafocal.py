"""AdaFocal: one gamma update on a small made-up validation set against a hand computation, the
per-sample gamma and loss, and training with it (the bins in the checkpoint: see test_loop)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.config import ConfigError, parse_config
from trainables.engine.loop import Trainer
from trainables.losses.adafocal import AdaFocalBins, adafocal_loss, update_bins, validation_bins

# Six validation samples (confidence, correct), 3 equal-mass bins of two samples each.
CONF = np.array([0.30, 0.40, 0.60, 0.70, 0.90, 0.95])
CORRECT = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 1.0])


def test_validation_bins_are_equal_mass_with_the_references_edges_and_gaps():
    lowers, uppers, gaps = validation_bins(CONF, CORRECT, 3)
    # np.interp over positions 0, 2, 4, 6 of the sorted confidences (6 clamps to the last)
    assert lowers.tolist() == pytest.approx([0.30, 0.60, 0.90])
    assert uppers.tolist() == pytest.approx([0.60, 0.90, 0.95])
    # lower < conf <= upper: bins {0.40, 0.60}, {0.70, 0.90}, {0.95}; the smallest confidence
    # (0.30) falls in no bin, as in the reference
    assert gaps.tolist() == pytest.approx(GAPS)


GAPS = [0.5 - 1.0, 0.8 - 0.5, 0.95 - 1.0]


def _val(conf: np.ndarray, correct: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten-class probabilities with max ``conf`` (the rest spread evenly), predicting class 0;
    labels 0 where ``correct``, else 1."""
    probs = torch.tensor(np.stack([conf, *[(1 - conf) / 9] * 9], axis=1))
    labels = torch.tensor(np.where(correct > 0, 0, 1))
    return probs, labels


def _update(gammas: list[float], lam: float = 2.0) -> list[float]:
    edges = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=torch.float64)
    bins = AdaFocalBins(torch.tensor(gammas, dtype=torch.float64), edges[:-1], edges[1:])
    new = update_bins(bins, *_val(CONF, CORRECT), lam=lam, switch=0.2, gamma_min=-2, gamma_max=20)
    assert new.lowers.tolist() == pytest.approx([0.30, 0.60, 0.90])  # the val bins' edges
    assert new.uppers.tolist() == pytest.approx([0.60, 0.90, 0.95])
    return new.gammas.tolist()


def test_one_update_by_hand():
    # g * exp(lam * gap) for g > 0; g * exp(-lam * gap) for g < 0
    expected = [1.0 * math.exp(2 * GAPS[0]), 0.25 * math.exp(2 * GAPS[1])]
    expected.append(-1.0 * math.exp(-2 * GAPS[2]))
    assert _update([1.0, 0.25, -1.0]) == pytest.approx(expected)  # 0.368, 0.456, -1.105
    # |g| below the switch point: focal becomes inverse-focal and back; then clipping
    assert _update([0.21, -0.21, -0.21]) == pytest.approx(
        [-0.2, 0.2, -0.21 * math.exp(-2 * GAPS[2])]  # 0.077 -> -0.2; -0.115 -> +0.2; -0.232
    )
    assert _update([1.0, 19.0, -1.9]) == pytest.approx(
        [math.exp(2 * GAPS[0]), 20.0, -2.0]  # 19 e^0.6 = 34.6 -> 20; -1.9 e^0.1 = -2.1 -> -2
    )


def test_each_sample_takes_its_bins_gamma_and_the_loss_is_focal_or_inverse_focal():
    bins = AdaFocalBins(
        gammas=torch.tensor([2.0, -1.5, 3.0], dtype=torch.float64),
        lowers=torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64),
        uppers=torch.tensor([0.6, 0.9, 0.95], dtype=torch.float64),
    )
    p = torch.tensor([0.1, 0.59, 0.6, 0.89, 0.9, 0.97])
    # below the first upper edge: bin 0; [lower, upper): its bin; above the last edge: the last
    assert bins.gamma_of(p).tolist() == [2.0, 2.0, -1.5, -1.5, 3.0, 3.0]
    logits = torch.log(torch.stack([p, 1 - p], dim=1))
    labels = torch.zeros(6, dtype=torch.long)
    gamma = torch.tensor([2.0, 2.0, -1.5, -1.5, 3.0, 3.0])
    expected = (-((1 - torch.sign(gamma) * p) ** gamma.abs()) * torch.log(p)).mean()
    assert adafocal_loss(logits, labels, bins).item() == pytest.approx(expected.item(), rel=1e-5)


def test_training_with_adafocal_moves_the_gammas_each_epoch(digits_settings):
    trainer = Trainer(parse_config({**digits_settings, "loss": "adafocal", "epochs": 2}))
    assert trainer.adafocal.gammas.tolist() == [1.0] * 15
    result = trainer.fit()
    assert result.status == "completed" and result.final["test_accuracy"] > 0.5
    assert not torch.equal(trainer.adafocal.gammas, torch.ones(15, dtype=torch.float64))
    assert trainer.state_dict()["adafocal"]["gammas"].shape == (15,)


@pytest.mark.parametrize(
    "bad, word",
    [({"val_fraction": 0.0}, "val_fraction"), ({"adafocal_gamma_min": 30}, "adafocal_gamma_min")],
)
def test_adafocal_settings_that_cannot_work_are_one_line_errors(bad, word, digits_settings):
    with pytest.raises(ConfigError) as err:
        parse_config({**digits_settings, "loss": "adafocal", **bad})
    assert len(str(err.value).splitlines()) == 1 and word in str(err.value)


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0, 3.0, -0.3, -1.0, -2.0])  # < 0: inverse focal
def test_adafocal_is_finite_and_exact_at_extreme_logits(gamma):
    from tests.test_losses import assert_finite_and_close_to_float64

    bins = AdaFocalBins(
        gammas=torch.tensor([gamma], dtype=torch.float64),
        lowers=torch.tensor([0.0], dtype=torch.float64),
        uppers=torch.tensor([1.0], dtype=torch.float64),
    )

    def reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        return (-((1 - math.copysign(1.0, gamma) * p) ** abs(gamma)) * p.log()).mean()

    assert_finite_and_close_to_float64(lambda z, y: adafocal_loss(z, y, bins), reference)
