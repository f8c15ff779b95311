"""Rank-1 BNN layers (issue 26, item 2): the forward against W o (s r^T), the KL against a hand
computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.rank1 import Rank1Conv2d, Rank1Factor, Rank1Spec, rank1_linear

SPEC = Rank1Spec(members=2)


def test_the_linear_forward_is_the_weight_times_s_r_transposed():
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.ones(2, 2)  # one example per member
    r = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    s = torch.tensor([[2.0, 1.0], [1.0, -1.0]])
    bias = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    out = rank1_linear(x, weight, r, s, bias)
    assert out.tolist() == [[-1.5, -1.0], [3.0, -7.0]]  # [-2, -1] + bias, [3, -7]
    for m in range(2):  # the same as the member's own weight W o (s r^T)
        member_weight = weight * torch.outer(s[m], r[m])
        assert torch.allclose(out[m], member_weight @ x[m] + bias[m])


def test_a_conv_member_equals_a_conv_with_its_rank_1_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    layer = Rank1Conv2d(conv, SPEC)
    with torch.no_grad():  # a near-zero scale: every example of a member draws its loc
        for factor in (layer.alpha, layer.gamma):
            factor.raw_scale.fill_(-30.0)
            factor.loc.copy_(torch.randn_like(factor.loc))
    x = torch.randn(6, 3, 8, 8)
    out = layer(x)
    for m in range(2):
        r, s = layer.alpha.loc[m], layer.gamma.loc[m]
        weight = conv.weight * s[:, None, None, None] * r[None, :, None, None]
        expected = F.conv2d(x[3 * m : 3 * (m + 1)], weight, stride=2, padding=1)
        assert torch.allclose(out[3 * m : 3 * (m + 1)], expected, atol=1e-5)


def test_samples_differ_per_example_and_are_clamped():
    factor = Rank1Factor(2, 3, SPEC)
    draws = factor.sample(4)
    assert draws.shape == (8, 3) and not torch.equal(draws[0], draws[1])
    with torch.no_grad():
        factor.loc.fill_(20.0)
        factor.raw_scale.fill_(-30.0)
    assert (factor.sample(2) == 10.0).all()


def test_signs_start_at_plus_or_minus_one_and_scales_near_the_authors_start():
    torch.manual_seed(1)
    factor = Rank1Factor(100, 100, SPEC)
    assert set(factor.loc.unique().tolist()) == {-1.0, 1.0}
    assert (factor.loc > 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    scale = factor.scale
    assert scale.min() >= 0.0259 and scale.max() <= 0.0386
    assert scale.mean().item() == pytest.approx(math.sqrt(1e-3 / (1 - 1e-3)), rel=0.02)


def test_the_gaussian_kl_is_the_hand_computed_sum_over_members():
    alpha, gamma = Rank1Factor(2, 1, SPEC), Rank1Factor(2, 1, SPEC)
    with torch.no_grad():
        alpha.loc.copy_(torch.tensor([[1.0], [-1.0]]))
        gamma.loc.copy_(torch.tensor([[1.0], [1.0]]))
        for factor, scales in ((alpha, [0.1, 0.1]), (gamma, [0.2, 0.1])):
            raw = [math.log(math.expm1(v)) for v in scales]
            factor.raw_scale.copy_(torch.tensor(raw).view(2, 1))
    # 0 + 4 / (2 * 0.01) for alpha; ln(0.1 / 0.2) + 0.04 / 0.02 - 1/2 + 0 for gamma
    total = alpha.kl(1.0, 0.1) + gamma.kl(1.0, 0.1)
    assert total.item() == pytest.approx(200 + math.log(0.5) + 2 - 0.5, rel=1e-5)


def test_the_cauchy_kl_is_a_one_draw_estimate_that_vanishes_at_the_prior():
    spec = Rank1Spec(members=2, family="cauchy")
    factor = Rank1Factor(2, 3, spec)
    with torch.no_grad():
        factor.loc.fill_(1.0)
        factor.raw_scale.fill_(math.log(math.expm1(0.1)))
    assert factor.kl(1.0, 0.1).item() == pytest.approx(0.0, abs=1e-5)


def test_evaluation_averages_the_members_softmax():
    from trainables.models.rank1 import Rank1Ensemble

    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    model = Rank1Ensemble(nn.Sequential(linear), SPEC).eval()
    layer = model.backbone[0]
    with torch.no_grad():  # members of the forward test, without noise
        layer.alpha.loc.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        layer.gamma.loc.copy_(torch.tensor([[2.0, 1.0], [1.0, -1.0]]))
        layer.alpha.raw_scale.fill_(-30.0)
        layer.gamma.raw_scale.fill_(-30.0)
    probs = model(torch.ones(1, 2)).exp()[0]
    expected = (torch.tensor([-2.0, -1.0]).softmax(0) + torch.tensor([3.0, -7.0]).softmax(0)) / 2
    assert torch.allclose(probs, expected, atol=1e-6)  # [0.634448, 0.365552]
    assert probs[0].item() == pytest.approx(0.634448, abs=1e-6)


def test_the_factors_have_no_weight_decay_and_everything_else_keeps_it(digits_settings):
    from trainables.config import parse_config
    from trainables.engine.loop import Trainer
    from trainables.models.rank1 import Rank1Factor

    for method in ("sgd", "sam"):
        cfg = parse_config({**digits_settings, "method": method, "rank1": 2, "weight_decay": 5e-4})
        trainer = Trainer(cfg)
        factors = {
            id(p)
            for m in trainer.model.modules()
            if isinstance(m, Rank1Factor)
            for p in m.parameters()
        }
        decay = {
            id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]
        }
        assert len(decay) == len(list(trainer.model.parameters()))
        assert factors and all(decay[i] == 0.0 for i in factors)
        assert all(d == 5e-4 for i, d in decay.items() if i not in factors)
