"""`study compare`: a study's configurations side by side, in the shape of the paper's tables.

One row per configuration (a point, or a sampled configuration, with its repeat seeds): test
accuracy, ECE, adaptive ECE, smooth ECE and ECE after temperature scaling in percent, the signed
over-confidence (mean confidence minus accuracy, percent) and the val-fitted temperature T, mean
± std over seeds, the best mean of each column marked; OOD and corruption metrics in a second
table when the study evaluated them. With a baseline row, a third table gives every other
configuration's difference to it, paired by seed, with a Student-t 95% interval. Values are the
ones each trial logged (``Trainer.final_metrics``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import optuna
import scipy.stats
from optuna.trial import FrozenTrial, TrialState

from search_spaces.schema import Space
from study.analysis.epochs import epoch_of, kept_epochs
from study.analysis.tables import latex_escape, latex_table, markdown_table
from study.storage.records import EPOCH_ATTR, STATUS_ATTR, configuration_key, trial_settings
from trainables.config import ood_section_key, setting_default
from trainables.errors import InputError
from trainables.evaluation import SPLITS
from trainables.losses import LOSSES
from trainables.methods import METHODS
from trainables.metrics import METRICS, Metric
from trainables.metrics.objectives import is_cost, signed

Format = Literal["markdown", "latex", "csv"]
MAX_ROWS = 12  # more searched configurations: the best one per method, loss and task


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


@dataclass(frozen=True)
class Column:
    """A table column: its title, which mean is best (``max``, ``min``, or None: none marked)
    and whether values are fractions shown in percent."""

    title: str
    better: str | None
    percent: bool = True
    csv_only: bool = False  # too fine for a printed table (per severity): CSV and frames only
    decimals: int = 3  # of a value not in percent


def metric_column(metric: Metric, delta: bool = False) -> Column:
    """A registered metric's column: its title (``Δ <title>`` for a paired difference),
    direction and percent flag."""
    title = f"Δ {metric.title}" if delta else metric.title
    return Column(title, metric.direction, metric.percent)


def main_columns() -> dict[str, Column]:
    """The main table's columns: the test key of every metric shown ``always``, in
    registration order (test accuracy, ECE, ..., T, NLL, Brier)."""
    return {m.test_key: metric_column(m) for m in METRICS.values() if m.compare == "always"}


def objective_only_columns() -> dict[str, Column]:
    """Columns shown only when the study optimises their metric (classwise ECE, the costs)."""
    return {m.test_key: metric_column(m) for m in METRICS.values() if m.compare == "objective"}


def base_paired_columns() -> dict[str, Column]:
    """Paired differences to a baseline row: the ``paired`` metrics, in percentage points."""
    return {m.test_key: metric_column(m, delta=True) for m in METRICS.values() if m.paired}


AT_BOUND = "temperature_at_bound"  # 1.0 where a trial's fitted T stopped on a bound
CONFIDENCE_LEVEL = 0.95
# settings already named by the label (the method's and the loss's parts: ``described()``)
DESCRIBED = {"method", "loss", "seed", "dropout", "mc_samples", "ood"}  # ood: held-out classes
DESCRIBED |= {"mimo", "mimo_batch_repetitions", "mimo_input_repetition"}
DESCRIBED |= {"rank1", "rank1_family", "rank1_eval_samples"}


def is_completed(trial: FrozenTrial) -> bool:
    """COMPLETE in Optuna and not diverged (diverged trials are told with the worst values)."""
    status = trial.user_attrs.get(STATUS_ATTR, "completed")
    return trial.state == TrialState.COMPLETE and status == "completed" and bool(trial.values)


def rank_score(trial: FrozenTrial, space: Space) -> float:
    """Higher is better: under a Pareto objective the sum of its metrics other than a cost, each
    signed so that higher is better (the default: ``val_accuracy - val_ece``); else the weighted
    objective."""
    objective = space.objective
    if objective.type == "pareto":
        return sum(
            signed(name, float(value))
            for name, value in zip(objective.metrics, trial.values, strict=True)
            if not is_cost(name)
        )
    return float(trial.values[0])


@dataclass
class Configuration:
    """The completed trials of one configuration (its seeds) and what they logged."""

    label: str
    settings: dict[str, Any]  # over the space's fixed settings, seed excluded
    trials: list[FrozenTrial] = field(default_factory=list)

    def value(self, trial: FrozenTrial, metric: str) -> float | None:
        """What ``trial`` logged as ``metric`` (None: nothing numeric)."""
        found = trial.user_attrs.get(metric)
        return float(found) if isinstance(found, (int, float)) else None

    def values(self, metric: str) -> list[float]:
        found = (self.value(t, metric) for t in self.trials)
        return [v for v in found if v is not None]

    def mean_std(self, metric: str) -> tuple[float, float]:
        """Mean and sample standard deviation over seeds (see ``mean_std``)."""
        return mean_std(self.values(metric))

    def score(self, space: Space) -> float:
        return float(np.mean([rank_score(t, space) for t in self.trials]))

    def by_seed(self, metric: str, space: Space) -> dict[int, float]:
        """The metric of each seed's trial (seeds that logged it)."""
        out = {}
        for trial in self.trials:
            value = self.value(trial, metric)
            if value is not None:
                out[space.train_config(trial_settings(trial)).seed] = value
        return out


LABEL_DIGITS = 3  # significant figures of the numbers in a row label


def describe(settings: dict[str, Any], space: Space, digits: int = LABEL_DIGITS) -> str:
    """A row label such as ``SAM (ρ=0.05) + Focal (γ=3)`` or ``CSAM (ρ=0.0565, γ=1.58)``: every
    number to ``digits`` significant figures."""

    def g(value: float) -> str:
        return f"{value:.{digits}g}"

    full = space.train_config({k: v for k, v in settings.items() if k != "seed"})
    label = METHODS.get(full.method).label(full, g)
    loss = LOSSES.get(full.loss).label(full, g)
    label += f" + {loss}" if loss else ""
    if full.dropout > 0 and full.mc_samples > 1:
        label += f" + MC dropout (p={g(full.dropout)}, {full.mc_samples} passes)"
    elif full.dropout > 0:
        label += f" + dropout (p={g(full.dropout)})"
    if full.mimo is not None:
        label += f" + MIMO (M={full.mimo}, b={full.mimo_batch_repetitions}"
        repeated = full.mimo_input_repetition
        label += f", input repetition {g(repeated)})" if repeated else ")"
    if full.rank1 is not None:
        family = "Gaussian" if full.rank1_family == "normal" else "Cauchy"
        samples = full.rank1_eval_samples
        label += f" + Rank-1 BNN ({family}, M={full.rank1}"
        label += f", {samples} samples)" if samples > 1 else ")"
    if full.ood is not None and full.ood.heldout is not None:
        label += f" [without classes {', '.join(map(str, full.ood.heldout.classes))}]"
    others = [
        f"{k}={g(v)}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(settings.items())
        if k not in described() and v != space.fixed.get(k, setting_default(k))
    ]
    return label + (f" [{', '.join(others)}]" if others else "")


def described() -> set[str]:
    """The settings a row label names: ``DESCRIBED`` and every registered method's and loss's
    ``label_keys``."""
    parts = [*METHODS.values(), *LOSSES.values()]
    return DESCRIBED | {k for part in parts for k in part.label_keys()}


def _unique_labels(confs: list[Configuration], space: Space) -> None:
    """Configurations whose labels coincide at ``LABEL_DIGITS`` figures get more digits, until
    their labels differ (labels name rows: ``--baseline LABEL``)."""
    for digits in range(LABEL_DIGITS + 1, 18):
        labels = [c.label for c in confs]
        clashing = [c for c in confs if labels.count(c.label) > 1]
        if not clashing:
            return
        for conf in clashing:
            conf.label = describe(conf.settings, space, digits)


EPOCHS = ("last", "chosen")
EPOCH_COLUMN = Column("epoch", None, percent=False, decimals=1)


def default_epoch(space: Space) -> str:
    """The epoch a comparison takes each trial at: with late checkpoints, a search's ``chosen``
    one; fixed points keep their ``last`` unless asked."""
    return "chosen" if space.late_fraction and not space.points else "last"


def at_chosen_epoch(trial: FrozenTrial, space: Space) -> FrozenTrial:
    """``trial`` at the best of its kept epochs by ``rank_score`` (itself without late
    checkpoints)."""
    return max(kept_epochs(trial, space), key=lambda t: rank_score(t, space))


def grouped(study: optuna.Study, space: Space, epoch: str = "last") -> list[Configuration]:
    """Completed trials grouped by configuration, in the order they were first run; each
    labelled (``describe``), labels unique. ``epoch``: ``last``, or ``chosen`` (each trial at
    ``at_chosen_epoch``)."""
    groups: dict[Any, Configuration] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not is_completed(trial):
            continue
        if epoch == "chosen":
            trial = at_chosen_epoch(trial, space)
        key = configuration_key(trial)
        if key not in groups:
            settings = {k: v for k, v in trial_settings(trial).items() if k != "seed"}
            groups[key] = Configuration(describe(settings, space), settings)
        groups[key].trials.append(trial)
    confs = list(groups.values())
    _unique_labels(confs, space)
    return confs


def configurations(study: optuna.Study, space: Space, epoch: str = "last") -> list[Configuration]:
    """``grouped``; where a search found more than ``MAX_ROWS`` configurations, the best one (by
    mean rank score) per method, loss and task (MC dropout, MIMO and Rank-1 apart; a study of
    fixed points only shows every point)."""
    found = grouped(study, space, epoch)
    if len(found) <= MAX_ROWS or not space.search:
        return found
    best: dict[tuple[Any, ...], Configuration] = {}
    for conf in sorted(found, key=lambda c: -c.score(space)):
        full = space.train_config(conf.settings)
        ensemble = (full.mc_samples > 1, full.mimo is not None, full.rank1 is not None)
        key = (full.method, full.loss, ensemble, _task(conf, space))
        best.setdefault(key, conf)
    return [c for c in found if c in best.values()]


def ood_columns(confs: Sequence[Configuration]) -> dict[str, Column]:
    """The OOD / corruption metrics any configuration logged, as table columns."""
    logged = {k for c in confs for t in c.trials for k in t.user_attrs}
    columns: dict[str, Column] = {}
    for split in SPLITS.names():
        for metric, name, better in (
            ("auroc", "AUROC", "max"),
            ("aupr", "AUPR", "max"),
            ("auroc_entropy", "AUROC (entropy)", "max"),
            ("accuracy", "acc", "max"),
            ("ece", "ECE", "min"),
            ("ece_ts", "ECE (TS)", "min"),
        ):
            if f"{split}_{metric}" in logged:
                columns[f"{split}_{metric}"] = Column(f"{split_title(split)} {name}", better)
    return columns


def split_title(split: str) -> str:
    """An OOD split's name in a table: its ``title`` in ``SPLITS`` (SVHN, DIGITS, CIFAR-10-C,
    FMNIST-C, ImageNet-C, ...), else one made from its name."""
    if split in SPLITS and SPLITS.get(split).title:
        return SPLITS.get(split).title
    title = ood_section_key(split).replace("_c", "-C").upper().replace("IMAGENET", "ImageNet")
    return title.replace("CIFAR10", "CIFAR-10").replace("CIFAR100", "CIFAR-100")


@dataclass
class Table:
    """Rows of ``Configuration`` means/stds over some columns, best mean per column known."""

    confs: list[Configuration]
    columns: dict[str, Column]

    def best(self) -> dict[str, int]:
        """Column -> index of the configuration with the best mean."""
        out = {}
        for metric, column in self.columns.items():
            if column.better is None:
                continue
            means = [c.mean_std(metric)[0] for c in self.confs]
            finite = [(m, i) for i, m in enumerate(means) if math.isfinite(m)]
            if finite:
                out[metric] = (max if column.better == "max" else min)(finite)[1]
        return out


def _num(value: float, column: Column) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}" if column.percent else f"{value:.{column.decimals}f}"


def _mark(text: str, marked: bool, style: Format) -> str:
    if style == "latex":
        text = text.replace("±", r"$\pm$")
        return rf"\textbf{{{text}}}" if marked else text
    return f"**{text}**" if marked else text


def _cell(conf: Configuration, metric: str, column: Column, marked: bool, style: Format) -> str:
    mean, std = conf.mean_std(metric)
    text = _num(mean, column)
    if len(conf.values(metric)) > 1:
        text += f" ± {_num(std, column)}"
    if metric == "temperature" and any(v > 0 for v in conf.values(AT_BOUND)):
        text += " (on a bound)"  # the fit wanted a T the bounds refuse: no regime verdict
    return _mark(text, marked, style)


def _title(column: Column) -> str:
    return f"{column.title} (%)" if column.percent else column.title


def _printed(columns: dict[str, Column]) -> dict[str, Column]:
    return {m: c for m, c in columns.items() if not c.csv_only}


def render(table: Table, style: Format) -> str:
    """The table as GitHub Markdown, a LaTeX ``tabular`` or CSV (means and stds as numbers, in
    percent where the other formats show percent; ``trials`` a count, ``trial_numbers`` the
    Optuna trials)."""
    best = table.best()
    if style == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = ["configuration", "seeds", "trials", "trial_numbers"]
        for metric in table.columns:
            header += [f"{metric}_mean", f"{metric}_std"]
        writer.writerow([*header, "best"])
        for i, conf in enumerate(table.confs):
            row: list[Any] = [
                conf.label,
                len(conf.trials),
                len(conf.trials),
                " ".join(str(t.number) for t in conf.trials),
            ]
            for metric, column in table.columns.items():
                scale = 100.0 if column.percent else 1.0  # as the Markdown and LaTeX tables
                row += [f"{scale * v:.6g}" for v in conf.mean_std(metric)]
            writer.writerow([*row, " ".join(m for m, j in best.items() if j == i)])
        return out.getvalue().rstrip("\n")
    shown = _printed(table.columns)
    titles = [_title(c) for c in shown.values()]
    rows = [
        [conf.label, str(len(conf.trials))]
        + [_cell(conf, m, c, best.get(m) == i, style) for m, c in shown.items()]
        for i, conf in enumerate(table.confs)
    ]
    return _text_table(["Method", "Seeds", *titles], rows, style)


def _text_table(headers: list[str], rows: list[list[str]], style: Format) -> str:
    """Rows under headers as a LaTeX ``tabular`` or GitHub Markdown (numbers right-aligned)."""
    if style == "latex":
        return latex_table(headers, rows)
    return markdown_table([h.lower() for h in headers[:2]] + headers[2:], rows, right_from=1)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences (configuration − baseline) and its Student-t interval."""

    n: int
    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of 0 (needs two seeds or more)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired_difference(
    values: dict[int, float], baseline: dict[int, float], level: float = CONFIDENCE_LEVEL
) -> PairedDifference:
    """Differences ``values[s] - baseline[s]`` over the seeds both have: their mean and the
    ``level`` Student-t interval (t with n − 1 degrees of freedom times the standard error);
    no interval (NaN) for fewer than two pairs."""
    seeds = sorted(set(values) & set(baseline))
    diffs = np.array([values[s] - baseline[s] for s in seeds], dtype=np.float64)
    if diffs.size == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan)
    mean = float(diffs.mean())
    if diffs.size < 2:
        return PairedDifference(1, mean, math.nan, math.nan)
    half = scipy.stats.t.ppf(0.5 + level / 2, diffs.size - 1) * diffs.std(ddof=1)
    half /= math.sqrt(diffs.size)
    return PairedDifference(int(diffs.size), mean, mean - half, mean + half)


@dataclass
class PairedTable:
    """Every configuration but the baseline, with its paired differences to the baseline, or to
    the baseline's counterpart on its own task (``against``: rows trained without some classes,
    ``ood.heldout``, are paired with the baseline's settings trained without the same classes)."""

    baseline: Configuration
    rows: list[tuple[Configuration, dict[str, PairedDifference]]]
    columns: dict[str, Column]
    against: dict[int, Configuration] = field(default_factory=dict)  # id(row) -> its baseline
    unpaired: list[Configuration] = field(default_factory=list)  # on a task with no counterpart

    def baseline_of(self, conf: Configuration) -> Configuration:
        """The row ``conf``'s differences are taken to."""
        return self.against.get(id(conf), self.baseline)

    def tasks_note(self) -> str:
        """What a reader must know of rows trained on other classes ("" where there are none)."""
        note = ""
        if self.against:
            note += " Rows trained without some classes: the difference to the row after ' − '."
        if self.unpaired:
            left = "; ".join(c.label for c in self.unpaired)
            note += f" Not paired (no baseline trained on their classes): {left}."
        return note


def _task(conf: Configuration, space: Space) -> tuple[int, ...]:
    """The classes a configuration was trained without (``ood.heldout``; () for all)."""
    ood = space.train_config(conf.settings).ood
    return tuple(ood.heldout.classes) if ood is not None and ood.heldout is not None else ()


def _same_but_task(a: Configuration, b: Configuration, space: Space) -> bool:
    def training(conf: Configuration) -> dict[str, Any]:
        return space.train_config(conf.settings).model_dump(exclude={"ood"})

    return training(a) == training(b)


def paired_table(
    confs: Sequence[Configuration],
    baseline: int,
    space: Space,
    columns: dict[str, Column] | None = None,
) -> PairedTable:
    """Paired differences of each configuration to ``confs[baseline]`` (by seed) in
    ``columns``. A configuration trained on other classes (``ood.heldout``) is paired with the
    baseline's settings trained on its classes where the study has them, else left out
    (``unpaired``): its test set is another task."""
    base = confs[baseline]
    columns = base_paired_columns() if columns is None else columns
    table = PairedTable(base, [], columns)
    counterparts = {_task(base, space): base}
    for conf in confs:  # the first: an ensemble row comes after its members' row
        if _same_but_task(conf, base, space):
            counterparts.setdefault(_task(conf, space), conf)
    for conf in confs:
        against = counterparts.get(_task(conf, space))
        if conf is against:
            continue
        if against is None:
            table.unpaired.append(conf)
            continue
        if against is not base:
            table.against[id(conf)] = against
        diffs = {
            m: paired_difference(conf.by_seed(m, space), against.by_seed(m, space)) for m in columns
        }
        table.rows.append((conf, diffs))
    return table


class RowNotFound(InputError):
    """A ``--baseline`` (``baseline=``) that names no row; the message lists the rows."""


def find_row(confs: Sequence[Configuration], row: str) -> int:
    """The index of the configuration named by ``row``: its label, or its 1-based row number."""
    labels = [c.label for c in confs]
    if row in labels:
        return labels.index(row)
    if row.strip().isdigit() and 1 <= int(row) <= len(confs):
        return int(row) - 1
    listed = "; ".join(f"{i}: {label}" for i, label in enumerate(labels, 1))
    raise RowNotFound(f"--baseline {row!r} names no row; give a row number or a label ({listed})")


def _signed(value: float, percent: bool = True) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{100 * value:+.2f}" if percent else f"{value:+.4f}"


def render_paired(table: PairedTable, style: Format) -> str:
    """The paired differences, in percentage points for the percent metrics (NLL and the like as
    logged): ``mean [low, high]``, bold (or a ``*`` column in CSV) where the interval excludes
    0."""
    columns = table.columns
    if style == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = ["configuration", "baseline", "pairs"]
        for metric in columns:
            header += [f"{metric}_diff_mean", f"{metric}_diff_low", f"{metric}_diff_high"]
        writer.writerow([*header, "excludes_zero"])
        for conf, diffs in table.rows:
            row: list[Any] = [conf.label, table.baseline_of(conf).label]
            row.append(max(d.n for d in diffs.values()))
            for metric, d in diffs.items():
                scale = 100.0 if columns[metric].percent else 1.0
                row += [f"{scale * v:.6g}" for v in (d.mean, d.low, d.high)]
            marked = " ".join(m for m, d in diffs.items() if d.excludes_zero)
            writer.writerow([*row, marked])
        return out.getvalue().rstrip("\n")
    shown = _printed(columns)
    titles = [f"{c.title} (pp)" if c.percent else c.title for c in shown.values()]
    rows = []
    for conf, diffs in table.rows:
        cells = []
        for metric, d in diffs.items():
            if metric not in shown:
                continue
            percent = columns[metric].percent
            text = _signed(d.mean, percent)
            if d.n >= 2:
                text += f" [{_signed(d.low, percent)}, {_signed(d.high, percent)}]"
            cells.append(_mark(text, d.excludes_zero, style))
        against = table.against.get(id(conf))
        label = conf.label + (f" − {against.label}" if against is not None else "")
        rows.append([label, str(max(d.n for d in diffs.values())), *cells])
    return _text_table(["Method", "Pairs", *titles], rows, style)


def calibration_columns(space: Space) -> dict[str, Column]:
    """The main table's columns (``main_columns``) and a column for each objective metric they
    lack (the test counterpart of a val metric, or the cost itself)."""
    columns = main_columns()
    extra = objective_only_columns()
    for metric in space.objective.metrics:
        key = f"test_{metric[4:]}" if metric.startswith("val_") else metric
        if key not in columns and key in extra:
            columns[key] = extra[key]
    return columns


def comparison_tables(study: optuna.Study, space: Space, epoch: str | None = None) -> list[Table]:
    """The calibration table (with the study's objective metrics) and, when the study evaluated
    any, the OOD table; each trial at ``epoch`` (``EPOCHS``; None: ``default_epoch``), the
    chosen epochs a column of their own."""
    epoch = epoch or default_epoch(space)
    confs = configurations(study, space, epoch)
    columns = calibration_columns(space)
    if epoch == "chosen":
        columns = {"epoch": EPOCH_COLUMN, **columns}
    tables = [Table(confs, columns)]
    ood = ood_columns(confs)
    if ood:
        tables.append(Table(confs, ood))
    return tables


PAIRED_OOD_METRICS = ("auroc", "ece", "ece_ts")  # of each OOD / corruption split logged


def paired_columns(tables: Sequence[Table]) -> dict[str, Column]:
    """``base_paired_columns`` and, where the study evaluated OOD or corruption splits, their AUROC
    and ECE (raw and after TS): the columns of the paired table."""
    columns = base_paired_columns()
    for table in tables[1:2]:
        for metric, column in table.columns.items():
            if metric.endswith(tuple(f"_{m}" for m in PAIRED_OOD_METRICS)):
                columns[metric] = Column(f"Δ {column.title}", column.better)
    return columns


def top_configurations(
    study: optuna.Study, space: Space, n: int, epoch: str | None = None
) -> list[dict[str, Any]]:
    """Settings of the ``n`` best configurations by mean rank score over their seeds, each at
    ``epoch`` (None: ``default_epoch``): a chosen epoch before the last becomes ``stop_after``
    (the most common among the seeds, the later on a tie), so that a rerun trains to it."""
    confs = grouped(study, space, epoch or default_epoch(space))
    ranked = sorted(confs, key=lambda c: -c.score(space))
    out = []
    for conf in ranked[:n]:
        epochs = [epoch_of(t) or 0 for t in conf.trials]
        chosen = max(set(epochs), key=lambda e: (epochs.count(e), e))
        early = any(EPOCH_ATTR in t.user_attrs for t in conf.trials if epoch_of(t) == chosen)
        out.append({**conf.settings, "stop_after": chosen} if early else conf.settings)
    return out


@dataclass
class Comparison:
    """What ``study compare`` shows: the comparison ``tables`` (calibration, and OOD when the
    study evaluated it; the ensemble rows appended when asked for), the ``paired`` differences
    to a baseline row (None: no baseline), the ensemble rows themselves and why any
    configuration got none (``skipped``)."""

    tables: list[Table]
    paired: PairedTable | None = None
    ensembles: list[Configuration] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # ``--calibrators``: (calibrator, its rows) and, with a baseline, its paired differences
    calibrated: list[tuple[str, Table]] = field(default_factory=list)
    calibrated_paired: list[tuple[str, PairedTable]] = field(default_factory=list)

    @property
    def confs(self) -> list[Configuration]:
        """Every row: the configurations, then the ensembles."""
        return self.tables[0].confs

    def paired_note(self, style: Format = "markdown") -> str:
        """The sentence above the paired table (empty without a baseline)."""
        if self.paired is None:
            return ""
        note = (
            f"Difference to {self.paired.baseline.label}, paired by seed: mean [95% Student-t "
            "interval] in percentage points; bold where the interval excludes 0."
        )
        note += self.paired.tasks_note()
        return latex_escape(note) if style == "latex" else note

    def rows(self, percent: bool = False) -> list[dict[str, Any]]:
        """One dict per row: configuration, seeds, trials, trial numbers, each metric's mean and
        std (fractions, or ``percent`` where the tables show percent) and, with a baseline,
        each paired metric's difference ``_diff`` and interval ``_diff_low``/``_diff_high``."""
        diffs = {id(c): d for c, d in self.paired.rows} if self.paired is not None else {}
        pairs = [(t, {c.label: d for c, d in t.rows}) for _, t in self.calibrated_paired]
        out = []
        for i, conf in enumerate(self.confs):
            row: dict[str, Any] = {
                "configuration": conf.label,
                "seeds": len(conf.trials),
                "trial_numbers": " ".join(str(t.number) for t in conf.trials),
            }
            for table in self.tables:
                for metric, column in table.columns.items():
                    scale = 100.0 if percent and column.percent else 1.0
                    mean, std = conf.mean_std(metric)
                    row[f"{metric}_mean"], row[f"{metric}_std"] = scale * mean, scale * std
            if self.paired is not None:
                row["baseline"] = self.paired.baseline_of(conf).label
                for metric, column in self.paired.columns.items():
                    d = diffs.get(id(conf), {}).get(metric)
                    scale = 100.0 if percent and column.percent else 1.0
                    values = (d.mean, d.low, d.high) if d is not None else (math.nan,) * 3
                    for suffix, value in zip(("", "_low", "_high"), values):
                        row[f"{metric}_diff{suffix}"] = scale * value
            for _, table in self.calibrated:
                for metric, column in table.columns.items():
                    scale = 100.0 if percent and column.percent else 1.0
                    found = table.confs[i] if i < len(table.confs) else None
                    mean, std = found.mean_std(metric) if found else (math.nan, math.nan)
                    row[f"{metric}_mean"], row[f"{metric}_std"] = scale * mean, scale * std
            for table, by_label in pairs:
                for metric, column in table.columns.items():
                    d = by_label.get(conf.label, {}).get(metric)
                    scale = 100.0 if percent and column.percent else 1.0
                    values = (d.mean, d.low, d.high) if d is not None else (math.nan,) * 3
                    for suffix, value in zip(("", "_low", "_high"), values):
                        row[f"{metric}_diff{suffix}"] = scale * value
            out.append(row)
        return out

    def frame(self) -> Any:
        """``rows()`` as a pandas DataFrame (fractions, as logged)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def csv(self) -> str:
        """One CSV table, a row per configuration (then per ensemble): ``rows(percent=True)``
        (``trials`` the count, ``trial_numbers`` the Optuna trials), the ``best`` metrics of
        the row and, with a baseline, the paired columns and ``excludes_zero``."""
        best: dict[int, list[str]] = {}
        for table in self.tables:
            for metric, i in table.best().items():
                best.setdefault(i, []).append(metric)
        excludes = {}
        if self.paired is not None:
            for conf, diffs in self.paired.rows:
                excludes[id(conf)] = " ".join(m for m, d in diffs.items() if d.excludes_zero)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        rows = self.rows(percent=True)
        header = [*rows[0]] if rows else ["configuration", "seeds", "trial_numbers"]
        header.insert(2, "trials")
        header.append("best")
        if self.paired is not None:
            header.append("excludes_zero")
        writer.writerow(header)
        for i, (conf, row) in enumerate(zip(self.confs, rows)):
            row = {**row, "trials": len(conf.trials), "best": " ".join(best.get(i, []))}
            if self.paired is not None:
                row["excludes_zero"] = excludes.get(id(conf), "")
            writer.writerow([_csv_value(row[k]) for k in header])
        return out.getvalue().rstrip("\n")

    def render(self, style: Format) -> str:
        """The whole comparison as ``study compare`` prints it: Markdown or LaTeX tables (the
        paired one under its note), or one CSV table (``csv``)."""
        if style == "csv":
            return self.csv()
        blocks = [render(table, style) for table in self.tables]
        if self.paired is not None:
            blocks += [self.paired_note(style), render_paired(self.paired, style)]
        paired = dict(self.calibrated_paired)
        for name, table in self.calibrated:
            blocks += [self._heading(calibrated_title(name), style), render(table, style)]
            if name in paired:
                blocks += [self.paired_note(style), render_paired(paired[name], style)]
        return "\n\n".join(blocks)

    @staticmethod
    def _heading(text: str, style: Format) -> str:
        return latex_escape(text) if style == "latex" else f"**{text}**"


def calibrated_title(name: str) -> str:
    """The heading of the table after post-hoc calibrator ``name`` (``study.analysis.calibrators``)."""
    from study.analysis.calibrators import NAMES

    if name not in NAMES:
        return "Before post-hoc calibration (from the stored probabilities)"
    return f"After {NAMES[name]}, fitted on each trial's val evidence"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


_DERIVED = {
    "CALIBRATION_COLUMNS": main_columns,
    "PAIRED_COLUMNS": base_paired_columns,
    "OBJECTIVE_COLUMNS": objective_only_columns,
}


def __getattr__(name: str) -> Any:
    """The column tables of earlier versions, computed from the metric registry when read."""
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
