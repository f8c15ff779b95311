"""The Ray Tune function trainable: one trial = one ``Trainer`` run, reported and checkpointed per epoch."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables.config import parse_config
from trainables.engine.loop import EpochRecord, Trainer, load_checkpoint, save_checkpoint
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


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Run one trial from its flat settings (after importing the study's plugins, whose parts
    its settings may name); resume from Tune's checkpoint when there is one."""
    load_trial_plugins(ctx.plugins)
    cfg = parse_config(config, where=f"trial of study {ctx.study}")
    if ctx.workers > 1:
        from trainables.trial.distributed import run_ddp_trial

        trial_id = tune.get_context().get_trial_id()
        run_ddp_trial(config, ctx, trial_id, ctx.workers, ctx.cpus_per_trial, ctx.gpus_per_worker)
        return
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    trainer = Trainer(cfg)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_state_dict(load_checkpoint(Path(directory) / CHECKPOINT_FILE))

    trial_id = tune.get_context().get_trial_id()

    node = node_fields()
    node_id = node["node_id"]
    late = LateEpochs(ctx, trial_id, trainer)

    def report(trainer: Trainer, record: EpochRecord) -> None:
        record_epoch_outputs(trainer, record, ctx, trial_id)
        metrics = {**epoch_metrics(trainer, record, ctx), **node}
        front = late.observe(trainer, record, metrics)
        if front is not None:
            metrics[LATE_FRONT_KEY] = front
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(trainer.state_dict(), Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        hold_if_asked(record.epoch, trial_id, node_id)

    trainer.fit(on_epoch=report, test_from=late.first)
