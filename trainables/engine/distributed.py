"""Data-parallel training (DDP) for a multi-worker trial: the ``Parallelism`` a ``Trainer`` takes,
a BatchNorm over the whole global batch and each replica's share of the data
(``trainables.trial.distributed`` runs it through Ray Train).

A space asks for it with ``resources: {workers: K}``. Each worker holds a replica of the model and
takes its slice of every global batch (``batch_size`` stays the global batch). BatchNorm normalises
with the statistics of the whole global batch, as in one process. SAM's ascent gradient is local
to each replica by default (per-replica perturbation, as in the original SAM); with
``sync_perturbation: true`` it is all-reduced first, so one step equals one single-process step on
the global batch.

Rank 0 writes the trial's evidence and checkpoints; every rank reports each epoch, and
``TuneReportCallback`` forwards rank 0's metrics to the Tune trial (then to Optuna and MLflow).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed import _functional_collectives as funcol
from torch.nn.parallel import DistributedDataParallel

from trainables.data.datasets import Data, DatasetInfo
from trainables.engine.loop import (
    Parallelism,
    Replica,
)


def _sum_over_replicas(t: Tensor) -> Tensor:
    """A differentiable all-reduce (its backward all-reduces the gradient)."""
    return funcol.all_reduce(t, "sum", dist.group.WORLD)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of every replica, on any device.

    ``torch.nn.SyncBatchNorm`` does the same with fused kernels but refuses CPU tensors; this one
    is used where it refuses (CPU/gloo). Statistics are computed in two passes (mean, then centred
    second moment) through differentiable all-reduces, so gradients flow across replicas exactly
    as in one process over the whole batch.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        synced = (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )
        if not synced:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        work = input.float()
        count = torch.tensor([work.numel() / work.shape[1]], device=input.device)
        totals = _sum_over_replicas(torch.cat([work.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = work - mean.view(shape)
        var = _sum_over_replicas(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def global_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm of ``module`` by one over the global batch: ``SyncBatchNorm`` on
    CUDA, ``GlobalBatchNorm`` elsewhere. Parameters and buffers are kept (same objects)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine).to(
            module.weight.device if module.affine else "cpu"
        )
        out.track_running_stats = module.track_running_stats
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, global_batchnorm(child, device_type))
    return module


@dataclass
class ShardedData:
    """This worker's slice of every global training batch; evaluation sees the whole split.

    Every worker draws the same global batch sequence (same seed), so slices never overlap."""

    data: Data
    rank: int
    world: int

    @property
    def info(self) -> DatasetInfo:
        """The whole dataset's static description."""
        return self.data.info

    def split_size(self, split: str) -> int:
        """Number of samples in the whole ``split``."""
        return self.data.split_size(split)

    def train_batches(
        self, batch_size: int, epoch_seed: int, augment: bool = False
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """This worker's slice of each global batch of ``batch_size``; a global batch smaller
        than the number of workers is skipped."""
        for x, y in self.data.train_batches(batch_size, epoch_seed, augment=augment):
            if x.shape[0] < self.world:
                continue
            yield x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole ``split`` in fixed order, as in one process."""
        return self.data.eval_batches(split, batch_size)


@dataclass(frozen=True)
class DataParallel(Parallelism):
    """A ``Trainer`` as replica ``rank`` of ``world`` (``Trainer(cfg, parallel=DataParallel(...))``;
    the process group must exist): DDP over the model with BatchNorm over the global batch, and
    this worker's slice of every global batch. Without ``sync_perturbation`` SAM's ascent
    gradient stays local to the replica (``no_sync``)."""

    rank: int
    world: int
    sync_perturbation: bool

    def shard(self, data: Data) -> ShardedData:
        """This worker's slice of every global training batch of ``data``."""
        return ShardedData(data, self.rank, self.world)

    def replicate(self, model: nn.Module, device: torch.device) -> Replica:
        """Global BatchNorm in ``model`` (in place), and DDP around it."""
        global_batchnorm(model, device.type)
        ddp = DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False,  # running statistics are global, hence equal on every replica
        )
        if self.sync_perturbation:
            return Replica(ddp)
        return Replica(ddp, ascent_sync=ddp.no_sync)
