"""Training losses: the baselines of Mukhoti et al. (2020) and CSAM's descent loss.

Every loss maps ``(logits [B, K], labels [B])`` to the batch mean, vectorised over samples, with no
host sync. Probabilities are taken from ``log_softmax`` in float32 for stability under autocast;
the focal factor ``(1 - p)^gamma`` from ``log(1 - p)`` computed from the other classes' logits
(``focal_weight``), so that it stays exact, with a finite gradient for every gamma, where ``p``
rounds to 1 in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _true_class_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)


def log_one_minus_true_class_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log(1 - p_y)`` per sample, from the logits of the other classes.

    ``logsumexp`` of the other classes' logits minus that of all: exact where ``p_y`` rounds to 1
    in float32 (a logit gap above about 17), where ``1 - exp(log p_y)`` is 0 and ``(1 - p)^gamma``
    has an infinite derivative for ``gamma < 1``. Needs at least two classes.
    """
    z = logits.float()
    others = z.scatter(1, labels[:, None], float("-inf"))
    return torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1)


def focal_weight(
    logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor | float
) -> torch.Tensor:
    """The focal factor ``(1 - p_y)^gamma`` per sample, as ``exp(gamma * log(1 - p_y))``: finite,
    with a finite gradient, for every ``gamma >= 0`` and finite logits (1 where gamma is 0)."""
    return torch.exp(gamma * log_one_minus_true_class_prob(logits, labels))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, -log p_y."""
    return -_true_class_log_prob(logits, labels).mean()


def label_smoothing(epsilon: float) -> LossFn:
    """Cross-entropy against (1 - epsilon) one-hot + epsilon uniform targets."""
    _check_range("ls_epsilon", epsilon, 0.0, 1.0)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=epsilon)

    return loss


def _focal_terms(
    logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor | float
) -> torch.Tensor:
    return -focal_weight(logits, labels, gamma) * _true_class_log_prob(logits, labels)


def focal(gamma: float) -> LossFn:
    """Focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017); gamma = 0 is cross-entropy."""
    _check_range("focal_gamma", gamma, 0.0, 10.0)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _focal_terms(logits, labels, gamma).mean()

    return loss


def flsd53(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sample-dependent focal loss FLSD-53: gamma = 5 where p_y < 0.2, else 3 (Mukhoti et al.)."""
    with torch.no_grad():
        gamma = torch.where(_true_class_log_prob(logits, labels).exp() < 0.2, 5.0, 3.0)
    return _focal_terms(logits, labels, gamma).mean()


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
    """The stateless registered loss ``name`` with these settings (``LOSSES``; an unknown name is
    a one-line ``InputError``, a ``ValueError``)."""
    from types import SimpleNamespace

    from trainables.losses import LOSSES

    return LOSSES.get(name).build(SimpleNamespace(ls_epsilon=ls_epsilon, focal_gamma=focal_gamma))  # type: ignore[return-value]


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
