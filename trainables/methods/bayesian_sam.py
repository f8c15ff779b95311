"""bSAM (Möllenhoff & Khan 2023): SAM as a Bayesian posterior, through the ``BSAM`` optimizer
(``trainables.methods.bsam``); its evaluation averages ``bsam_samples`` posterior samples."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainables.methods import register_method
from trainables.methods.base import Method, StepContext
from trainables.methods.bsam import BSAM
from trainables.methods.optim import trainable
from trainables.methods.steps import bsam_step


@register_method("bsam")
class Bsam(Method):
    """Bayesian SAM: ``lr`` is its alpha, ``momentum`` its beta1, ``rho`` its rho; the weight
    decay is ``bsam_prior_precision / N`` (``optimizer`` and ``weight_decay`` are not used)."""

    title = "bSAM"
    description = "SAM as variational learning: a Gaussian posterior over the weights"
    reference = "Möllenhoff & Khan 2023, SAM as an Optimal Relaxation of Bayes (ICLR)"
    keys = ("rho",)
    data_parallel = False
    one_worker_reason = "its posterior noise is drawn per process"

    def build_optimizer(self, cfg: Any, model: nn.Module, n_train: int) -> torch.optim.Optimizer:
        return BSAM(
            trainable(model),
            lr=cfg.lr,
            beta1=cfg.momentum,
            beta2=cfg.bsam_beta2,
            rho=cfg.rho,
            prior_precision=cfg.bsam_prior_precision,
            n_data=n_train * cfg.bsam_data_factor,
            damping=cfg.bsam_damping,
            s_init=cfg.bsam_s_init,
        )

    def step(self, ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
        return bsam_step(ctx, x, y)

    def eval_passes(self, cfg: Any) -> int | None:
        return cfg.bsam_samples

    def posterior(self, optimizer: torch.optim.Optimizer) -> Any | None:
        return optimizer if isinstance(optimizer, BSAM) else None
