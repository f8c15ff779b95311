"""``study compare --calibrators``: every trial recalibrated after training by the post-hoc
calibrators of ``study.analysis.calibrators``, each fitted on the trial's own val evidence (its last epoch)
and applied to its test evidence and to every corruption split it stored, with no retraining.

Per calibrator (and ``none``, the stored probabilities themselves, so that before and after come
from the same float16 vectors): test accuracy (binning can move an argmax), ECE, smooth ECE and
NLL, and on a corruption split its ECE averaged over corruption x severity as a trial computes it
(``<split>_ece``) and per severity (``<split>_s<k>_ece``). Each is a column ``<metric>@<name>``
of a configuration's rows, so the paired differences to a baseline row are taken *after the same
calibrator*, seed by seed. A calibrator is fitted only on a val split of at least
``calibrators.min_val_samples`` samples: below it, that trial's values after it are n/a and a
note says which trials and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from optuna.trial import FrozenTrial

from study.analysis.calibrators import (
    CALIBRATORS,
    NAMES,
    SAMPLES_PER_PARAMETER,
    Calibrated,
    fit_calibrator,
    min_val_samples,
)
from study.analysis.compare import Column, Configuration, Table, split_title
from study.output import plural
from study.storage.evidence import (
    StoredSplit,
    missing_evidence_note,
    of_probs,
    read_trial_splits,
    split_metrics,
)
from study.storage.records import TRIAL_ID_ATTR
from trainables.config import SEVERITIES
from trainables.evaluation.splits import shift_splits
from trainables.metrics import METRICS, Metric

NONE = "none"
CORRUPTION_SPLITS = shift_splits()  # the built-in ones; shift_splits() holds a plugin's too


def posthoc_metrics() -> tuple[Metric, ...]:
    """The test metrics recomputed after each calibrator (``Metric.posthoc``: accuracy, ECE,
    smooth ECE and NLL), in registration order."""
    return tuple(m for m in METRICS.values() if m.posthoc)


def __getattr__(name: str) -> Any:
    if name == "TEST_METRICS":
        return tuple(m.name for m in posthoc_metrics())
    if name == "TITLES":
        return {m.name: m.title for m in posthoc_metrics()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Recalibrated(Configuration):
    """A configuration whose trials' values are those recomputed after each calibrator
    (``metrics``: trial number -> ``<metric>@<calibrator>`` -> value)."""

    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    # calibrator -> trial number -> (its val samples, the fewest that calibrator is fitted on)
    too_small: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)

    def value(self, trial: FrozenTrial, metric: str) -> float | None:
        found = self.metrics.get(trial.number, {}).get(metric)
        return found if found is not None and np.isfinite(found) else None


def _metrics(probs: np.ndarray, split: StoredSplit, names: Sequence[str]) -> dict[str, float]:
    return split_metrics(of_probs(torch.from_numpy(probs), split.labels, keys=split.keys), names)


def _apply(calibrator, split: StoredSplit) -> Calibrated:
    return calibrator(split.require_probs().numpy())


def trial_metrics(
    val: StoredSplit, test: StoredSplit, shifted: dict[str, StoredSplit], calibrators: Sequence[str]
) -> dict[str, float]:
    """``<metric>@<calibrator>`` of one trial: test's ``posthoc_metrics`` and each shifted split's
    mean and per-severity ECE, uncalibrated (``none``) and after each calibrator fitted on
    ``val``; a calibrator whose ``min_val_samples`` ``val`` does not reach is not fitted, and
    its values are absent (n/a in the tables)."""
    out: dict[str, float] = {}
    probs, labels = val.require_probs().numpy(), val.labels.numpy()
    fitted = {NONE: lambda p: Calibrated(p)}
    fitted.update(
        {
            n: fit_calibrator(n, probs, labels)
            for n in calibrators
            if len(labels) >= min_val_samples(n, probs.shape[1])
        }
    )
    for name, calibrator in fitted.items():
        names = [m.name for m in posthoc_metrics()]
        for metric, value in _metrics(_apply(calibrator, test).probs, test, names).items():
            out[f"test_{metric}@{name}"] = value
        for split, stored in shifted.items():
            cells = {
                key: _metrics(_apply(calibrator, group).probs, group, ("ece",))["ece"]
                for key, group in stored.groups().items()
            }
            out[f"{split}_ece@{name}"] = float(np.mean(list(cells.values())))
            for severity in sorted({s for _, s in cells}):
                values = [v for (_, s), v in cells.items() if s == severity]
                out[f"{split}_s{severity}_ece@{name}"] = float(np.mean(values))
    return out


def recalibrated(
    conf: Configuration, evidence: str, calibrators: Sequence[str], notes: list[str]
) -> Recalibrated:
    """``conf`` with every trial's metrics after each calibrator; a trial without val or test
    probabilities in its evidence is left out of them, and why goes to ``notes``."""
    vals = read_trial_splits(evidence, conf.trials, "val", notes)
    tests = read_trial_splits(evidence, conf.trials, "test", notes)
    shifted = {s: read_trial_splits(evidence, conf.trials, s, notes) for s in shift_splits()}
    metrics: dict[int, dict[str, float]] = {}
    too_small: dict[str, dict[int, tuple[int, int]]] = {}
    for trial in conf.trials:
        tune_id = str(trial.user_attrs.get(TRIAL_ID_ATTR, ""))
        val, test = vals.get(tune_id), tests.get(tune_id)
        if val is None or test is None or val.probs is None or test.probs is None:
            notes.append(
                f"trial {trial.number}: no val and test probabilities in its evidence; it is "
                "left out of the calibrated tables"
            )
            continue
        here = {s: found[tune_id] for s, found in shifted.items() if tune_id in found}
        here = {s: stored for s, stored in here.items() if stored.probs is not None}
        metrics[trial.number] = trial_metrics(val, test, here, calibrators)
        for name in calibrators:
            minimum = min_val_samples(name, val.require_probs().shape[1])
            if len(val.labels) < minimum:
                too_small.setdefault(name, {})[trial.number] = (len(val.labels), minimum)
    return Recalibrated(conf.label, conf.settings, conf.trials, metrics, too_small)


def too_small_notes(rows: Sequence[Recalibrated]) -> list[str]:
    """One note per calibrator (and minimum) that some trials' val splits were too small for:
    which trials, with how many val samples."""
    grouped: dict[tuple[str, int], dict[int, int]] = {}
    for row in rows:
        for name, trials in row.too_small.items():
            for number, (size, minimum) in trials.items():
                grouped.setdefault((name, minimum), {})[number] = size
    notes = []
    for (name, minimum), small in sorted(
        grouped.items(), key=lambda item: (CALIBRATORS.names().index(item[0][0]), item[0][1])
    ):
        trials = ", ".join(
            f"trial {n} ({plural(size, 'val sample')})" for n, size in sorted(small.items())
        )
        notes.append(
            f"{NAMES[name]} needs at least {minimum} val samples ({SAMPLES_PER_PARAMETER} per "
            f"parameter it fits), so it is n/a for {trials}"
        )
    return notes


def columns(confs: Sequence[Recalibrated], name: str) -> dict[str, Column]:
    """The columns after calibrator ``name``: test metrics, then each corruption split's mean
    ECE that any trial has and (CSV only) its ECE per severity."""
    found = {k for c in confs for m in c.metrics.values() for k in m}
    out = {
        f"{m.test_key}@{name}": Column(m.title, m.direction, m.percent) for m in posthoc_metrics()
    }
    for split in shift_splits():
        if f"{split}_ece@{name}" in found:
            out[f"{split}_ece@{name}"] = Column(f"{split_title(split)} ECE", "min")
        for severity in SEVERITIES:
            if f"{split}_s{severity}_ece@{name}" in found:
                title = f"{split_title(split)} s{severity} ECE"
                out[f"{split}_s{severity}_ece@{name}"] = Column(title, "min", csv_only=True)
    return out


def calibrated_tables(
    confs: Sequence[Configuration],
    evidence: str,
    calibrators: Sequence[str],
    notes: list[str],
) -> list[tuple[str, Table]]:
    """One table per calibrator, ``none`` first: (its name, the rows after it)."""
    missing = missing_evidence_note(evidence, [t for c in confs for t in c.trials])
    if missing:
        notes.append(missing)
        return []
    rows = [recalibrated(c, evidence, calibrators, notes) for c in confs]
    notes.extend(too_small_notes(rows))
    return [(n, Table(list(rows), columns(rows, n))) for n in (NONE, *calibrators)]
