"""Deep ensembles without retraining: each configuration run with ``repeats: K >= 2`` seeds, as the
ensemble of its K models, built from what the trials stored (``study.storage.evidence`` reads it).

The ensemble's probabilities are the mean of its members' on every stored split. On test:
accuracy, ECE, adaptive ECE, smooth ECE, NLL (from the members' float32 ``true_prob``), Brier
score, signed over-confidence, and ECE after temperature scaling with one temperature fitted on
the ensemble's val probabilities. Averaging needs the members to hold the same samples, which
``data_seed`` gives (the splits drawn once for every seed): without it a test split drawn per seed
(``test_subset``) gives no ensemble (the reason is reported) and a val split drawn per seed no
temperature (``T`` and ``ECE (TS)`` are n/a). Evidence of more than ``MAX_PROBS_CLASSES`` classes
keeps no probability vectors, so it gives no ensemble either (reported the same way). On the OOD
splits: the detection sets' AUROC and AUPR (max probability and minus the entropy, test as the
positive class) and, for the corruption sets,
accuracy, ECE and ECE after scaling averaged over corruption x severity, as a trial computes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from study.analysis.compare import AT_BOUND, Configuration, Table
from study.storage.evidence import (
    NO_PROBS,
    PROB_FLOOR,
    StoredSplit,
    fitted_temperature,
    mean_split,
    missing_evidence_note,
    read_trial_splits,
    same_samples,
    split_metrics,
    with_temperature,
)
from study.storage.records import TRIAL_ID_ATTR
from trainables.errors import DataError
from trainables.evaluation.ood import aupr, auroc, negative_entropy
from trainables.evaluation.splits import detection_splits, ood_splits
from trainables.metrics import METRICS, calibration

CORRUPTION_METRICS = ("accuracy", "ece", "ece_ts")


@dataclass
class Ensemble(Configuration):
    """A configuration's seeds as one model: a table row with one value per metric."""

    metrics: dict[str, float] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        value = self.metrics.get(metric)
        return [value] if value is not None and math.isfinite(value) else []


class EnsembleUnavailable(DataError):
    """A configuration's seeds cannot be ensembled (one line: which and why)."""


def calibration_metrics(test: StoredSplit, val: StoredSplit | None) -> dict[str, float]:
    """The test metrics of an ensemble (``test_*``), ``temperature`` fitted on ``val`` and
    ``test_ece_ts`` (both NaN without a shared val split)."""
    temperature = math.nan if val is None else fitted_temperature(val)
    found = split_metrics(with_temperature(test, temperature))
    # each metric under the key its trials log it (test_<name>; the fitted T bare)
    metrics = {METRICS.get(k).test_key: v for k, v in found.items() if k != "classwise_ece"}
    if math.isfinite(temperature):
        metrics[AT_BOUND] = float(calibration.temperature_at_bound(temperature))
    return metrics


def ood_metrics(split: str, ood: StoredSplit, test: StoredSplit, temperature: float) -> dict:
    """A detection split's AUROC and AUPR against ``test`` (max probability, and minus the
    entropy), or a corruption set's means over corruption x severity."""
    if split in detection_splits():
        out = {
            f"{split}_auroc": auroc(test.confidence, ood.confidence),
            f"{split}_aupr": aupr(test.confidence, ood.confidence),
        }
        if test.probs is not None and ood.probs is not None:
            pos, neg = _negative_entropy(test.probs), _negative_entropy(ood.probs)
            out[f"{split}_auroc_entropy"] = auroc(pos, neg)
            out[f"{split}_aupr_entropy"] = aupr(pos, neg)
        return out
    scaled = with_temperature(ood, temperature)
    cells = [split_metrics(g, CORRUPTION_METRICS) for g in scaled.groups().values()]
    return {f"{split}_{m}": float(np.mean([c[m] for c in cells])) for m in CORRUPTION_METRICS}


def _negative_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``trainables.evaluation.ood.negative_entropy`` of stored probabilities (floored before the log)."""
    return negative_entropy(probs.clamp_min(PROB_FLOOR).log())


def _shared_mean(splits: Sequence[StoredSplit | None]) -> StoredSplit | None:
    """The members' mean where all stored the same samples, else None."""
    return mean_split(splits) if same_samples(splits) else None  # type: ignore[arg-type]


def ensemble_of(
    conf: Configuration, evidence: str, notes: list[str] | None = None
) -> Ensemble | None:
    """``conf``'s seeds as one ensemble (None: fewer than two seeds with test evidence); a seed
    whose evidence is missing or unreadable is left out, and why goes to ``notes``."""
    ids = [str(t.user_attrs.get(TRIAL_ID_ATTR, "")) for t in conf.trials]
    tests = read_trial_splits(evidence, conf.trials, "test", notes)
    members = [i for i in ids if i in tests]
    if len(members) < 2:
        return None
    if not same_samples([tests[i] for i in members]):
        raise EnsembleUnavailable(
            f"no ensemble of {conf.label}: its seeds were tested on different samples (a "
            "test_subset drawn per seed), so their predictions cannot be averaged; set data_seed "
            "to draw the splits once for every seed"
        )
    if any(tests[i].probs is None for i in members):
        raise EnsembleUnavailable(f"no ensemble of {conf.label}: {NO_PROBS}")
    test = mean_split([tests[i] for i in members])
    kept = [t for t in conf.trials if str(t.user_attrs.get(TRIAL_ID_ATTR, "")) in members]
    vals = read_trial_splits(evidence, kept, "val", notes)
    metrics = calibration_metrics(test, _shared_mean([vals.get(i) for i in members]))
    for split in ood_splits():
        parts = read_trial_splits(evidence, kept, split, notes)
        ood = _shared_mean([parts.get(i) for i in members])
        if ood is not None:
            metrics.update(ood_metrics(split, ood, test, metrics["temperature"]))
    return Ensemble(f"{conf.label} ensemble x {len(kept)}", conf.settings, kept, metrics)


def ensembles(
    confs: Sequence[Configuration], evidence: str, skipped: list[str] | None = None
) -> list[Ensemble]:
    """The ensemble of every configuration with two seeds or more, in the table's order; why a
    configuration has none goes to ``skipped`` (a missing evidence directory: one line)."""
    missing = missing_evidence_note(evidence, [t for c in confs for t in c.trials])
    if missing:
        if skipped is not None:
            skipped.append(missing)
        return []
    found = []
    for conf in confs:
        if len(conf.trials) < 2:
            continue
        try:
            ensemble = ensemble_of(conf, evidence, skipped)
        except EnsembleUnavailable as why:
            if skipped is not None:
                skipped.append(str(why))
            continue
        if ensemble is not None:
            found.append(ensemble)
    return found


def with_ensembles(
    tables: Sequence[Table], evidence: str, skipped: list[str] | None = None
) -> list[Table]:
    """``tables`` (``comparison_tables``) with a row per configuration's ensemble appended."""
    found = ensembles(tables[0].confs, evidence, skipped)
    return [Table([*table.confs, *found], table.columns) for table in tables]
