"""Training losses: the baselines of Mukhoti et al. (2020) and CSAM's descent loss.

Every loss maps ``(logits [B, K], labels [B])`` to the batch mean, vectorised over samples, with no
host sync. Probabilities are taken from ``log_softmax`` in float32 for stability under autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainables.messages import shown

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("ce", "ls", "focal", "flsd53")  # and "adafocal", stateful: trainables/adafocal.py


def _true_class_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, -log p_y."""
    return -_true_class_log_prob(logits, labels).mean()


def label_smoothing(epsilon: float) -> LossFn:
    """Cross-entropy against (1 - epsilon) one-hot + epsilon uniform targets."""
    _check_range("ls_epsilon", epsilon, 0.0, 1.0)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)

    return loss


def _focal_terms(log_p: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    return -((1.0 - log_p.exp()) ** gamma) * log_p


def focal(gamma: float) -> LossFn:
    """Focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017); gamma = 0 is cross-entropy."""
    _check_range("focal_gamma", gamma, 0.0, 10.0)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _focal_terms(_true_class_log_prob(logits, labels), gamma).mean()

    return loss


def flsd53(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sample-dependent focal loss FLSD-53: gamma = 5 where p_y < 0.2, else 3 (Mukhoti et al.)."""
    log_p = _true_class_log_prob(logits, labels)
    with torch.no_grad():
        gamma = torch.where(log_p.exp() < 0.2, 5.0, 3.0)
    return _focal_terms(log_p, gamma).mean()


def csam_loss(gamma: float) -> LossFn:
    """CSAM's descent loss at the perturbed weights (Tan et al., ICLR 2026), per sample:

    ``-log p`` where the true-class probability ``p <= 1/2``, else ``-(1 + p)^(-gamma) log p``;
    ``0 <= gamma <= 2``. With gamma = 0 the weight is exactly 1 and the loss is cross-entropy.
    """
    _check_range("gamma", gamma, 0.0, 2.0)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = _true_class_log_prob(logits, labels)
        p = log_p.exp()
        weight = torch.where(p <= 0.5, torch.ones_like(p), (1.0 + p) ** (-gamma))
        return -(weight * log_p).mean()

    return loss


def build_loss(name: str, *, ls_epsilon: float = 0.1, focal_gamma: float = 3.0) -> LossFn:
    """The training loss named in a config: ``ce``, ``ls``, ``focal`` or ``flsd53``."""
    if name == "ce":
        return cross_entropy
    if name == "ls":
        return label_smoothing(ls_epsilon)
    if name == "focal":
        return focal(focal_gamma)
    if name == "flsd53":
        return flsd53
    raise ValueError(f"unknown loss {shown(name)}: choose one of {', '.join(LOSSES)}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
