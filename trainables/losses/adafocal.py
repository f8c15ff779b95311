"""AdaFocal (Ghosh, Schaaf and Gormley, NeurIPS 2022): a focal loss whose gamma is chosen per
sample from the bin of its true-class probability, each bin's gamma updated after every epoch from
the validation calibration of that bin, switching to the inverse-focal form where the model is
underconfident.

As the authors' reference code (3mcloud/adafocal) does it:

- After an epoch, the validation set's max-softmax confidences are split into ``bins`` equal-mass
  bins (edges ``np.interp(linspace(0, n, B+1), arange(n), sort(conf))``; a sample is in a bin when
  ``lower < conf <= upper``); each bin's gap is its mean confidence minus its accuracy (0 when
  empty).
- Bin b's gamma: ``g * exp(lambda * gap)`` when ``g > 0``, ``g * exp(-lambda * gap)`` otherwise;
  a result with ``|g| < switch`` becomes ``-switch`` (was positive) or ``+switch`` (was negative):
  the switch between focal and inverse-focal; then clipped to ``[gamma_min, gamma_max]``. The
  bins' edges become the validation bins' edges.
- Training picks each sample's gamma by its true-class probability ``p``: the first bin when
  ``p`` is below its upper edge, else the first bin with ``lower <= p < upper``, else (``p`` at
  or above the last edge) the last bin. The loss is ``-(1 - sign(g) p)^|g| log p``: focal for ``g > 0``,
  inverse-focal ``-(1 + p)^|g| log p`` for ``g < 0``. The mean over the batch here (the reference
  sums; the scale is the learning rate's business).

The defaults are the reference's: 15 bins, lambda 1, initial gamma 1, gamma in [-2, 20], switch
at 0.2, one update per epoch. The bins' gammas and edges are part of the training checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.losses import Loss, StatefulLoss, register_loss
from trainables.losses.common import focal_weight


@dataclass
class AdaFocalBins:
    """Each bin's gamma and edges (of the true-class probability), as float64 tensors."""

    gammas: torch.Tensor
    lowers: torch.Tensor
    uppers: torch.Tensor

    @classmethod
    def initial(cls, bins: int, gamma: float) -> AdaFocalBins:
        """Equal-width bins of [0, 1], every gamma ``gamma``."""
        edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
        return cls(torch.full((bins,), float(gamma), dtype=torch.float64), edges[:-1], edges[1:])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"gammas": self.gammas, "lowers": self.lowers, "uppers": self.uppers}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> AdaFocalBins:
        return cls(state["gammas"].clone(), state["lowers"].clone(), state["uppers"].clone())

    def gamma_of(self, p: torch.Tensor) -> torch.Tensor:
        """Each sample's gamma, by the bin of its true-class probability ``p``."""
        lowers, uppers = self.lowers.to(p.device, p.dtype), self.uppers.to(p.device, p.dtype)
        inside = (p[:, None] >= lowers[None, :]) & (p[:, None] < uppers[None, :])
        index = inside.int().argmax(dim=1)  # the first bin holding p (the reference's order)
        # in none (above the last edge): the last bin, where the reference's search ends
        index = torch.where(inside.any(dim=1), index, torch.full_like(index, len(lowers) - 1))
        index = torch.where(p < uppers[0], torch.zeros_like(index), index)
        return self.gammas.to(p.device, p.dtype)[index]


def adafocal_loss(logits: torch.Tensor, labels: torch.Tensor, bins: AdaFocalBins) -> torch.Tensor:
    """Mean of ``-(1 - sign(g) p)^|g| log p`` with each sample's ``g`` from ``bins``."""
    log_p = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    p = log_p.exp()
    with torch.no_grad():
        gamma = bins.gamma_of(p.detach())
    # Focal (g > 0): (1 - p)^g from log(1 - p), exact and smooth where p rounds to 1 (see
    # trainables.losses.common.focal_weight); inverse focal (g <= 0): (1 + p)^|g|, smooth everywhere.
    focal = focal_weight(logits, labels, gamma.abs())
    inverse = torch.exp(gamma.abs() * torch.log1p(p))
    return (-torch.where(gamma > 0, focal, inverse) * log_p).mean()


def validation_bins(
    confidences: np.ndarray, correct: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-mass bins of the val confidences: lower edges, upper edges and gaps (mean
    confidence minus accuracy; 0 for an empty bin)."""
    n = len(confidences)
    edges = np.interp(np.linspace(0, n, bins + 1), np.arange(n), np.sort(confidences))
    lowers, uppers = edges[:-1], edges[1:]
    gaps = np.zeros(bins)
    for b in range(bins):
        members = (confidences > lowers[b]) & (confidences <= uppers[b])
        if members.any():
            gaps[b] = confidences[members].mean() - correct[members].mean()
    return lowers, uppers, gaps


def update_bins(
    bins: AdaFocalBins,
    val_probs: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    lam: float,
    switch: float,
    gamma_min: float,
    gamma_max: float,
) -> AdaFocalBins:
    """One AdaFocal update from the validation probabilities (see the module's doc)."""
    confidence, prediction = val_probs.double().max(dim=1)
    correct = (prediction == val_labels).double()
    lowers, uppers, gaps = validation_bins(
        confidence.cpu().numpy(), correct.cpu().numpy(), len(bins.gammas)
    )
    gammas = []
    for previous, gap in zip(bins.gammas.tolist(), gaps.tolist(), strict=True):
        sign = 1.0 if previous > 0 else -1.0
        following = previous * float(np.exp(sign * lam * gap))
        if abs(following) < switch:
            following = -switch if following > 0 else switch
        gammas.append(min(max(following, gamma_min), gamma_max))
    return AdaFocalBins(
        torch.tensor(gammas, dtype=torch.float64),
        torch.from_numpy(lowers.astype(np.float64)),
        torch.from_numpy(uppers.astype(np.float64)),
    )


class AdaFocalState(StatefulLoss):
    """AdaFocal as a run's loss: the bins' gammas, updated after each epoch's validation."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.bins = AdaFocalBins.initial(cfg.adafocal_bins, cfg.adafocal_gamma)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return adafocal_loss(logits, labels, self.bins)

    def end_epoch(self, val_logits: torch.Tensor, val_labels: torch.Tensor) -> None:
        cfg = self.cfg
        self.bins = update_bins(
            self.bins,
            val_logits.float().softmax(dim=1),
            val_labels,
            lam=cfg.adafocal_lambda,
            switch=cfg.adafocal_switch,
            gamma_min=cfg.adafocal_gamma_min,
            gamma_max=cfg.adafocal_gamma_max,
        )

    def state_dict(self) -> dict[str, Any]:
        return self.bins.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bins = AdaFocalBins.from_state(state)


@register_loss("adafocal")
class AdaFocal(Loss):
    """Focal loss whose gamma per confidence bin follows the validation calibration."""

    title = "AdaFocal"
    description = "focal loss with per-bin gammas adapted after each epoch on the val split"
    reference = "Ghosh et al. 2022, AdaFocal (NeurIPS)"
    needs_val = True

    def check(self, cfg: Any) -> None:
        if cfg.val_fraction == 0:
            raise ValueError(
                "loss=adafocal updates its gammas from the validation split; set val_fraction > 0"
            )

    def build(self, cfg: Any) -> AdaFocalState:
        return AdaFocalState(cfg)
