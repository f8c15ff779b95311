"""Deep ensembles without retraining: each configuration run with ``repeats: K >= 2`` seeds, as the
ensemble of its K models, built from the per-sample probabilities the trials stored (the Parquet
evidence: float16, renormalised in float64 as the report does).

The ensemble's probabilities are the mean of its members' on every stored split. On test:
accuracy, ECE, adaptive ECE, smooth ECE, NLL, Brier score, signed over-confidence, and ECE after
temperature scaling with one temperature fitted on the ensemble's val probabilities. Averaging
needs the members to hold the same samples, which ``data_seed`` gives (the splits drawn once for
every seed): without it a test split drawn per seed (``test_subset``) gives no ensemble (the reason
is reported) and a val split drawn per seed no temperature (``T`` and ``ECE (TS)`` are n/a). On the OOD
splits: the SVHN AUROC (max probability, test as the positive class) and, for the corruption sets,
accuracy, ECE and ECE after scaling averaged over corruption x severity, as a trial computes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc
import torch

from study.compare import Configuration, Table
from study.trials import TRIAL_ID_ATTR
from trainables import calibration
from trainables.config import OOD_SPLITS
from trainables.evidence import open_evidence
from trainables.ood import auroc

N_BINS = 15
_KEY = ("corruption", "severity", "sample_id")
SVHN = "ood_svhn"


@dataclass
class Ensemble(Configuration):
    """A configuration's seeds as one model: a table row with one value per metric."""

    metrics: dict[str, float] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        value = self.metrics.get(metric)
        return [value] if value is not None and math.isfinite(value) else []


@dataclass(frozen=True)
class SplitProbs:
    """A split's rows in a fixed order: keys (corruption, severity, sample id), labels and
    float64 probabilities."""

    keys: list[tuple]
    labels: torch.Tensor
    probs: torch.Tensor

    def groups(self) -> dict[tuple, torch.Tensor]:
        """Row indices per (corruption, severity)."""
        out: dict[tuple, list[int]] = {}
        for i, key in enumerate(self.keys):
            out.setdefault(key[:2], []).append(i)
        return {k: torch.tensor(v) for k, v in out.items()}


def read_split(evidence: str, trial_id: str, split: str) -> SplitProbs | None:
    """The last evaluated epoch of ``trial_id``'s ``split`` evidence (None: not stored)."""
    try:
        dataset = open_evidence(evidence)
    except FileNotFoundError:  # a study that stored no evidence
        return None
    table = dataset.to_table(
        columns=["epoch", *_KEY, "label", "probs"],
        filter=(pc.field("trial_id") == trial_id) & (pc.field("split") == split),
    )
    if table.num_rows == 0:
        return None
    table = table.filter(pc.equal(table["epoch"], pc.max(table["epoch"])))
    frame = table.to_pandas().sort_values(list(_KEY), na_position="first", kind="stable")
    probs = torch.from_numpy(np.stack(frame["probs"].to_numpy()).astype(np.float64))
    probs = probs / probs.sum(dim=1, keepdim=True)
    columns = (frame[k].astype(object).where(frame[k].notna(), None).tolist() for k in _KEY)
    keys = list(zip(*columns, strict=True))
    return SplitProbs(keys, torch.from_numpy(frame["label"].to_numpy().astype(np.int64)), probs)


def mean_probs(members: Sequence[SplitProbs]) -> SplitProbs:
    """The members' average on the rows all of them stored (the same rows, normally)."""
    common = set(members[0].keys)
    for member in members[1:]:
        common &= set(member.keys)
    keys = [k for k in members[0].keys if k in common]
    stacked = []
    for member in members:
        index = {k: i for i, k in enumerate(member.keys)}
        stacked.append(member.probs[torch.tensor([index[k] for k in keys], dtype=torch.long)])
    first = {k: i for i, k in enumerate(members[0].keys)}
    labels = members[0].labels[torch.tensor([first[k] for k in keys], dtype=torch.long)]
    return SplitProbs(keys, labels, torch.stack(stacked).mean(dim=0))


def same_samples(members: Sequence[SplitProbs]) -> bool:
    """Whether every member holds the same samples (keys) with the same labels: a split drawn
    per seed (a ``test_subset``, the val split) differs, and its rows cannot be averaged."""
    first = members[0]
    return all(m.keys == first.keys and torch.equal(m.labels, first.labels) for m in members[1:])


class EnsembleUnavailable(ValueError):
    """A configuration's seeds cannot be ensembled (one line: which and why)."""


def calibration_metrics(test: SplitProbs, val: SplitProbs | None) -> dict[str, float]:
    """The test metrics of probabilities (``test_*``), ``temperature`` fitted on ``val`` and
    ``test_ece_ts`` (both NaN without a shared val split)."""
    p, y = test.probs, test.labels
    logp = p.clamp_min(calibration.PROB_FLOOR).log()
    temperature = math.nan
    if val is not None:
        temperature = calibration.fit_temperature(
            val.probs.clamp_min(calibration.PROB_FLOOR).log().float(), val.labels
        )
    out = {
        "test_accuracy": calibration.accuracy(p, y),
        "test_ece": calibration.ece(p, y, N_BINS),
        "test_adaece": calibration.adaptive_ece(p, y, N_BINS),
        "test_nll": calibration.nll(logp, y),
        "test_brier": calibration.brier(p, y),
        "test_overconfidence": calibration.overconfidence(p, y),
    }
    if val is not None:
        out["test_ece_ts"] = calibration.ece(calibration.scale_probs(p, temperature), y, N_BINS)
    metrics = {"test_ece_ts": math.nan, **{k: float(v) for k, v in out.items()}}
    metrics["test_smece"] = float(calibration.smooth_ece(p, y))
    metrics["temperature"] = float(temperature)
    return metrics


def ood_metrics(split: str, probs: SplitProbs, test: SplitProbs, temperature: float) -> dict:
    """SVHN's AUROC against ``test``, or a corruption set's means over corruption x severity."""
    if split == SVHN:
        value = auroc(test.probs.max(dim=1).values, probs.probs.max(dim=1).values)
        return {f"{split}_auroc": value}
    cells = []
    for index in probs.groups().values():
        p, y = probs.probs[index], probs.labels[index]
        cells.append(
            (
                float(calibration.accuracy(p, y)),
                float(calibration.ece(p, y, N_BINS)),
                float(calibration.ece(calibration.scale_probs(p, temperature), y, N_BINS))
                if math.isfinite(temperature)
                else math.nan,
            )
        )
    acc, ece, ece_ts = (float(np.mean(c)) for c in zip(*cells, strict=True))
    return {f"{split}_accuracy": acc, f"{split}_ece": ece, f"{split}_ece_ts": ece_ts}


def ensemble_of(conf: Configuration, evidence: str) -> Ensemble | None:
    """``conf``'s seeds as one ensemble (None: fewer than two seeds with test evidence)."""
    ids = [str(t.user_attrs.get(TRIAL_ID_ATTR, "")) for t in conf.trials]
    tests = [read_split(evidence, i, "test") for i in ids]
    members = [(i, s) for i, s in zip(ids, tests, strict=True) if s is not None]
    if len(members) < 2:
        return None
    if not same_samples([s for _, s in members]):
        raise EnsembleUnavailable(
            f"no ensemble of {conf.label}: its seeds were tested on different samples (a "
            "test_subset drawn per seed), so their predictions cannot be averaged; set data_seed "
            "to draw the splits once for every seed"
        )
    test = mean_probs([s for _, s in members])
    vals = [read_split(evidence, i, "val") for i, _ in members]
    shared = all(v is not None for v in vals) and same_samples(vals)  # type: ignore[arg-type]
    val = mean_probs(vals) if shared else None  # type: ignore[arg-type]
    metrics = calibration_metrics(test, val)
    for split in OOD_SPLITS:
        parts = [read_split(evidence, i, split) for i, _ in members]
        if all(p is not None for p in parts) and same_samples(parts):  # type: ignore[arg-type]
            metrics.update(ood_metrics(split, mean_probs(parts), test, metrics["temperature"]))  # type: ignore[arg-type]
    used = {i for i, _ in members}
    trials = [t for t in conf.trials if str(t.user_attrs.get(TRIAL_ID_ATTR, "")) in used]
    label = f"{conf.label} ensemble x {len(trials)}"
    return Ensemble(label, conf.settings, trials, metrics)


def ensembles(
    confs: Sequence[Configuration], evidence: str, skipped: list[str] | None = None
) -> list[Ensemble]:
    """The ensemble of every configuration with two seeds or more, in the table's order; why a
    configuration has none goes to ``skipped``."""
    found = []
    for conf in confs:
        if len(conf.trials) < 2:
            continue
        try:
            ensemble = ensemble_of(conf, evidence)
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
