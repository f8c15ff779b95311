"""Building blocks of a method's optimizer: the base optimizer a run's settings name (SGD with
momentum or AdamW), the rank-1 factors' groups without weight decay and ASAM's groups."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainables.models.rank1 import Rank1Factor


def base_optimizer(cfg: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The base optimizer class ``cfg.optimizer`` names and its keyword arguments (``lr``,
    ``momentum`` for SGD, ``weight_decay``; foreach)."""
    if cfg.optimizer == "sgd":
        base_cls: type[torch.optim.Optimizer] = torch.optim.SGD
        kwargs: dict[str, Any] = dict(
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        base_cls = torch.optim.AdamW
        kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    kwargs["foreach"] = True
    return base_cls, kwargs


def trainable(model: nn.Module) -> list[torch.Tensor]:
    """The parameters of ``model`` that train (``requires_grad``)."""
    return [p for p in model.parameters() if p.requires_grad]


def factors_undecayed(groups: list[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """``groups`` with the rank-1 factors' parameters moved to groups of their own without weight
    decay (the authors regularise them by the KL only); unchanged for any other model."""
    factors = {id(p) for m in model.modules() if isinstance(m, Rank1Factor) for p in m.parameters()}
    if not factors:
        return groups
    split = []
    for group in groups:
        rest = {k: v for k, v in group.items() if k != "params"}
        split.append({**rest, "params": [p for p in group["params"] if id(p) not in factors]})
        undecayed = [p for p in group["params"] if id(p) in factors]
        split.append({**rest, "params": undecayed, "weight_decay": 0.0})
    return [g for g in split if g["params"]]


def sam_param_groups(model: nn.Module, asam: bool, scale: str = "weights") -> list[dict[str, Any]]:
    """SAM's parameter groups. For ASAM, ``adaptive`` (T = |w| + eta) is set on the parameters
    whose name contains "weight" — Kwon et al.'s reference rule; biases keep T = 1 — or on every
    parameter with ``scale="all"``; the perturbation's norm is taken over all groups together."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not asam or scale == "all":
        return [{"params": [p for _, p in named], "adaptive": asam}]
    groups = [
        {"params": [p for n, p in named if "weight" in n], "adaptive": True},
        {"params": [p for n, p in named if "weight" not in n], "adaptive": False},
    ]
    return [g for g in groups if g["params"]]
