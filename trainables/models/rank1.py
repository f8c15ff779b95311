"""Rank-1 Bayesian neural networks (Dusenberry et al., ICML 2020), as edward2's ``DenseRank1`` /
``Conv2DRank1`` and google/uncertainty-baselines' ``rank1_bnn.py`` build them.

A layer keeps one shared weight W and, per member m, a distribution over a rank-1 factor pair:
``r`` (``alpha``, input side) and ``s`` (``gamma``, output side). Each example of member m's chunk
draws its own ``r, s`` and computes ``((x * r) W) * s + b_m``: the weight ``W o (s r^T)``. The
batch is ``[M * E, ...]``, member m the rows ``m E .. (m + 1) E - 1``.

Families (posterior and prior alike): ``normal`` (the authors' default; the KL to the prior is
analytic, summed over every entry of every member) or ``cauchy`` (the KL is a one-sample
estimate at a fresh draw). Means start at random signs (+1 with probability
``random_sign_init``; a negative value: N(1, |value|^2)), scales at ``sqrt(d / (1 - d))`` of the
authors' ``dropout_rate`` d. Samples are clamped to [-10, 10], as edward2 does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Family = Literal["normal", "cauchy"]
CLAMP = 10.0


@dataclass(frozen=True)
class Rank1Spec:
    """The authors' CIFAR choices (uncertainty-baselines ``baselines/cifar/rank1_bnn.py``)."""

    members: int = 4
    family: Family = "normal"
    prior_mean: float = 1.0
    prior_stddev: float = 0.1
    dropout_rate: float = 1e-3  # the posterior scale's start, sqrt(d / (1 - d))
    random_sign_init: float = 0.5


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


class Rank1Factor(nn.Module):
    """One side's factors of M members: a ``loc`` and a softplus-scale per entry, ``[M, D]``."""

    def __init__(self, members: int, size: int, spec: Rank1Spec) -> None:
        super().__init__()
        self.family = spec.family
        if spec.random_sign_init > 0:
            signs = torch.rand(members, size) < spec.random_sign_init
            loc = torch.where(signs, 1.0, -1.0)
        else:
            loc = 1.0 + abs(spec.random_sign_init) * torch.randn(members, size)
        self.loc = nn.Parameter(loc)
        start = _inverse_softplus(math.sqrt(spec.dropout_rate / (1 - spec.dropout_rate)))
        if spec.family == "normal":  # truncated normal around the start, std 0.1, +-2 std
            noise = torch.nn.init.trunc_normal_(torch.empty(members, size), 0.0, 0.1, -0.2, 0.2)
        else:
            noise = torch.zeros(members, size)
        self.raw_scale = nn.Parameter(start + noise)
        # evaluation's draws [M, D], one per member for a whole pass (``trainables.engine.passes``)
        self.fixed: torch.Tensor | None = None

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale)

    def _noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Standard draws of the family: from the global RNG on the factor's device, or from
        ``generator`` (a CPU one) and then moved there."""
        device = self.loc.device if generator is None else torch.device("cpu")
        if self.family == "normal":
            noise = torch.randn(shape, device=device, generator=generator)
        else:
            noise = torch.tan(
                math.pi * (torch.rand(shape, device=device, generator=generator) - 0.5)
            )
        return noise.to(self.loc.device)

    def sample(self, per_member: int) -> torch.Tensor:
        """``[M * per_member, D]``: a draw per example, member-major, from the global RNG."""
        members, size = self.loc.shape
        noise = self._noise((members, per_member, size))
        draws = self.loc[:, None] + self.scale[:, None] * noise
        return draws.clamp(-CLAMP, CLAMP).reshape(members * per_member, size)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """``[M, D]``: one draw per member from ``generator`` (a CPU one), for a whole pass."""
        draws = self.loc + self.scale * self._noise(tuple(self.loc.shape), generator)
        return draws.clamp(-CLAMP, CLAMP)

    def kl(self, prior_mean: float, prior_stddev: float) -> torch.Tensor:
        """KL(q || prior), summed over members and entries (normal: exact; cauchy: one draw)."""
        if self.family == "normal":
            q = torch.distributions.Normal(self.loc, self.scale)
            p = torch.distributions.Normal(torch.full_like(self.loc, prior_mean), prior_stddev)
            return torch.distributions.kl_divergence(q, p).sum()
        q = torch.distributions.Cauchy(self.loc, self.scale)
        p = torch.distributions.Cauchy(torch.full_like(self.loc, prior_mean), prior_stddev)
        x = q.rsample()
        return (q.log_prob(x) - p.log_prob(x)).sum()


def rank1_linear(
    x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor, s: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``((x * r) W^T) * s + bias``, row by row: the weight ``W o (s r^T)``."""
    return F.linear(x * r, weight) * s + bias


class Rank1Linear(nn.Module):
    """``nn.Linear`` with M rank-1 members: its weight shared, a bias per member."""

    def __init__(self, linear: nn.Linear, spec: Rank1Spec) -> None:
        super().__init__()
        self.members = spec.members
        self.weight = linear.weight
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
        self.member_bias = nn.Parameter(bias.repeat(spec.members, 1))
        self.alpha = Rank1Factor(spec.members, linear.in_features, spec)
        self.gamma = Rank1Factor(spec.members, linear.out_features, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, s = self.alpha.fixed, self.gamma.fixed
        if r is not None and s is not None:  # a pass's draws: one per member
            rows = x.unflatten(0, (self.members, -1))
            out = rank1_linear(rows, self.weight, r[:, None], s[:, None], self.member_bias[:, None])
            return out.flatten(0, 1)
        per_member = len(x) // self.members
        bias = self.member_bias.repeat_interleave(per_member, dim=0)
        return rank1_linear(
            x, self.weight, self.alpha.sample(per_member), self.gamma.sample(per_member), bias
        )


class Rank1Conv2d(nn.Module):
    """``nn.Conv2d`` with M rank-1 members (``r`` over input channels, ``s`` over output
    channels), its weight shared, a bias per member."""

    def __init__(self, conv: nn.Conv2d, spec: Rank1Spec) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("rank1: grouped convolutions are not supported")
        self.members = spec.members
        self.conv = conv
        out = conv.out_channels
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(out)
        self.member_bias = nn.Parameter(bias.repeat(spec.members, 1))
        conv.bias = None
        self.alpha = Rank1Factor(spec.members, conv.in_channels, spec)
        self.gamma = Rank1Factor(spec.members, out, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r_fixed, s_fixed = self.alpha.fixed, self.gamma.fixed
        if r_fixed is not None and s_fixed is not None:  # a pass's draws: one per member
            rows = x.unflatten(0, (self.members, -1)) * r_fixed[:, None, :, None, None]
            out = self.conv(rows.flatten(0, 1)).unflatten(0, (self.members, -1))
            out = out * s_fixed[:, None, :, None, None] + self.member_bias[:, None, :, None, None]
            return out.flatten(0, 1)
        per_member = len(x) // self.members
        r = self.alpha.sample(per_member)[:, :, None, None]
        s = self.gamma.sample(per_member)[:, :, None, None]
        bias = self.member_bias.repeat_interleave(per_member, dim=0)[:, :, None, None]
        return self.conv(x * r) * s + bias


def to_rank1(model: nn.Module, spec: Rank1Spec) -> nn.Module:
    """``model`` with every ``nn.Conv2d`` and ``nn.Linear`` replaced by its rank-1 version (their
    weights kept), as the authors' WRN does."""
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = Rank1Conv2d if isinstance(module, nn.Conv2d) else Rank1Linear
            setattr(parent, child, layer(module, spec))  # type: ignore[arg-type]
    return model


class Rank1Ensemble(nn.Module):
    """A rank-1 network of M members. Training input is the batch tiled M times (``[M * E,
    ...]``, member-major) and gives each member's logits; evaluation input ``[B, ...]`` is tiled
    here and gives the log of the members' mean softmax (each example its own draws, unless a
    pass's draws are fixed: ``trainables.engine.passes``)."""

    def __init__(self, backbone: nn.Module, spec: Rank1Spec) -> None:
        super().__init__()
        self.backbone = to_rank1(backbone, spec)
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.backbone(x)
        m = self.spec.members
        z = self.backbone(x.repeat(m, *([1] * (x.dim() - 1))))
        probs = z.float().unflatten(0, (m, -1)).softmax(dim=-1).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def kl(self) -> torch.Tensor:
        """The KL of every factor to the prior, summed (float32)."""
        spec = self.spec
        terms = [
            f.kl(spec.prior_mean, spec.prior_stddev)
            for f in self.modules()
            if isinstance(f, Rank1Factor)
        ]
        return torch.stack(terms).sum()
