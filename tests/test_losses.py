"""Losses against their definitions, worked by hand on crafted probabilities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.losses import (
    build_loss,
    cross_entropy,
    csam_loss,
    flsd53,
    focal,
    label_smoothing,
)


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits, labels = torch.randn(32, 5), torch.randint(0, 5, (32,))
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_csam_loss_branches_worked_by_hand():
    # p_true = 0.3 (<= 1/2: plain -log p) and 0.8 (> 1/2: -(1.8)^-gamma log 0.8)
    logits = _logits_for([[0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1])
    gamma = 1.5
    expected = (-math.log(0.3) - (1.8**-gamma) * math.log(0.8)) / 2
    assert csam_loss(gamma)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_csam_loss_at_exactly_one_half_is_cross_entropy():
    logits = _logits_for([[0.5, 0.5]])
    labels = torch.tensor([0])
    assert csam_loss(2.0)(logits, labels).item() == pytest.approx(math.log(2), rel=1e-6)


def test_csam_gamma_zero_is_cross_entropy_bit_for_bit_with_gradients():
    torch.manual_seed(0)
    logits = (torch.randn(64, 10) * 4).requires_grad_()
    labels = torch.randint(0, 10, (64,))
    a = csam_loss(0.0)(logits, labels)
    (grad_a,) = torch.autograd.grad(a, logits)
    b = cross_entropy(logits, labels)
    (grad_b,) = torch.autograd.grad(b, logits)
    assert torch.equal(a, b)
    assert torch.equal(grad_a, grad_b)


def test_csam_down_weights_confident_samples_only():
    logits = _logits_for([[0.9, 0.1], [0.4, 0.6]])
    labels = torch.tensor([0, 0])
    per_ce = -torch.log(torch.tensor([0.9, 0.4], dtype=torch.float64))
    csam = csam_loss(1.0)(logits, labels).item()
    assert csam == pytest.approx((per_ce[0].item() / 1.9 + per_ce[1].item()) / 2, rel=1e-6)


@pytest.mark.parametrize("gamma", [-0.1, 2.01, 3.0])
def test_csam_gamma_out_of_range_rejected(gamma):
    with pytest.raises(ValueError, match="gamma"):
        csam_loss(gamma)


def test_focal_worked_by_hand_and_gamma_zero_is_ce():
    logits = _logits_for([[0.25, 0.75]])
    labels = torch.tensor([1])
    expected = -(0.25**2) * math.log(0.75)
    assert focal(2.0)(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(1)
    z, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    torch.testing.assert_close(focal(0.0)(z, y), cross_entropy(z, y))


def test_flsd53_switches_gamma_at_0_2():
    logits = _logits_for([[0.1, 0.9], [0.6, 0.4]])
    labels = torch.tensor([0, 0])  # p = 0.1 -> gamma 5; p = 0.6 -> gamma 3
    expected = (-(0.9**5) * math.log(0.1) - (0.4**3) * math.log(0.6)) / 2
    assert flsd53(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_worked_by_hand():
    logits = _logits_for([[0.5, 0.25, 0.25]])
    labels = torch.tensor([0])
    eps = 0.3
    targets = [1 - eps + eps / 3, eps / 3, eps / 3]
    expected = -sum(t * math.log(p) for t, p in zip(targets, [0.5, 0.25, 0.25]))
    assert label_smoothing(eps)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_build_loss_names_and_unknown():
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    for name in ("ce", "ls", "focal", "flsd53"):
        assert torch.isfinite(build_loss(name)(z, y))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        build_loss("hinge")


def test_losses_keep_gradients_finite_at_extreme_logits():
    logits = torch.tensor([[60.0, -60.0], [-60.0, 60.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    for fn in (cross_entropy, focal(3.0), flsd53, csam_loss(2.0), label_smoothing(0.1)):
        (grad,) = torch.autograd.grad(fn(logits, labels), logits)
        assert torch.isfinite(grad).all()
