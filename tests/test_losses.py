"""Losses against their definitions, worked by hand on crafted probabilities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.losses.common import (
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


# -------------------------------------------------------------- extreme logits, every gamma

GAMMAS = [0.3, 0.5, 1.0, 3.0]
# Logit gaps of the true class over the others: moderate, p rounding to 1 in float32 (40) and
# in float64 too (100), and the true class far behind (-40).
GAPS = [0.5, 3.0, 9.0, 17.0, 40.0, 100.0, -40.0]


def _gap_logits(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per gap, 4 classes, true class 0; the others spread a little."""
    rows = [[gap, 0.0, -0.5, 0.25] for gap in GAPS]
    return torch.tensor(rows, dtype=dtype), torch.zeros(len(GAPS), dtype=torch.long)


def _focal_reference(gamma: torch.Tensor | float):
    """The obvious float64 focal loss: -(1 - p)^gamma log p, p from the softmax."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        return (-((1.0 - p) ** gamma) * p.log()).mean()

    return loss


def _flsd53_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1).detach()
    return _focal_reference(torch.where(p < 0.2, 5.0, 3.0).double())(logits, labels)


def _csam_reference(gamma: float):
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        weight = torch.where(p <= 0.5, torch.ones_like(p), (1.0 + p) ** (-gamma))
        return -(weight * p.log()).mean()

    return loss


def assert_finite_and_close_to_float64(fn, reference) -> None:
    """``fn`` on float32 logits, row by row: loss and gradient finite, and equal to the float64
    ``reference`` wherever that one is finite."""
    z32, y = _gap_logits(torch.float32)
    for i, gap in enumerate(GAPS):
        row = z32[i : i + 1].clone().requires_grad_()
        value = fn(row, y[i : i + 1])
        (grad,) = torch.autograd.grad(value, row)
        assert torch.isfinite(value), f"gap {gap}: loss {value.item()}"
        assert torch.isfinite(grad).all(), f"gap {gap}: gradient {grad.tolist()}"
        row64 = z32[i : i + 1].double().requires_grad_()
        expected = reference(row64, y[i : i + 1])
        (expected_grad,) = torch.autograd.grad(expected, row64)
        if torch.isfinite(expected):
            assert value.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6), gap
        if torch.isfinite(expected_grad).all():
            torch.testing.assert_close(
                grad.double(), expected_grad, rtol=1e-4, atol=1e-6, msg=f"gap {gap}"
            )


@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_is_finite_and_exact_at_extreme_logits(gamma):
    assert_finite_and_close_to_float64(focal(gamma), _focal_reference(gamma))


def test_flsd53_is_finite_and_exact_at_extreme_logits():
    assert_finite_and_close_to_float64(flsd53, _flsd53_reference)


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0, 2.0])  # CSAM's gamma stops at 2
def test_csam_is_finite_and_exact_at_extreme_logits(gamma):
    assert_finite_and_close_to_float64(csam_loss(gamma), _csam_reference(gamma))


@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_gradient_is_finite_for_a_whole_batch_of_overconfident_samples(gamma):
    # The batch mean: one NaN gradient row would poison every parameter of a model.
    z, y = _gap_logits(torch.float32)
    z.requires_grad_()
    (grad,) = torch.autograd.grad(focal(gamma)(z, y), z)
    assert torch.isfinite(grad).all()
