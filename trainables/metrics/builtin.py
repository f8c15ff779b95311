"""sharpcal's own metrics, registered exactly as a plugin's are. Their registration order is
the order of ``study compare``'s columns and of the objectives an error lists.

The maths is in ``trainables.metrics.calibration`` (imported on first use: importing this module
imports no torch). From stored evidence the top-label metrics read the float32 ``confidence`` and
``correct`` columns (``StoredSplit.top_label``), NLL ``true_prob``, ECE after scaling
``confidence_ts``; only Brier and classwise ECE need the full probability vectors.
"""

from __future__ import annotations

import math
from typing import Any

from trainables.metrics.base import N_BINS, Metric, SplitOutputs, register_metric

# -log of calibration.PROB_FLOOR (2**-24): the largest NLL a floored probability gives
WORST_NLL = 24 * math.log(2)


def _cal() -> Any:
    from trainables.metrics import calibration

    return calibration


class _TopLabel(Metric):
    """A metric of each row's confidence and correctness only: from evidence, exactly from the
    stored float32 ``confidence``/``correct`` columns (``top_label``)."""

    needs_probs = False

    def from_evidence(self, split: Any) -> float:
        return float(self.compute(*split.top_label()))


@register_metric("accuracy")
class Accuracy(_TopLabel):
    title = "Accuracy"
    long_title = "accuracy"
    description = "Fraction of samples whose argmax is the label."
    direction = "max"
    role = "accuracy"
    diverged = 0.0
    paired = True
    posthoc = True

    def compute(self, probs: Any, labels: Any) -> Any:
        return _cal().accuracy(probs, labels)

    def from_outputs(self, out: SplitOutputs) -> Any:
        return _cal().accuracy(out.logits, out.labels)


@register_metric("ece")
class Ece(_TopLabel):
    title = "ECE"
    description = "Expected calibration error of the top label, 15 equal-width bins."
    reference = "Naeini et al. 2015; Guo et al. 2017"
    role = "calibration"
    diverged = 1.0
    paired = True
    posthoc = True

    def compute(self, probs: Any, labels: Any) -> Any:
        return _cal().ece(probs, labels, N_BINS)

    def from_outputs(self, out: SplitOutputs) -> Any:
        return _cal().ece(out.probs, out.labels, out.n_bins)


@register_metric("adaece")
class AdaptiveEce(_TopLabel):
    title = "AdaECE"
    long_title = "adaptive ECE"
    description = "ECE over equal-mass bins."
    reference = "Nguyen & O'Connor 2015; Mukhoti et al. 2020"
    role = "calibration"
    diverged = 1.0

    def compute(self, probs: Any, labels: Any) -> Any:
        return _cal().adaptive_ece(probs, labels, N_BINS)

    def from_outputs(self, out: SplitOutputs) -> Any:
        return _cal().adaptive_ece(out.probs, out.labels, out.n_bins)


@register_metric("smece")
class SmoothEce(_TopLabel):
    title = "smECE"
    long_title = "smooth ECE"
    description = "Smooth ECE: kernel-smoothed calibration error, no bins (relplot)."
    reference = "Błasiok & Nakkiran 2023"
    role = "calibration"
    diverged = 1.0
    posthoc = True

    def compute(self, probs: Any, labels: Any) -> float:
        return _cal().smooth_ece(probs, labels)


@register_metric("classwise_ece")
class ClasswiseEce(Metric):
    title = "Classwise ECE"
    long_title = "classwise ECE"
    description = "ECE of every class's probability, averaged over classes."
    reference = "Kull et al. 2019"
    role = "calibration"
    diverged = 1.0
    compare = "objective"

    def compute(self, probs: Any, labels: Any) -> Any:
        return _cal().classwise_ece(probs, labels, probs.shape[1], N_BINS)

    def from_outputs(self, out: SplitOutputs) -> Any:
        return _cal().classwise_ece(out.probs, out.labels, out.num_classes, out.n_bins)


@register_metric("ece_ts")
class EceTs(_TopLabel):
    """On test: ECE at the val-fitted temperature. On val (the objective ``val_ece_ts``), the
    trial logs it cross-fitted on val's two halves (``calibration.cross_fitted_ece_ts``)."""

    title = "ECE (TS)"
    long_title = "ECE after TS"
    description = "ECE after temperature scaling (T fitted on val)."
    reference = "Guo et al. 2017"
    role = "calibration"
    diverged = 1.0
    needs_temperature = True
    val_by_trial = True  # Trainer.evaluate_val: cross-fitted on val's two halves
    paired = True

    def compute(self, probs: Any, labels: Any) -> Any:
        return _cal().ece(probs, labels, N_BINS)

    def from_outputs(self, out: SplitOutputs) -> Any:
        assert out.temperature is not None
        return _cal().ece((out.logits / out.temperature).softmax(dim=1), out.labels, out.n_bins)

    def from_evidence(self, split: Any) -> float:
        if not math.isfinite(split.temperature):
            return math.nan
        return float(_cal().ece(*split.top_label(scaled=True), N_BINS))


@register_metric("overconfidence")
class Overconfidence(_TopLabel):
    title = "Over-conf."
    long_title = "over-confidence"
    description = "Mean confidence minus accuracy (> 0: overconfident)."
    direction = None
    signed = True

    def compute(self, probs: Any, labels: Any) -> Any:
        return _cal().overconfidence(probs, labels)


@register_metric("temperature")
class Temperature(Metric):
    """The temperature fitted on val (the trial logs it bare, with ``temperature_at_bound``)."""

    title = "T"
    long_title = "temperature"
    description = "The temperature fitted on val's logits, bounded to [0.05, 20]."
    direction = None
    percent = False
    scope = "fit"
    in_report = False

    def from_evidence(self, split: Any) -> float:
        return split.temperature

    def format(self, value: float) -> str:
        return f"{value:.3f}"


@register_metric("nll")
class Nll(Metric):
    title = "NLL"
    description = "Mean negative log-likelihood of the label."
    role = "calibration"
    diverged = WORST_NLL
    percent = False
    needs_probs = False
    posthoc = True

    def compute(self, probs: Any, labels: Any) -> Any:
        cal = _cal()
        return cal.nll(probs.clamp_min(cal.PROB_FLOOR).log(), labels)

    def from_outputs(self, out: SplitOutputs) -> Any:
        return _cal().nll(out.logits, out.labels)

    def from_evidence(self, split: Any) -> float:
        return float(-split.true_prob.double().log().mean())


@register_metric("brier")
class Brier(Metric):
    title = "Brier"
    description = "Brier score: squared error of the probability vector."
    reference = "Brier 1950"
    role = "calibration"
    diverged = 2.0
    percent = False

    def compute(self, probs: Any, labels: Any) -> Any:
        return _cal().brier(probs, labels)


@register_metric("nll_ts")
class NllTs(Metric):
    title = "NLL (TS)"
    long_title = "NLL after TS"
    description = "NLL at the val-fitted temperature (test only)."
    percent = False
    needs_temperature = True
    stored = False
    compare = "never"
    in_report = False

    def from_outputs(self, out: SplitOutputs) -> Any:
        assert out.temperature is not None
        return _cal().nll(out.logits / out.temperature, out.labels)


@register_metric("train_seconds")
class TrainSeconds(Metric):
    title = "Train s"
    long_title = "training time"
    description = "Training wall time so far, evaluation excluded."
    unit = "s"
    percent = False
    role = "cost"
    scope = "cost"
    stored = False
    compare = "objective"
    in_report = False


@register_metric("epochs")
class Epochs(Metric):
    title = "Epochs"
    long_title = "epochs"
    description = "Epochs trained."
    unit = "epochs"
    percent = False
    role = "cost"
    scope = "cost"
    stored = False
    compare = "objective"
    in_report = False
