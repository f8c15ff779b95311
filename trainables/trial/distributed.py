"""Multi-worker trials: one Tune trial training data-parallel (``trainables.engine.distributed``)
through Ray Train's TorchTrainer, its rank 0 writing the evidence and checkpoints and every rank
reporting each epoch (``TuneReportCallback`` forwards rank 0's metrics to the Tune trial)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from trainables.config import parse_config
from trainables.engine.distributed import DataParallel
from trainables.engine.loop import EpochRecord, Trainer, load_checkpoint, save_checkpoint
from trainables.layout import train_storage
from trainables.plugins import load_trial_plugins
from trainables.trial.hold import hold_if_asked
from trainables.trial.late import LATE_FRONT_KEY, LateEpochs
from trainables.trial.nodes import node_fields
from trainables.trial.outputs import (
    CHECKPOINT_FILE,
    TrialContext,
    epoch_metrics,
    record_epoch_outputs,
)


def _worker_device() -> None:
    """Make ``cuda`` mean this worker's GPU (Ray Train shows a worker every GPU of its node)."""
    if torch.cuda.is_available():
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())


def ddp_worker_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs for a multi-worker trial (see ``run_ddp_trial``)."""
    import ray
    import ray.train

    ctx: TrialContext = loop_config["ctx"]
    trial_id: str = loop_config["trial_id"]
    torch.set_num_threads(max(1, int(loop_config["cpus_per_worker"])))
    _worker_device()
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    load_trial_plugins(ctx.plugins)  # each Ray Train worker reads the settings itself
    cfg = parse_config(loop_config["settings"], where=f"trial {trial_id}")
    trainer = Trainer(cfg, parallel=DataParallel(rank, world, cfg.sync_perturbation))
    checkpoint = ray.train.get_checkpoint()  # the run's latest, also after a restarted trial
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_state_dict(load_checkpoint(Path(directory) / CHECKPOINT_FILE))
    node = node_fields()
    node_id = node["node_id"]
    late = LateEpochs(ctx, trial_id, trainer)  # rank 0 keeps the epochs; every rank tests

    def report(trainer: Trainer, record: EpochRecord) -> None:
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                record_epoch_outputs(trainer, record, ctx, trial_id)
            metrics = {**epoch_metrics(trainer, record, ctx), **node, "workers": world}
            if rank == 0:
                front = late.observe(trainer, record, metrics)
                if front is not None:
                    metrics[LATE_FRONT_KEY] = front
                save_checkpoint(trainer.state_dict(), Path(directory) / CHECKPOINT_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)
        if rank == 0:
            hold_if_asked(record.epoch, trial_id, node_id)

    trainer.fit(on_epoch=report, test_from=late.first)


def run_ddp_trial(
    settings: dict[str, Any], ctx: TrialContext, trial_id: str, workers: int, cpu: float, gpu: float
) -> None:
    """Inside a Tune trial: train with ``workers`` DDP replicas through Ray Train, forwarding
    every epoch's metrics to Tune. The Train run is named after the trial, so a restarted trial
    continues from that run's last checkpoint."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    storage_path, storage_filesystem = train_storage(ctx.study_uri)
    resources = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    trainer = TorchTrainer(
        ddp_worker_loop,
        train_loop_config={
            "settings": settings,
            "ctx": ctx,
            "trial_id": trial_id,
            "cpus_per_worker": cpu,
        },
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"{trial_id}-ddp",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),  # see study/tuner.py
        ),
    )
    trainer.fit()
