"""SAM (Foret et al. 2021), ASAM (Kwon et al. 2021) and CSAM (SAM with a calibrated descent
loss): two passes per step through the ``SAM`` optimizer (``trainables.methods.sam``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainables.losses import LOSSES
from trainables.losses.common import LossFn, cross_entropy, csam_loss
from trainables.methods import register_method
from trainables.methods.base import Method, StepContext
from trainables.methods.optim import base_optimizer, factors_undecayed, sam_param_groups
from trainables.methods.sam import SAM
from trainables.methods.steps import sam_step


class SamFamily(Method):
    """A method of SAM's family: the ascent to ``rho`` then the descent step (ASAM's adaptive
    perturbation when ``adaptive``)."""

    adaptive = False
    keys: tuple[str, ...] = ("rho",)

    def build_optimizer(self, cfg: Any, model: nn.Module, n_train: int) -> torch.optim.Optimizer:
        base_cls, kwargs = base_optimizer(cfg)
        groups = sam_param_groups(model, self.adaptive, cfg.asam_scale)
        return SAM(factors_undecayed(groups, model), base_cls, rho=cfg.rho, eta=cfg.eta, **kwargs)

    def step(self, ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
        return sam_step(ctx, x, y)

    def label_keys(self) -> tuple[str, ...]:
        return ("rho",)


@register_method("sam")
class Sam(SamFamily):
    """Sharpness-aware minimisation."""

    title = "SAM"
    description = "the descent step at the worst weights within radius rho"
    reference = "Foret et al. 2021, Sharpness-Aware Minimization (ICLR)"


@register_method("asam")
class Asam(SamFamily):
    """Adaptive SAM: the radius scaled by T = |w| + eta."""

    title = "ASAM"
    description = "SAM with a scale-invariant (adaptive) perturbation"
    reference = "Kwon et al. 2021, ASAM (ICML)"
    adaptive = True
    keys = ("rho", "eta", "asam_scale")


@register_method("csam")
class Csam(SamFamily):
    """SAM's ascent on cross-entropy, its descent on the calibrated loss ``csam_loss(gamma)``."""

    title = "CSAM"
    description = "SAM whose descent loss adds a calibration term weighted by gamma"
    keys = ("rho", "gamma")

    def check(self, cfg: Any) -> None:
        if not LOSSES.get(cfg.loss).plain:  # its descent loss replaces the run's
            raise ValueError(
                "method=csam defines its own descent loss; use loss=ce (or method=sam with "
                f"loss={cfg.loss})"
            )

    def losses(self, cfg: Any, loss: LossFn) -> tuple[LossFn, LossFn]:
        return cross_entropy, csam_loss(cfg.gamma)

    def label_keys(self) -> tuple[str, ...]:
        return ("rho", "gamma")
