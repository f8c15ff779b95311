"""SAM / ASAM against hand-computed steps, and the optimizer contract over several base optimizers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainables.engine.loop import sam_param_groups
from trainables.methods.sam import SAM, frozen_batchnorm_stats


def _tiny_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    return model, x, y


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _hand_sam_step(model, x, y, rho, lr, adaptive=False, eta=0.01, scaled=lambda name: True):
    """Plain-tensor SAM with SGD (no momentum), written from the definition; ASAM's T = |w| + eta
    for the parameters ``scaled(name)`` accepts, 1 for the others."""
    params = [p.detach().clone() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def grads_at(weights):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p, w in zip(m.parameters(), weights):
                p.copy_(w)
        loss = _loss(m, x, y)
        return torch.autograd.grad(loss, list(m.parameters()))

    g = grads_at(params)
    if adaptive:
        t = [w.abs() + eta if scaled(n) else torch.ones_like(w) for n, w in zip(names, params)]
        norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
        e = [rho * ti * ti * gi / norm for ti, gi in zip(t, g)]
    else:
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        e = [rho * gi / norm for gi in g]
    g_tilde = grads_at([w + ei for w, ei in zip(params, e)])
    return dict(zip(names, [w - lr * gt for w, gt in zip(params, g_tilde)]))


def _step_equals(model, opt, x, y, expected) -> None:
    """One SAM step through first_step/second_step lands on the hand-computed weights."""
    _loss(model, x, y).backward()
    opt.first_step(zero_grad=True)
    _loss(model, x, y).backward()
    opt.second_step(zero_grad=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("adaptive", [False, True])
def test_two_steps_equal_hand_computed_sam_float64(adaptive):
    model, x, y = _tiny_problem()
    expected = _hand_sam_step(model, x, y, rho=0.3, lr=0.1, adaptive=adaptive)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, adaptive=adaptive, lr=0.1)
    _step_equals(model, opt, x, y, expected)


@pytest.mark.parametrize("scale", ["weights", "all"])
def test_asam_scales_the_tensors_its_authors_scale(scale):
    """Kwon et al.'s reference (SamsungLabs/ASAM) scales parameters named "weight" by |w| + eta
    and leaves biases at T = 1; ``asam_scale: all`` scales every tensor."""
    model, x, y = _tiny_problem()
    with torch.no_grad():  # biases far from 0, so scaling them or not differs clearly
        for name, p in model.named_parameters():
            if "bias" in name:
                p.add_(2.0)
    scaled = (lambda name: "weight" in name) if scale == "weights" else (lambda name: True)
    expected = _hand_sam_step(model, x, y, rho=0.3, lr=0.1, adaptive=True, eta=0.05, scaled=scaled)
    groups = sam_param_groups(model, asam=True, scale=scale)
    opt = SAM(groups, torch.optim.SGD, rho=0.3, eta=0.05, lr=0.1)
    _step_equals(model, opt, x, y, expected)


def test_asam_by_name_differs_from_scaling_every_tensor():
    steps = {}
    for scale in ("weights", "all"):
        model, x, y = _tiny_problem()
        opt = SAM(sam_param_groups(model, True, scale), torch.optim.SGD, rho=0.3, lr=0.1)
        _loss(model, x, y).backward()
        opt.first_step(zero_grad=True)
        steps[scale] = [p.detach().clone() for p in model.parameters()]
    biases = [i for i, (n, _) in enumerate(model.named_parameters()) if "bias" in n]
    assert all(not torch.equal(steps["weights"][i], steps["all"][i]) for i in biases)


def test_step_with_closure_equals_two_steps():
    model_a, x, y = _tiny_problem()
    model_b = copy.deepcopy(model_a)
    opt_a = SAM(model_a.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    opt_b = SAM(model_b.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    for _ in range(3):
        _loss(model_a, x, y).backward()
        opt_a.first_step(zero_grad=True)
        _loss(model_a, x, y).backward()
        opt_a.second_step(zero_grad=True)

        _loss(model_b, x, y).backward()
        opt_b.step(lambda: _loss(model_b, x, y).backward())
        opt_b.zero_grad()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_weights_are_restored_in_place_not_rebound():
    model, x, y = _tiny_problem()
    before = [(p, p.data_ptr()) for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    _loss(model, x, y).backward()
    opt.first_step()
    _loss(model, x, y).backward()
    opt.second_step()
    for (p_before, ptr), p_after in zip(before, model.parameters()):
        assert p_before is p_after and p_after.data_ptr() == ptr


def test_first_step_perturbs_by_rho_and_second_step_restores_exactly():
    model, x, y = _tiny_problem()
    start = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.25, lr=0.0)
    _loss(model, x, y).backward()
    opt.first_step()
    moved = torch.sqrt(sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start)))
    assert moved.item() == pytest.approx(0.25, rel=1e-9)
    assert all(p.grad is None for p in model.parameters())  # released for the next backward
    _loss(model, x, y).backward()
    opt.second_step()  # lr = 0: the base step changes nothing, so weights are exactly the saved ones
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s)


def test_only_one_extra_copy_of_the_parameters_is_kept():
    model, x, y = _tiny_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    for _ in range(2):
        _loss(model, x, y).backward()
        opt.first_step()
        _loss(model, x, y).backward()
        opt.second_step(zero_grad=True)
    extra = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    assert extra == sum(p.numel() for p in model.parameters())


class _TwoHeads(nn.Module):
    """``shared`` in every loss; ``head`` only when asked; ``unused`` never has a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 2).double()
        self.head = nn.Linear(3, 2).double()
        self.unused = nn.Linear(3, 2).double()

    def loss(self, x: torch.Tensor, y: torch.Tensor, with_head: bool) -> torch.Tensor:
        z = self.shared(x) + (self.head(x) if with_head else 0.0)
        return nn.functional.cross_entropy(z, y)


@pytest.mark.parametrize("adaptive", [False, True])
def test_second_step_restores_only_what_this_first_step_perturbed(adaptive):
    _, x, y = _tiny_problem()
    model = _TwoHeads()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.1)

    def sam_step(with_head: bool) -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(x, y, with_head).backward()
        opt.first_step()
        model.loss(x, y, with_head).backward()
        opt.second_step()

    sam_step(with_head=True)  # the head has a gradient: perturbed, saved, restored, stepped
    with torch.no_grad():
        model.unused.weight.fill_(0.5)  # set by hand between steps: no SAM step may undo it
    head = [p.detach().clone() for p in model.head.parameters()]
    unused = [p.detach().clone() for p in model.unused.parameters()]
    sam_step(with_head=False)  # the head's grad is None now: neither perturbed nor restored
    for p, before in zip(model.head.parameters(), head, strict=True):
        assert p.grad is None
        assert torch.equal(p, before), "reverted to the copy saved by the step before"
    for p, before in zip(model.unused.parameters(), unused, strict=True):
        assert torch.equal(p, before)


BASES = [
    (torch.optim.SGD, dict(lr=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, foreach=True)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.01, foreach=True)),
    (torch.optim.Adam, dict(lr=1e-2, fused=True)),
]


@pytest.mark.parametrize(("base", "kwargs"), BASES, ids=lambda v: getattr(v, "__name__", str(v)))
class TestContract:
    def _train(self, model, opt, x, y, steps):
        for _ in range(steps):
            _loss(model, x, y).backward()
            opt.first_step()
            _loss(model, x, y).backward()
            opt.second_step(zero_grad=True)

    def test_state_dict_round_trip(self, base, kwargs):
        model, x, y = _tiny_problem()
        opt = SAM(model.parameters(), base, rho=0.1, **kwargs)
        self._train(model, opt, x, y, 2)
        clone = copy.deepcopy(model)
        clone_opt = SAM(clone.parameters(), base, rho=0.1, **kwargs)
        clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        self._train(model, opt, x, y, 2)
        self._train(clone, clone_opt, x, y, 2)
        for a, b in zip(model.parameters(), clone.parameters()):
            assert torch.equal(a, b)

    def test_accepts_an_optimizer_instance(self, base, kwargs):
        model_a, x, y = _tiny_problem()
        model_b = copy.deepcopy(model_a)
        opt_a = SAM(model_a.parameters(), base, rho=0.1, **kwargs)
        opt_b = SAM(None, base(model_b.parameters(), **kwargs), rho=0.1)
        self._train(model_a, opt_a, x, y, 2)
        self._train(model_b, opt_b, x, y, 2)
        for a, b in zip(model_a.parameters(), model_b.parameters()):
            assert torch.equal(a, b)

    @pytest.mark.parametrize("rho", [0.0, -0.1])
    def test_bad_rho_rejected(self, base, kwargs, rho):
        model, _, _ = _tiny_problem()
        with pytest.raises(ValueError, match="rho"):
            SAM(model.parameters(), base, rho=rho, **kwargs)

    def test_bad_eta_rejected(self, base, kwargs):
        model, _, _ = _tiny_problem()
        with pytest.raises(ValueError, match="eta"):
            SAM(model.parameters(), base, rho=0.1, adaptive=True, eta=-1.0, **kwargs)

    def test_step_without_closure_rejected(self, base, kwargs):
        model, _, _ = _tiny_problem()
        with pytest.raises(ValueError, match="closure"):
            SAM(model.parameters(), base, rho=0.1, **kwargs).step()

    def test_lr_scheduler_drives_the_base_optimizer(self, base, kwargs):
        model, x, y = _tiny_problem()
        opt = SAM(model.parameters(), base, rho=0.1, **kwargs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
        for _ in range(2):
            self._train(model, opt, x, y, 1)
            sched.step()
        expected = kwargs["lr"] * (1 + torch.cos(torch.tensor(torch.pi * 2 / 4)).item()) / 2
        assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        assert opt.param_groups is opt.base_optimizer.param_groups


def _bn_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for name, b in model.named_buffers()]


def test_frozen_batchnorm_stats_leaves_running_stats_untouched():
    model = _bn_model().train()
    x = torch.randn(16, 1, 8, 8)
    model(x)  # the clean pass updates the statistics
    before = _bn_buffers(model)
    with frozen_batchnorm_stats(model):
        model(x * 3 + 1)
    after = _bn_buffers(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    model(x * 3 + 1)  # and outside the block they move again
    assert not torch.equal(_bn_buffers(model)[0], before[0])


def test_frozen_batchnorm_stats_restores_when_the_pass_raises():
    model = _bn_model().train()
    before = _bn_buffers(model)
    with pytest.raises(RuntimeError, match="boom"), frozen_batchnorm_stats(model):
        model(torch.randn(16, 1, 8, 8))
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_buffers(model)))
