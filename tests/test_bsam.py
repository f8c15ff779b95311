"""bSAM: its update against a hand-written reference on a small model over a few steps, a 1-D
quadratic computed by hand, its predictive (posterior samples averaged), and training with it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.config import parse_config
from trainables.engine.loop import Trainer
from trainables.engine.passes import WEIGHTS, pass_generator
from trainables.methods.bsam import BSAM

HYPER = dict(beta1=0.9, beta2=0.99, rho=0.05, prior_precision=2.0, n_data=50.0, damping=0.1)


def _reference_steps(model: nn.Module, batches, lr: float, seed: int) -> list[torch.Tensor]:
    """bSAM as the authors' optim.build_bsam_optimizer writes it (one sub-batch), by hand."""
    params = [p.detach().clone() for p in model.parameters()]
    s = [torch.ones_like(p) for p in params]
    m = [torch.zeros_like(p) for p in params]
    delta = HYPER["prior_precision"] / HYPER["n_data"]
    torch.manual_seed(seed)

    def grads_at(weights, x, y):
        leaves = [w.clone().requires_grad_(True) for w in weights]
        out = torch.func.functional_call(model, dict(zip(names, leaves, strict=True)), (x,))
        loss = nn.functional.cross_entropy(out, y)
        return torch.autograd.grad(loss, leaves)

    names = [n for n, _ in model.named_parameters()]
    for x, y in batches:
        noisy = [
            w + torch.randn_like(w) * torch.sqrt(1.0 / (HYPER["n_data"] * si))
            for w, si in zip(params, s)
        ]
        g = grads_at(noisy, x, y)
        perturbed = [w + HYPER["rho"] * gi / si for w, gi, si in zip(params, g, s)]
        g_eps = grads_at(perturbed, x, y)
        m = [
            HYPER["beta1"] * mi + (1 - HYPER["beta1"]) * (ge + delta * w)
            for mi, ge, w in zip(m, g_eps, params)
        ]
        new_params = [w - lr * mi / si for w, mi, si in zip(params, m, s)]
        s = [
            HYPER["beta2"] * si
            + (1 - HYPER["beta2"]) * (torch.sqrt(si * gi**2) + HYPER["damping"] + delta)
            for si, gi in zip(s, g)
        ]
        params = new_params
    return params


def test_three_steps_equal_the_reference_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,))) for _ in range(3)]
    expected = _reference_steps(model, batches, lr=0.3, seed=11)
    optimizer = BSAM(model.parameters(), lr=0.3, **HYPER)
    torch.manual_seed(11)
    for x, y in batches:
        optimizer.add_noise()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.perturb()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for found, want in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(found, want, atol=1e-6)


def test_a_1d_quadratic_by_hand():
    # L(w) = a/2 (w - c)^2; N so large that the noise (std 1/sqrt(N s) = 1e-7) is negligible
    a, c, lr, rho, beta1, beta2, damping, prior = 4.0, 1.0, 0.5, 0.1, 0.9, 0.5, 0.1, 1.0
    n = 1e14
    w = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    optimizer = BSAM([w], lr=lr, beta1=beta1, beta2=beta2, rho=rho, prior_precision=prior,
                     n_data=n, damping=damping)  # fmt: skip
    ww, s, m, delta = 3.0, 1.0, 0.0, prior / n
    for _ in range(3):
        optimizer.add_noise()
        (a / 2 * (w - c) ** 2).sum().backward()
        optimizer.perturb()
        (a / 2 * (w - c) ** 2).sum().backward()
        optimizer.step()
        g = a * (ww - c)  # at w (+ negligible noise)
        g_eps = a * (ww + rho * g / s - c)  # at the perturbed point: g * (1 + a rho / s)
        m = beta1 * m + (1 - beta1) * (g_eps + delta * ww)
        ww = ww - lr * m / s
        s = beta2 * s + (1 - beta2) * (math.sqrt(s) * abs(g) + damping + delta)
        assert w.item() == pytest.approx(ww, rel=1e-5)
        assert optimizer.state[w]["s"].item() == pytest.approx(s, rel=1e-5)
    # the step is SAM's: the gradient taken past w, scaled by 1 / s, which grows with |g|
    assert s > 1.0 and abs(ww - c) < 2.0


def test_the_predictive_averages_posterior_samples_and_is_seeded(digits_settings):
    cfg = parse_config({**digits_settings, "method": "bsam", "bsam_samples": 4, "epochs": 1})
    trainer = Trainer(cfg)
    trainer.fit()
    logits, _ = trainer.predict("val")
    assert torch.equal(logits, trainer.predict("val")[0])  # the same samples each evaluation
    ((x, _),) = trainer.data.eval_batches("val", 1024)
    mean = [p.detach().clone() for p in trainer.model.parameters()]
    optimizer = trainer.optimizer
    with torch.no_grad():  # pass k: one weight sample for the batch, from the run's seed and k
        probs = []
        for k in range(4):
            generator = pass_generator(cfg.seed, k, WEIGHTS, 0)
            for p, w in zip(trainer.model.parameters(), mean, strict=True):
                s, n = optimizer.state[p]["s"], optimizer.param_groups[0]["n_data"]
                p.copy_(w + torch.randn(w.shape, generator=generator) * (n * s).rsqrt())
            probs.append(trainer.model.eval()(x).softmax(dim=1))
        for p, w in zip(trainer.model.parameters(), mean, strict=True):
            p.copy_(w)
    assert torch.allclose(logits.softmax(dim=1), torch.stack(probs).mean(dim=0), atol=1e-6)
    assert all(torch.equal(p, w) for p, w in zip(trainer.model.parameters(), mean, strict=True))


def test_training_with_bsam_learns_and_resumes_its_precision(digits_settings):
    cfg = parse_config(
        {
            **digits_settings,
            "method": "bsam",
            "lr": 0.5,
            "rho": 0.01,
            "epochs": 3,
            "bsam_samples": 2,
        }
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert result.status == "completed" and result.final["test_accuracy"] > 0.6
    state = trainer.optimizer.state_dict()["state"]
    assert all("s" in v and "m" in v for v in state.values())
