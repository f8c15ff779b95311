"""The one reader of what trials stored: their per-sample Parquet evidence
(``trainables.evaluation.evidence`` writes it), and the metrics recomputed from it for the report, the
ensembles and ``study compare``.

Every row holds float32 columns whatever the number of classes: ``confidence`` (max probability),
``correct`` (argmax == label), ``true_prob`` (the label's probability), ``confidence_ts`` (max
probability after the trial's temperature) and ``temperature``. The whole probability vector,
``probs``, is float16 and stored only up to ``MAX_PROBS_CLASSES`` classes. So each metric is read
from the most exact column that holds it: accuracy from ``correct``; ECE, adaptive ECE, smooth ECE
and over-confidence from ``confidence`` and ``correct``; ECE after scaling from
``confidence_ts``; NLL from ``true_prob``. Only what needs the full vector comes from ``probs``:
Brier, classwise ECE, an ensemble (the members' mean) and a temperature refitted on it. Without
``probs`` those are NaN, and an ensemble is refused (``NoProbabilities``) with ``NO_PROBS`` as
the reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import torch
from optuna.trial import FrozenTrial

from study.storage.records import EPOCH_ATTR, STATUS_ATTR, TRIAL_ID_ATTR
from trainables.errors import DataError
from trainables.evaluation.evidence import MAX_PROBS_CLASSES, open_evidence
from trainables.layout import EVIDENCE_DIR, partition_uri, resolve_fs
from trainables.metrics import METRICS, calibration
from trainables.metrics.base import N_BINS as METRIC_BINS
from trainables.metrics.base import stored_metrics

N_BINS = METRIC_BINS  # every binned metric recomputed from evidence (the trials' own default too)
# A float16 probability stored as 0 was below 2**-25; calibration.PROB_FLOOR (2**-24, float16's
# smallest positive value) is what it is read as before a log.
PROB_FLOOR = calibration.PROB_FLOOR
# The floor of the float32 columns (true_prob): float32's smallest positive value, 2**-149.
FLOAT32_FLOOR = float(np.finfo(np.float32).smallest_subnormal)
KEY = ("corruption", "severity", "sample_id")  # a row's identity within its split
COLUMNS = ["trial_id", "epoch", *KEY, "label", "pred", "correct", "confidence", "confidence_ts"]
COLUMNS += ["true_prob", "temperature", "probs"]
NO_PROBS = f"evidence keeps probabilities only up to {MAX_PROBS_CLASSES} classes"


class NoProbabilities(DataError):
    """Evidence without the probability vectors was asked for what needs them."""


@dataclass(frozen=True)
class StoredSplit:
    """One split's rows (one trial's last evaluated epoch, or an ensemble's mean), ordered by
    ``KEY``. ``probs`` is None where the evidence has no probability vectors."""

    keys: tuple[tuple, ...]  # (corruption, severity, sample_id) of each row
    labels: torch.Tensor  # (N,) int64
    pred: torch.Tensor  # (N,) int64: the argmax
    correct: torch.Tensor  # (N,) bool: pred == label
    confidence: torch.Tensor  # (N,) max probability
    confidence_ts: torch.Tensor  # (N,) max probability after temperature scaling (NaN: no T)
    true_prob: torch.Tensor  # (N,) the label's probability, floored
    temperature: float  # NaN: none
    probs: torch.Tensor | None  # (N, C) float64, rows renormalised

    @property
    def sample_ids(self) -> np.ndarray:
        return np.array([k[2] for k in self.keys], dtype=np.int64)

    def require_probs(self) -> torch.Tensor:
        """The probability vectors, or ``NoProbabilities``."""
        if self.probs is None:
            raise NoProbabilities(NO_PROBS)
        return self.probs

    def scaled_probs(self) -> torch.Tensor:
        """``probs ** (1 / T)`` renormalised: the temperature-scaled probabilities."""
        return calibration.scale_probs(self.require_probs(), self.temperature)

    def top_label(self, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and labels with each row's confidence (after scaling: ``scaled``) and
        correctness, for the top-label metrics of ``trainables.metrics.calibration``.

        Those metrics read only a row's max and whether its argmax is the label, so the two
        columns ``[confidence, -1]`` with label 0 for a correct row and 1 for a wrong one give
        them exactly, without the full vector (and in the stored float32).
        """
        confidence = self.confidence_ts if scaled else self.confidence
        scores = torch.stack([confidence, torch.full_like(confidence, -1.0)], dim=1)
        return scores, (~self.correct).long()

    def rows(self, index: torch.Tensor) -> StoredSplit:
        """The rows at ``index``."""
        keys = tuple(self.keys[i] for i in index.tolist())
        tensors = {
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, keys=keys, **tensors)

    def groups(self) -> dict[tuple, StoredSplit]:
        """The rows of each (corruption, severity)."""
        found: dict[tuple, list[int]] = {}
        for i, key in enumerate(self.keys):
            found.setdefault(key[:2], []).append(i)
        return {k: self.rows(torch.tensor(v)) for k, v in found.items()}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_splits(evidence: str, trial_ids: Iterable[str], split: str) -> dict[str, StoredSplit]:
    """``split`` of each trial in one scan: its last evaluated epoch; trials without any are
    left out (a study that stored no evidence gives {})."""
    ids = sorted({i for i in trial_ids if i})
    if not ids:
        return {}
    try:
        table = open_evidence(evidence).to_table(
            columns=COLUMNS, filter=(ds.field("split") == split) & ds.field("trial_id").isin(ids)
        )
    except (FileNotFoundError, pa.ArrowException):
        return {}
    found = {i: _trial_split(table.filter(pc.equal(table["trial_id"], i))) for i in ids}
    return {i: s for i, s in found.items() if s is not None}


def read_trial_splits(
    evidence: str, trials: Iterable[FrozenTrial], split: str, notes: list[str] | None = None
) -> dict[str, StoredSplit]:
    """``split`` of each trial (by Tune id) at the last epoch it ran. A trial is left out, and
    why goes to ``notes`` (one line naming it), when a file of its evidence cannot be read, when
    a file of it is another study's or another trial's (``foreign_file``), when the evidence of
    its last epoch is gone (an earlier epoch's is never read in its place) or, for a completed
    trial's test split, when it has none; a missing evidence directory is one note. A diverged
    trial or one without a Tune id stored nothing and is left out silently."""
    wanted = {str(t.user_attrs.get(TRIAL_ID_ATTR, "")): t for t in trials}
    wanted.pop("", None)
    say = notes.append if notes is not None else (lambda _: None)
    if not wanted:
        return {}
    try:
        dataset = open_evidence(evidence)
    except (FileNotFoundError, pa.ArrowException):
        note = missing_evidence_note(evidence, wanted.values()) if split == "test" else None
        if note:
            say(note)
        return {}
    found: dict[str, StoredSplit] = {}
    study = evidence_study(evidence)
    for tune_id, trial in wanted.items():
        stored, why = _read_trial(dataset, evidence, tune_id, trial, split, study)
        if why:
            say(f"trial {trial.number} ({tune_id}): {why}; it is left out")
        elif stored is not None:
            found[tune_id] = stored
    return found


def missing_evidence_note(evidence: str, trials: Iterable[FrozenTrial]) -> str | None:
    """One line when the evidence directory is gone and ``trials`` stored test evidence in it
    (None: it is there, or none of them stored any)."""
    fs, root = resolve_fs(evidence)
    if fs.get_file_info(root).type == pafs.FileType.Directory:
        return None
    expected = sorted(t.number for t in trials if _has_test(t))
    if not expected:
        return None
    return (
        f"no evidence directory {evidence}: trials {', '.join(map(str, expected))} are left "
        "out of what is recomputed from the evidence"
    )


def _has_test(trial: FrozenTrial) -> bool:
    """Whether the trial stored test evidence: it completed (a diverged one stores none)."""
    return trial.user_attrs.get(STATUS_ATTR) == "completed"


def evidence_study(evidence: str) -> str | None:
    """The study an evidence directory belongs to: the name of the study directory holding it
    (``<storage>/<name>/evidence``, ``trainables.layout``); None for a directory not so named,
    whose rows are then not checked against a study."""
    parts = evidence.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and parts[-1] == EVIDENCE_DIR and parts[-2] else None


def foreign_file(
    dataset: ds.Dataset, where: ds.Expression, tune_id: str, split: str, study: str | None
) -> str | None:
    """Why a file of trial ``tune_id``'s ``split`` (rows ``where``) is not that trial's: its
    ``study`` column names another study than ``study`` (e.g. a file copied from another
    study's directory), or it carries its own ``trial_id`` column naming another trial (the
    partition in its path would hide it). None when every file is the trial's own."""
    import pyarrow.parquet as pq

    for fragment in sorted(dataset.get_fragments(filter=where), key=lambda f: f.path):
        # the file itself: a dataset (or a fragment) shows the partition's trial_id instead
        with dataset.filesystem.open_input_file(fragment.path) as stream:
            file = pq.ParquetFile(stream)
            columns = [c for c in ("study", "trial_id") if c in file.schema_arrow.names]
            if not columns:
                continue
            table = file.read(columns=columns)
        if "trial_id" in columns:
            others = set(table["trial_id"].unique().to_pylist()) - {tune_id, None}
            if others:
                return (
                    f"its {split} evidence file {fragment.path} holds rows of trial "
                    f"{_listed(others)}, not {tune_id!r}"
                )
        if "study" in columns and study is not None:
            others = set(table["study"].unique().to_pylist()) - {study, None}
            if others:
                return (
                    f"its {split} evidence file {fragment.path} is study {_listed(others)}'s, "
                    f"not {study!r}'s (copied from another study?)"
                )
    return None


def _listed(values: Iterable[object]) -> str:
    return ", ".join(repr(v) for v in sorted(map(str, values)))


def _read_trial(
    dataset: ds.Dataset,
    evidence: str,
    tune_id: str,
    trial: FrozenTrial,
    split: str,
    study: str | None = None,
) -> tuple[StoredSplit | None, str | None]:
    """One trial's split, or why it cannot be used (``study``: the study it must belong to); a
    trial shown at a kept epoch (``EPOCH_ATTR``) reads that epoch's."""
    where = (ds.field("split") == split) & (ds.field("trial_id") == tune_id)
    if EPOCH_ATTR in trial.user_attrs:
        where &= ds.field("epoch") == int(trial.user_attrs[EPOCH_ATTR])
    try:
        table = dataset.to_table(columns=COLUMNS, filter=where)
        foreign = foreign_file(dataset, where, tune_id, split, study) if table.num_rows else None
    except (pa.ArrowException, OSError) as err:
        return None, _unreadable(evidence, tune_id, split, err)
    if foreign:
        return None, foreign
    if table.num_rows == 0:
        if split == "test" and _has_test(trial):
            where = partition_uri(evidence, tune_id, split)
            return None, f"its test evidence is missing (nothing under {where})"
        return None, None
    last = trial.user_attrs.get("epoch")
    stored = int(pc.max(table["epoch"]).as_py())
    if isinstance(last, (int, float)) and stored < int(last):
        return None, (
            f"the {split} evidence of its last epoch {int(last)} is missing (stored up to epoch "
            f"{stored}, under {partition_uri(evidence, tune_id, split)})"
        )
    return _trial_split(table), None


def _unreadable(evidence: str, tune_id: str, split: str, err: Exception) -> str:
    """Which file of a trial's split cannot be read, and why."""
    import pyarrow.parquet as pq

    fs, root = resolve_fs(partition_uri(evidence, tune_id, split))
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (pa.ArrowException, OSError):
        infos = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File or info.base_name.startswith(("_", ".")):
            continue
        try:
            pq.read_table(info.path, filesystem=fs)
        except (pa.ArrowException, OSError) as bad:
            return f"its evidence file {info.path} is unreadable ({_first_line(bad)})"
    return f"its {split} evidence under {root} is unreadable ({_first_line(err)})"


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def read_split(evidence: str, trial_id: str, split: str) -> StoredSplit | None:
    """``trial_id``'s ``split`` at its last evaluated epoch (None: not stored)."""
    return read_splits(evidence, [trial_id], split).get(trial_id)


def _tensor(column: pa.ChunkedArray, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(column.to_numpy(zero_copy_only=False), dtype=dtype)


def _trial_split(rows: pa.Table) -> StoredSplit | None:
    if rows.num_rows == 0:
        return None
    rows = rows.filter(pc.equal(rows["epoch"], pc.max(rows["epoch"])))
    rows = rows.sort_by([(k, "ascending") for k in KEY])
    keys = tuple(zip(*(rows[k].to_pylist() for k in KEY), strict=True))
    true_prob = _tensor(rows["true_prob"], torch.float32)
    return StoredSplit(
        keys=keys,
        labels=_tensor(rows["label"], torch.int64),
        pred=_tensor(rows["pred"], torch.int64),
        correct=_tensor(rows["correct"], torch.bool),
        confidence=_tensor(rows["confidence"], torch.float32),
        confidence_ts=_tensor(rows["confidence_ts"], torch.float32),
        true_prob=true_prob.clamp_min(FLOAT32_FLOOR),
        temperature=float(rows["temperature"][0].as_py()),
        probs=_probs(rows["probs"].combine_chunks(), rows.num_rows),
    )


def _probs(column: pa.ListArray, n: int) -> torch.Tensor | None:
    """The float16 vectors as float64 rows summing to 1; None where they were not stored."""
    if column.null_count:
        return None
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    probs = torch.from_numpy(flat.reshape(n, -1))
    return probs / probs.sum(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Ensembles of stored splits
# --------------------------------------------------------------------------------------------


def same_samples(splits: Sequence[StoredSplit | None]) -> bool:
    """Whether every split is stored and holds the same rows (keys) with the same labels: only
    then can their probabilities be averaged (a split drawn per seed, e.g. a ``test_subset``
    without ``data_seed``, differs)."""
    if not splits or any(s is None for s in splits):
        return False
    first = splits[0]
    return all(s.keys == first.keys and torch.equal(s.labels, first.labels) for s in splits[1:])  # type: ignore[union-attr]


def of_probs(
    probs: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = math.nan,
    keys: tuple[tuple, ...] | None = None,
    true_prob: torch.Tensor | None = None,
) -> StoredSplit:
    """The columns of a full probability matrix (stored, or a mean of stored ones) as a split;
    ``true_prob`` defaults to the label's entry of ``probs`` (floored at ``PROB_FLOOR``)."""
    confidence, pred = probs.max(dim=1)
    if true_prob is None:
        true_prob = probs.gather(1, labels[:, None]).squeeze(1).clamp_min(PROB_FLOOR)
    split = StoredSplit(
        keys=keys if keys is not None else tuple((None, None, i) for i in range(len(labels))),
        labels=labels,
        pred=pred,
        correct=pred == labels,
        confidence=confidence,
        confidence_ts=torch.full_like(confidence, math.nan),
        true_prob=true_prob,
        temperature=math.nan,
        probs=probs,
    )
    return with_temperature(split, temperature)


def with_temperature(split: StoredSplit, temperature: float) -> StoredSplit:
    """``split`` scaled by ``temperature`` (NaN: none): its ``confidence_ts`` recomputed."""
    if not math.isfinite(temperature):
        return dataclasses.replace(
            split, temperature=math.nan, confidence_ts=torch.full_like(split.confidence, math.nan)
        )
    scaled = calibration.scale_probs(split.require_probs(), temperature)
    return dataclasses.replace(
        split, temperature=float(temperature), confidence_ts=scaled.max(dim=1).values
    )


def mean_split(members: Sequence[StoredSplit]) -> StoredSplit:
    """The members' ensemble: their probabilities averaged per row, no temperature.

    What the float32 columns give exactly is taken from them: the label's probability is the
    mean of the members' ``true_prob``, and on a row where every member predicts the same class
    that class is the ensemble's prediction (each member's probability of it is its largest, so
    their mean's is too, however float16 rounded near-ties). Raises ``NoProbabilities`` when a
    member has no probability vectors and ``ValueError`` when they hold different samples.
    """
    if not same_samples(members):
        raise ValueError("the members hold different samples: their rows cannot be averaged")
    probs = torch.stack([m.require_probs() for m in members]).mean(dim=0)
    true_prob = torch.stack([m.true_prob.double() for m in members]).mean(dim=0)
    mean = of_probs(probs, members[0].labels, keys=members[0].keys, true_prob=true_prob)
    preds = torch.stack([m.pred for m in members])
    pred = torch.where((preds == preds[0]).all(dim=0), preds[0], mean.pred)
    return dataclasses.replace(mean, pred=pred, correct=pred == mean.labels)


def fitted_temperature(val: StoredSplit) -> float:
    """A temperature fitted on ``val``'s probabilities (their floored logs as logits)."""
    logits = val.require_probs().clamp_min(PROB_FLOOR).log()
    return calibration.fit_temperature(logits, val.labels)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def stored_names() -> tuple[str, ...]:
    """The metrics recomputable from evidence (``Metric.stored``), in registration order."""
    return tuple(m.name for m in stored_metrics())


def split_metrics(split: StoredSplit, names: Iterable[str] | None = None) -> dict[str, float]:
    """Every stored metric of ``trainables.metrics.METRICS`` (or those ``names``) of a stored
    split, each from the most exact column that holds it (its ``from_evidence``: module
    docstring); NaN where the split lacks what one needs."""
    chosen = stored_names() if names is None else names
    return {name: METRICS.get(name).from_evidence(split) for name in chosen}


def probs_metrics(
    probs: torch.Tensor, labels: torch.Tensor, temperature: float | None = None
) -> dict[str, float]:
    """``split_metrics`` of a full probability matrix (stored float16 probabilities or their
    mean); with ``temperature``, ``ece_ts`` after scaling by it (else NaN)."""
    return split_metrics(of_probs(probs, labels, math.nan if temperature is None else temperature))
