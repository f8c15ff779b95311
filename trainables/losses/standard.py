"""The stateless losses: cross-entropy and the calibration baselines of Mukhoti et al. (2020)
(label smoothing, focal, FLSD-53), registered as parts (``trainables.losses.common`` holds the
functions)."""

from __future__ import annotations

from typing import Any

from trainables.losses import Loss, register_loss
from trainables.losses.common import LossFn, cross_entropy, flsd53, focal, label_smoothing


@register_loss("ce")
class CrossEntropy(Loss):
    """Cross-entropy: the plain likelihood."""

    title = "CE"
    description = "cross-entropy"
    plain = True

    def build(self, cfg: Any) -> LossFn:
        return cross_entropy


@register_loss("ls")
class LabelSmoothing(Loss):
    """Cross-entropy against labels smoothed by ``ls_epsilon``."""

    title = "LS"
    description = "label smoothing: cross-entropy against (1 - ε) one-hot + ε uniform"
    reference = "Szegedy et al. 2016; Müller et al. 2019"
    keys = ("ls_epsilon",)

    def build(self, cfg: Any) -> LossFn:
        return label_smoothing(cfg.ls_epsilon)


@register_loss("focal")
class Focal(Loss):
    """Focal loss with a fixed ``focal_gamma``."""

    title = "Focal"
    description = "focal loss -(1 - p)^γ log p"
    reference = "Lin et al. 2017; Mukhoti et al. 2020"
    keys = ("focal_gamma",)

    def build(self, cfg: Any) -> LossFn:
        return focal(cfg.focal_gamma)


@register_loss("flsd53")
class Flsd53(Loss):
    """Sample-dependent focal loss: gamma 5 below p = 0.2, else 3."""

    title = "FLSD-53"
    description = "focal loss with γ = 5 for p < 0.2, else 3"
    reference = "Mukhoti et al. 2020, Calibrating Deep Neural Networks using Focal Loss"

    def build(self, cfg: Any) -> LossFn:
        return flsd53
