"""Plain gradient descent with the run's base optimizer (SGD with momentum, or AdamW)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from trainables.methods import register_method
from trainables.methods.base import Method, StepContext
from trainables.methods.optim import base_optimizer, factors_undecayed, trainable
from trainables.methods.steps import sgd_step
from trainables.parts import number

OPTIMIZER_TITLES = {"sgd": "SGD", "adamw": "AdamW"}


@register_method("sgd")
class Sgd(Method):
    """The baseline: one pass, one step of the base optimizer (``optimizer``: sgd or adamw)."""

    title = "SGD"
    description = "one gradient step of the base optimizer (SGD with momentum, or AdamW)"
    keys = ()

    def build_optimizer(self, cfg: Any, model: nn.Module, n_train: int) -> torch.optim.Optimizer:
        base_cls, kwargs = base_optimizer(cfg)
        return base_cls(factors_undecayed([{"params": trainable(model)}], model), **kwargs)

    def step(self, ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
        return sgd_step(ctx, x, y)

    def label(self, cfg: Any, g: Callable[[float], str] = number) -> str:
        return OPTIMIZER_TITLES[cfg.optimizer]

    def label_keys(self) -> tuple[str, ...]:
        return ("optimizer",)
