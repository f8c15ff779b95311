"""What a trial reports and writes after each epoch: its metrics, evidence, figures and OOD results.

Shared by the one-process trial (``trainables.trial.trainable``) and the multi-worker one
(``trainables.engine.distributed``); it imports neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainables.data.datasets import SPLITS, dataset_source
from trainables.engine.loop import EpochRecord, Trainer
from trainables.evaluation import evidence
from trainables.evaluation.ood import evaluate_ood, ood_evidence_table
from trainables.evaluation.plots import reliability_png
from trainables.layout import evidence_uri, resolve_fs, trial_artifacts_uri
from trainables.metrics.objectives import DEFAULT_METRICS, diverged_metrics

CHECKPOINT_FILE = "state.pt"
RELIABILITY_FILE = "reliability.png"
EVIDENCE_SPLITS = ("val", "test")


@dataclass(frozen=True)
class TrialContext:
    """Study-level facts a trial needs, fixed for the whole study."""

    study: str
    objective_weight: float | None  # None for a Pareto study
    cpus_per_trial: float
    study_uri: str = ""  # the study directory (local path or s3://...); "" writes no files
    evidence: str = "last"  # per-sample evidence of the last epoch only, or of "every" epoch
    workers: int = (
        1  # >1: data-parallel over that many Ray Train workers (trainables/distributed.py)
    )
    gpus_per_worker: float = 0.0
    objective_metrics: tuple[str, ...] = DEFAULT_METRICS  # a weighted objective's two metrics
    # the study's plugins (``Space.plugins``), imported before the trial reads its settings; a
    # context pickled before plugins existed reads the class default
    plugins: tuple[str, ...] = ()
    # late checkpoints: the last fraction of a trial's epochs whose own val front is kept
    # (``trainables.trial.late``); 0: off
    late_fraction: float = 0.0


def write_epoch_evidence(
    trainer: Trainer, ctx: TrialContext, trial_id: str, epoch: int, temperature: float
) -> None:
    """The per-sample evidence of val and test (the splits it has) at ``epoch``."""
    for split in EVIDENCE_SPLITS:
        if trainer.data.split_size(split) == 0:
            continue
        logits, labels = trainer.predictions(split)
        table = evidence.evidence_table(
            logits, labels, study=ctx.study, epoch=epoch, temperature=temperature
        )
        evidence.write_evidence(table, evidence_uri(ctx.study_uri), trial_id, split, epoch)


def write_trial_files(
    trainer: Trainer, record: EpochRecord, ctx: TrialContext, trial_id: str
) -> None:
    """Evidence of val and test for this epoch and, after the last one, the reliability diagram."""
    last = bool(record.final)
    if not ctx.study_uri or trainer.diverged or not (last or ctx.evidence == "every"):
        return
    temperature = record.final.get("temperature") or trainer.fit_temperature()
    write_epoch_evidence(trainer, ctx, trial_id, record.epoch, temperature)
    if last:
        logits, labels = trainer.predictions("test")
        png = reliability_png(logits, labels, temperature, title="test")
        fs, root = resolve_fs(trial_artifacts_uri(ctx.study_uri, trial_id))
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{RELIABILITY_FILE}") as out:
            out.write(png)


def run_ood(trainer: Trainer, record: EpochRecord, ctx: TrialContext, trial_id: str) -> None:
    """After the last epoch, evaluate the ``ood`` section once: its metrics join ``record.final``
    (so the trial reports them) and each OOD split's evidence is written."""
    if trainer.cfg.ood is None or trainer.diverged or not record.final:
        return
    temperature = record.final["temperature"]
    for result in evaluate_ood(trainer, trainer.cfg.ood, temperature):
        record.final.update(result.metrics)
        if ctx.study_uri:
            table = ood_evidence_table(
                result, study=ctx.study, epoch=record.epoch, temperature=temperature
            )
            uri = evidence_uri(ctx.study_uri)
            evidence.write_evidence(table, uri, trial_id, result.split, record.epoch)


def record_epoch_outputs(
    trainer: Trainer, record: EpochRecord, ctx: TrialContext, trial_id: str
) -> None:
    """After an epoch: OOD evaluation (last epoch; its metrics join ``record.final``), evidence
    and figures. Done by the one process that writes (rank 0 of a multi-worker trial)."""
    run_ood(trainer, record, ctx, trial_id)
    write_trial_files(trainer, record, ctx, trial_id)


def objective_value(
    metrics: dict[str, Any], weight: float, names: tuple[str, ...] = DEFAULT_METRICS
) -> float:
    """The weighted objective ``names[0] - weight * names[1]`` (default val_accuracy, val_ece)."""
    accuracy, calibration = names
    return metrics[accuracy] - weight * metrics[calibration]


def dataset_input(trainer: Trainer) -> dict[str, Any]:
    """The trial's data set: name, source, digest of its source files and split sizes (what the
    driver logs as the MLflow run's dataset input)."""
    cfg = trainer.cfg
    source, digest = dataset_source(cfg.dataset, cfg.data_root, cfg.split_seed, cfg.synthetic_size)
    sizes = {split: trainer.data.split_size(split) for split in SPLITS}
    return {"name": cfg.dataset, "source": source, "digest": digest, **sizes}


def epoch_metrics(trainer: Trainer, record: EpochRecord, ctx: TrialContext) -> dict[str, Any]:
    """What a trial reports after an epoch (test metrics too, after the last one) and the data
    set it trains on (its digest is computed once per process)."""
    metrics: dict[str, Any] = record.flat()
    metrics["dataset"] = dataset_input(trainer)
    metrics["epochs_total"] = trainer.cfg.last_epoch
    metrics["epochs"] = record.epoch  # trained so far: the "epochs" cost objective
    metrics["diverged"] = trainer.diverged
    metrics["at_chance"] = trainer.at_chance  # the chance guard stopped it (diverged too)
    if trainer.diverged:
        # the worst value of each objective metric, so that Optuna's samplers rank its region
        # last instead of ignoring it (as they would ignore a FAIL)
        metrics.update(diverged_metrics())
        metrics["train_loss"] = (
            math.inf if not math.isfinite(record.train_loss) else record.train_loss
        )
    metrics.update(record.final)
    if ctx.objective_weight is not None:
        metrics["objective"] = objective_value(metrics, ctx.objective_weight, ctx.objective_metrics)
    return metrics
