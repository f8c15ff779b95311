"""One training run without Ray (``study train``): settings from a space and overrides, a
validated config, the epoch loop, its MLflow run and reliability diagram.

    from study.api.study.train import train

    result = train({"dataset": "digits", "epochs": 2}, space="paper-digits")
    result.final["test_ece"], result.run_id
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import TrainConfig
from trainables.engine.loop import EpochRecord, Trainer


@dataclass(frozen=True)
class TrainResult:
    """How a ``train()`` ended: ``completed`` or ``diverged``, the config it ran, the final
    (test, and OOD when the config has an ``ood`` section) metrics, the epochs it ran, its
    seconds and its MLflow run."""

    config: TrainConfig
    status: str
    final: dict[str, float]
    epochs: int
    seconds: float
    run_id: str
    tracking_uri: str
    history: list[dict[str, float]] = field(default_factory=list)
    reason: str = ""  # why it diverged (``trainables.engine.loop.diverged_reason``)


def train_settings(
    space: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings of one run: the fixed settings of ``space`` (a bundled name or a YAML file,
    read and validated by the space schema, its top-level ``ood`` section included), then
    ``overrides``. The space's plugins (and the installed ``sharpcal.plugins`` entry points)
    are imported first, so the settings may name their parts."""
    settings: dict[str, Any] = {}
    if space:
        from study.api.study import resolve

        settings.update(resolve(str(space)).fixed)  # its plugins imported before it is checked
    else:
        from study.api.study import user_errors
        from trainables.plugins import load_entry_points

        with user_errors():
            load_entry_points()
    settings.update(overrides or {})
    return settings


def train_config(
    space: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """``train_settings`` validated, the OOD files it reads checked (a Fashion-MNIST-C generated
    before must be unchanged); bad input is an ``InputError``."""
    from study.api.inputs import check_fashion_mnist_c
    from study.api.study import user_errors
    from trainables.config import parse_config
    from trainables.evaluation.ood import check_ood_config

    with user_errors():
        cfg = parse_config(train_settings(space, overrides), where="study train")
        check_ood_config(cfg)
        check_fashion_mnist_c(cfg)
    return cfg


def train(
    overrides: dict[str, Any] | None = None,
    space: str | Path | None = None,
    *,
    experiment: str = "study-train",
    tracking_uri: str | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    on_epoch: Callable[[Trainer, EpochRecord], None] | None = None,
    on_batch: Callable[[], None] | None = None,
) -> TrainResult:
    """Train once (no Ray) from the defaults, ``space``'s fixed settings and ``overrides``,
    logging one MLflow run (params, per-epoch metrics, test metrics, status and
    ``reliability.png``) in ``experiment``. Every bad input is an ``InputError`` before
    training starts. ``on_start`` sees the built trainer, ``on_epoch`` each epoch's record
    (after it is logged), ``on_batch`` each step: the command prints through them."""
    from study.api.inputs import check_tracking_reachable, check_tracking_uri
    from study.api.study import user_errors
    from study.tracking.runs import TrainRunLogger, default_tracking_uri

    with user_errors():
        check_tracking_uri(tracking_uri)
        check_tracking_reachable(tracking_uri or default_tracking_uri())
    cfg = train_config(space, overrides)
    with user_errors():
        trainer = Trainer(cfg)
        tracker = TrainRunLogger(
            tracking_uri or default_tracking_uri(), experiment, cfg.model_dump()
        )
    if on_start is not None:
        on_start(trainer)

    def epoch_done(trainer: Trainer, record: EpochRecord) -> None:
        if record.final and cfg.ood is not None and not trainer.diverged:
            _evaluate_ood(trainer, record)
        tracker.epoch({**record.flat(), **record.final}, record.epoch)
        if on_epoch is not None:
            on_epoch(trainer, record)

    try:
        result = trainer.fit(on_epoch=epoch_done, on_batch=on_batch)
    except BaseException:  # a crash or Ctrl-C: the run is not left "running"
        tracker.finish("failed", {})
        raise
    files: dict[str, bytes] = {}
    if result.status == "completed":
        from trainables.evaluation.plots import reliability_png

        logits, labels = trainer.predictions("test")
        files["reliability.png"] = reliability_png(logits, labels, result.final["temperature"])
    tracker.finish(result.status, files)
    return TrainResult(
        cfg,
        result.status,
        dict(result.final),
        trainer.epochs_done,
        result.seconds,
        tracker.run_id,
        tracker.tracking_uri,
        list(result.history),
        result.reason,
    )


def _evaluate_ood(trainer: Trainer, record: EpochRecord) -> None:
    """The ``ood`` section's metrics of the final model join ``record.final``."""
    from trainables.evaluation.ood import evaluate_ood

    assert trainer.cfg.ood is not None
    for ood in evaluate_ood(trainer, trainer.cfg.ood, record.final["temperature"]):
        record.final.update(ood.metrics)
