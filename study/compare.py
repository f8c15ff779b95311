"""`study compare`: a study's configurations side by side, in the shape of the paper's tables.

One row per configuration (a point, or a sampled configuration, with its repeat seeds): test
accuracy, ECE, adaptive ECE and ECE after temperature scaling in percent, mean ± std over seeds,
the best mean of each column marked; OOD and corruption metrics in a second table when the study
evaluated them. Values are the ones each trial logged (``Trainer.final_metrics``).
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
from optuna.trial import FrozenTrial, TrialState

from search_spaces.schema import Space
from study.search import STATUS_ATTR, configuration_key, trial_settings
from trainables.config import TrainConfig

Format = Literal["markdown", "latex", "csv"]
MAX_ROWS = 12  # more configurations than this: the best one per method and loss
# metric -> (column title, better direction)
CALIBRATION_COLUMNS: dict[str, tuple[str, str]] = {
    "test_accuracy": ("Accuracy", "max"),
    "test_ece": ("ECE", "min"),
    "test_adaece": ("AdaECE", "min"),
    "test_ece_ts": ("ECE (TS)", "min"),
}
OOD_SPLITS = ("cifar10_c", "cifar100_c", "imagenet_c")
METHOD_NAMES = {"sam": "SAM", "asam": "ASAM", "csam": "CSAM"}
BASE_NAMES = {"sgd": "SGD", "adamw": "AdamW"}
LOSS_NAMES = {"ls": "LS", "focal": "Focal", "flsd53": "FLSD-53"}
LATEX_ESCAPES = (
    ("_", r"\_"),
    ("%", r"\%"),
    ("&", r"\&"),
    ("#", r"\#"),
    ("ρ", r"$\rho$"),
    ("γ", r"$\gamma$"),
    ("ε", r"$\varepsilon$"),
)
# settings already named by the label's method and loss parts
DESCRIBED = {"method", "loss", "rho", "gamma", "focal_gamma", "ls_epsilon", "optimizer", "seed"}


def is_completed(trial: FrozenTrial) -> bool:
    """COMPLETE in Optuna and not diverged (diverged trials are told with the worst values)."""
    status = trial.user_attrs.get(STATUS_ATTR, "completed")
    return trial.state == TrialState.COMPLETE and status == "completed" and bool(trial.values)


def rank_score(trial: FrozenTrial, space: Space) -> float:
    """Higher is better: ``val_accuracy - val_ece`` (pareto) or the weighted objective."""
    if space.objective.type == "pareto":
        return float(trial.values[0]) - float(trial.values[1])
    return float(trial.values[0])


@dataclass
class Configuration:
    """The completed trials of one configuration (its seeds) and what they logged."""

    label: str
    settings: dict[str, Any]  # over the space's fixed settings, seed excluded
    trials: list[FrozenTrial] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        found = (t.user_attrs.get(metric) for t in self.trials)
        return [float(v) for v in found if isinstance(v, (int, float))]

    def mean_std(self, metric: str) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one seed; NaN when not logged)."""
        arr = np.asarray(self.values(metric), dtype=np.float64)
        if arr.size == 0:
            return math.nan, math.nan
        return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0

    def score(self, space: Space) -> float:
        return float(np.mean([rank_score(t, space) for t in self.trials]))


def describe(settings: dict[str, Any], space: Space) -> str:
    """A row label such as ``SAM (ρ=0.05) + Focal (γ=3)`` or ``CSAM (γ=1)``."""
    full = space.train_config({k: v for k, v in settings.items() if k != "seed"})
    if full.method == "sgd":
        label = BASE_NAMES[full.optimizer]
    elif full.method == "csam":
        label = f"CSAM (ρ={full.rho:g}, γ={full.gamma:g})"
    else:
        label = f"{METHOD_NAMES[full.method]} (ρ={full.rho:g})"
    if full.loss == "focal":
        label += f" + Focal (γ={full.focal_gamma:g})"
    elif full.loss == "ls":
        label += f" + LS (ε={full.ls_epsilon:g})"
    elif full.loss == "flsd53":
        label += " + FLSD-53"
    default = TrainConfig.model_fields
    others = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(settings.items())
        if k not in DESCRIBED and v != space.fixed.get(k, default[k].default)
    ]
    return label + (f" [{', '.join(others)}]" if others else "")


def grouped(study: optuna.Study, space: Space) -> list[Configuration]:
    """Completed trials grouped by configuration, in the order they were first run."""
    groups: dict[Any, Configuration] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not is_completed(trial):
            continue
        key = configuration_key(trial)
        if key not in groups:
            settings = {k: v for k, v in trial_settings(trial).items() if k != "seed"}
            groups[key] = Configuration(describe(settings, space), settings)
        groups[key].trials.append(trial)
    return list(groups.values())


def configurations(study: optuna.Study, space: Space) -> list[Configuration]:
    """``grouped``; with more than ``MAX_ROWS`` configurations, the best one (by mean rank
    score) per method and loss."""
    found = grouped(study, space)
    if len(found) <= MAX_ROWS:
        return found
    best: dict[tuple[str, str], Configuration] = {}
    for conf in sorted(found, key=lambda c: -c.score(space)):
        full = space.train_config(conf.settings)
        best.setdefault((full.method, full.loss), conf)
    return [c for c in found if c in best.values()]


def ood_columns(confs: Sequence[Configuration]) -> dict[str, tuple[str, str]]:
    """The OOD / corruption metrics any configuration logged, as table columns."""
    logged = {k for c in confs for t in c.trials for k in t.user_attrs}
    columns: dict[str, tuple[str, str]] = {}
    if "ood_svhn_auroc" in logged:
        columns["ood_svhn_auroc"] = ("SVHN AUROC", "max")
    for split in OOD_SPLITS:
        title = split.replace("_c", "-C").upper().replace("IMAGENET", "ImageNet")
        for metric, name, better in (("accuracy", "acc", "max"), ("ece", "ECE", "min")):
            if f"{split}_{metric}" in logged:
                columns[f"{split}_{metric}"] = (f"{title} {name}", better)
    return columns


@dataclass
class Table:
    """Rows of ``Configuration`` means/stds over some columns, best mean per column known."""

    confs: list[Configuration]
    columns: dict[str, tuple[str, str]]

    def best(self) -> dict[str, int]:
        """Column -> index of the configuration with the best mean."""
        out = {}
        for metric, (_, better) in self.columns.items():
            means = [c.mean_std(metric)[0] for c in self.confs]
            finite = [(m, i) for i, m in enumerate(means) if math.isfinite(m)]
            if finite:
                out[metric] = (max if better == "max" else min)(finite)[1]
        return out


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.2f}"


def _cell(conf: Configuration, metric: str, marked: bool, style: Format) -> str:
    mean, std = conf.mean_std(metric)
    text = _pct(mean) if len(conf.values(metric)) <= 1 else f"{_pct(mean)} ± {_pct(std)}"
    if style == "latex":
        text = text.replace("±", r"$\pm$")
        return rf"\textbf{{{text}}}" if marked else text
    return f"**{text}**" if marked else text


def _latex_escape(text: str) -> str:
    for char, escaped in LATEX_ESCAPES:
        text = text.replace(char, escaped)
    return text


def render(table: Table, style: Format) -> str:
    """The table as GitHub Markdown, a LaTeX ``tabular`` or CSV (means and stds as numbers)."""
    best = table.best()
    if style == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = ["configuration", "seeds", "trials"]
        for metric in table.columns:
            header += [f"{metric}_mean", f"{metric}_std"]
        writer.writerow([*header, "best"])
        for i, conf in enumerate(table.confs):
            row: list[Any] = [
                conf.label,
                len(conf.trials),
                " ".join(str(t.number) for t in conf.trials),
            ]
            for metric in table.columns:
                row += [f"{v:.6g}" for v in conf.mean_std(metric)]
            writer.writerow([*row, " ".join(m for m, j in best.items() if j == i)])
        return out.getvalue().rstrip("\n")
    titles = [f"{title} (%)" for title, _ in table.columns.values()]
    rows = [
        [conf.label, str(len(conf.trials))]
        + [_cell(conf, m, best.get(m) == i, style) for m in table.columns]
        for i, conf in enumerate(table.confs)
    ]
    if style == "latex":
        header = " & ".join(["Method", "Seeds", *(_latex_escape(t) for t in titles)])
        body = [" & ".join([_latex_escape(r[0]), *r[1:]]) + r" \\" for r in rows]
        spec = "l" + "r" * (len(titles) + 1)
        return "\n".join(
            [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", header + r" \\", r"\midrule"]
            + body
            + [r"\bottomrule", r"\end{tabular}"]
        )
    lines = [
        "| " + " | ".join(["method", "seeds", *titles]) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(titles) + 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def comparison_tables(study: optuna.Study, space: Space) -> list[Table]:
    """The calibration table and, when the study evaluated any, the OOD table."""
    confs = configurations(study, space)
    tables = [Table(confs, CALIBRATION_COLUMNS)]
    ood = ood_columns(confs)
    if ood:
        tables.append(Table(confs, ood))
    return tables


def top_configurations(study: optuna.Study, space: Space, n: int) -> list[dict[str, Any]]:
    """Settings of the ``n`` best configurations by mean rank score over their seeds."""
    ranked = sorted(grouped(study, space), key=lambda c: -c.score(space))
    return [c.settings for c in ranked[:n]]
