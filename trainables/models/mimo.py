"""MIMO (Havasi et al., ICLR 2021): M subnetworks inside one network, trained on M independent
inputs at once and averaged at test time; as the authors' code (google/uncertainty-baselines,
``baselines/cifar/mimo.py``) builds its batches and sums its heads' losses.

- The network's input layer takes M images stacked on channels (member-major: channel ``c`` of
  member ``m`` at ``m * C + c``; the authors' channel-major layout is a fixed permutation of the
  stem's input rows, the same network at i.i.d. initialisation) and its classifier has M heads
  (``M * K`` outputs, head ``m`` the ``m``-th block of K).
- Training: a unique batch of B images is repeated ``batch_repetitions`` (b) times, R = b B rows;
  each member gets its own shuffle of those rows, except the last fraction
  ``input_repetition`` (rho) of rows, where every member sees the same image. The loss is the
  sum over heads of each head's mean loss.
- Evaluation: the same image M times; the prediction is the mean of the M heads' softmaxes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Mimo(nn.Module):
    """A backbone built with ``M * K`` outputs and ``M * C`` input channels, as M members.

    Training input ``[R, M, C, H, W]`` gives logits ``[R, M, K]``; any other input ``[B, C, H,
    W]`` is fed M times and gives the log of the heads' mean softmax ``[B, K]``, so everything
    that reads logits (softmax, temperature, evidence, OOD) sees the ensemble's prediction."""

    def __init__(self, backbone: nn.Module, members: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        if x.dim() == 5:
            rows, members, c, h, w = x.shape
            z = self.backbone(x.reshape(rows, members * c, h, w))
            return z.view(rows, members, -1)
        z = self.backbone(x.repeat(1, m, 1, 1))
        probs = z.float().unflatten(1, (m, -1)).softmax(dim=-1).mean(dim=1)  # any batch size
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def mimo_indices(
    batch: int, members: int, repetitions: int, input_repetition: float, generator: torch.Generator
) -> torch.Tensor:
    """``[M, R]`` indices into a batch of ``batch`` images (R = ``repetitions * batch``): one
    shuffle of the repeated indices, then an independent shuffle per member of its first
    ``int(R * (1 - input_repetition))`` rows (in float32, as the authors' TensorFlow computes it);
    the rows after those are the same image in every member."""
    rows = repetitions * batch
    main = torch.arange(batch).repeat(repetitions)
    main = main[torch.randperm(rows, generator=generator)]
    shuffled = int(torch.tensor(rows, dtype=torch.float32) * torch.tensor(1 - input_repetition))
    per_member = []
    for _ in range(members):
        head = main[:shuffled][torch.randperm(shuffled, generator=generator)]
        per_member.append(torch.cat([head, main[shuffled:]]))
    return torch.stack(per_member)


def mimo_batch(
    x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' inputs ``[R, M, C, H, W]`` and labels ``[R, M]`` for ``indices`` ``[M, R]``."""
    idx = indices.to(x.device)
    return x[idx].transpose(0, 1), y[idx].transpose(0, 1)


def mimo_loss(loss: LossFn) -> LossFn:
    """``loss`` (a mean over samples) summed over the heads: logits ``[R, M, K]``, labels
    ``[R, M]``."""

    def summed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows, members, classes = logits.shape
        return members * loss(logits.reshape(rows * members, classes), labels.reshape(-1))

    return summed
