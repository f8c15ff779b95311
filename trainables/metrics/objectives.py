"""The metrics a study can optimise, each with its direction (known, never configured), its family
and the value a diverged trial is told (the worst it can take, so the sampler moves away)."""

from __future__ import annotations

import math

# name -> "max" or "min"
DIRECTIONS: dict[str, str] = {
    "val_accuracy": "max",
    "val_ece": "min",
    "val_adaece": "min",
    "val_smece": "min",
    "val_classwise_ece": "min",
    "val_ece_ts": "min",  # ECE after temperature scaling, cross-fitted on val's two halves
    "val_nll": "min",
    "val_brier": "min",
    "train_seconds": "min",  # training wall time so far (evaluation excluded)
    "epochs": "min",  # epochs trained
}
ACCURACY_METRICS = ("val_accuracy",)
CALIBRATION_METRICS = (
    "val_ece", "val_adaece", "val_smece", "val_classwise_ece", "val_ece_ts", "val_nll", "val_brier",
)  # fmt: skip
COST_METRICS = ("train_seconds", "epochs")
DEFAULT_METRICS = ("val_accuracy", "val_ece")
# -log of calibration.PROB_FLOOR (2**-24): the largest NLL a floored probability gives
_WORST_NLL = 24 * math.log(2)
# What a diverged trial reports for the objective metrics it cannot measure (costs are measured).
DIVERGED_METRICS: dict[str, float] = {
    "val_accuracy": 0.0,
    "val_ece": 1.0,
    "val_adaece": 1.0,
    "val_smece": 1.0,
    "val_classwise_ece": 1.0,
    "val_ece_ts": 1.0,
    "val_nll": _WORST_NLL,
    "val_brier": 2.0,
}


def signed(name: str, value: float) -> float:
    """``value`` of metric ``name`` turned so that higher is better."""
    return value if DIRECTIONS[name] == "max" else -value
