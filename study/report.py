"""`study report`: a Markdown report of a finished study, recomputed from what it stored.

The report lives in ``<study dir>/report/``::

    report.md        settings, Pareto front (or best trial), best trial per method, ensemble,
                     importances, with links to the figures below
    report.html      the same, one self-contained page (figures embedded; the MLflow UI shows it)
    report.json      the numbers of the tables at full precision
    pareto.png       val accuracy against val ECE of every completed trial, the front ringed
    reliability.png  test reliability diagrams of each method's best trial, before/after scaling,
                     binned (bars) and smooth (Błasiok & Nakkiran's curve)
    regimes.png      the regime map, when the study trained SGD and other methods under several
                     budgets (see study/regimes.py)
    importance.png   Optuna's parameter importances per objective (when they can be computed)
    sensitivity.png  val ECE and val accuracy against rho and gamma (the searched ones)

Test metrics of the per-method table and of the ensemble are recomputed with
``trainables.calibration`` from the per-sample Parquet evidence (its float16 ``probs``, renormalised
in float64), not copied from what the trials logged; the report says how far the two differ.
Temperature scaling uses the evidence's ``temperature`` (fitted on val by the trial): the scaled
probabilities are ``probs ** (1 / T)`` renormalised, i.e. ``softmax(log(probs) / T)``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import torch  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from search_spaces.schema import Space  # noqa: E402
from study.compare import (  # noqa: E402
    Configuration,
    comparison_tables,
    describe,
    grouped,
    is_completed,
    mean_std,
    paired_table,
    rank_score,
    render,
    render_paired,
)
from study.ensembles import with_ensembles  # noqa: E402
from study.front import best_trials, load_optuna_study  # noqa: E402
from study.output import warn  # noqa: E402
from study.regimes import MAP_METRICS, draw_regime_map, regime_text, regimes  # noqa: E402
from study.report_html import HTML_FILE, report_html  # noqa: E402
from study.tables import markdown_table  # noqa: E402
from study.trials import (  # noqa: E402
    STATUS_ATTR,
    TRIAL_ID_ATTR,
    configuration_key,
    trial_settings,
)
from trainables import calibration  # noqa: E402
from trainables.atomic import replace_directory  # noqa: E402
from trainables.config import TrainConfig  # noqa: E402
from trainables.evidence import open_evidence  # noqa: E402
from trainables.layout import StudyPaths  # noqa: E402
from trainables.plots import reliability_axes  # noqa: E402

REPORT_FILE = "report.md"
DATA_FILE = "report.json"
TOP_K = 5
N_BINS = 15
EVIDENCE_COLUMNS = ["trial_id", "epoch", "sample_id", "label", "probs", "temperature"]
SENSITIVITY_PARAMS = ("rho", "gamma")
# Recomputed metric -> the user attribute the trial logged (see Trainer.final_metrics).
LOGGED = {
    "accuracy": "test_accuracy",
    "ece": "test_ece",
    "adaece": "test_adaece",
    "classwise_ece": "test_classwise_ece",
    "nll": "test_nll",
    "brier": "test_brier",
    "ece_ts": "test_ece_ts",
    "smece": "test_smece",
    "overconfidence": "test_overconfidence",
}
METRIC_TITLES = {
    "accuracy": "test accuracy",
    "ece": "ECE",
    "adaece": "adaptive ECE",
    "classwise_ece": "classwise ECE",
    "nll": "NLL",
    "brier": "Brier",
    "ece_ts": "ECE after TS",
    "smece": "smooth ECE",
    "overconfidence": "over-confidence",
}
BOOTSTRAP_RESAMPLES = 1000
ENSEMBLE_METRICS = ("accuracy", "ece", "nll", "brier")


# --------------------------------------------------------------------------------------------
# What the report is made of
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialEvidence:
    """The test rows of one trial's last evaluated epoch, ordered by ``sample_id``."""

    sample_ids: np.ndarray
    labels: torch.Tensor  # (N,) int64
    probs: torch.Tensor  # (N, C) float64, rows renormalised
    temperature: float

    def scaled_probs(self) -> torch.Tensor:
        """``probs ** (1 / T)`` renormalised: the temperature-scaled probabilities."""
        return calibration.scale_probs(self.probs, self.temperature)


@dataclass(frozen=True)
class StudyView:
    """A study as the report sees it: its trials, how they rank, and their evidence."""

    name: str
    space: Space
    study: optuna.Study
    completed: list[FrozenTrial]  # COMPLETE and not diverged, best first
    evidence: dict[str, TrialEvidence]  # Tune trial id -> test evidence

    @property
    def pareto(self) -> bool:
        return self.space.objective.type == "pareto"

    def method(self, trial: FrozenTrial) -> str:
        return trial_method(trial, self.space)

    def score(self, trial: FrozenTrial) -> float:
        return rank_score(trial, self.space)

    def evidence_of(self, trial: FrozenTrial) -> TrialEvidence | None:
        return self.evidence.get(str(trial.user_attrs.get(TRIAL_ID_ATTR, "")))

    def methods(self) -> list[str]:
        """Methods of the completed trials, in the order the space lists them."""
        found = {self.method(t) for t in self.completed}
        dist = self.space.search.get("method")
        order = [str(m) for m in (dist.categorical or [])] if dist is not None else []
        return [m for m in order if m in found] + sorted(found - set(order))


def trial_method(trial: FrozenTrial, space: Space) -> str:
    """The trial's ``method``: searched or set by its point, else fixed, else the default."""
    settings = trial_settings(trial)
    if "method" in settings:
        return str(settings["method"])
    return str(space.fixed.get("method", TrainConfig.model_fields["method"].default))


def ranked_completed(study: optuna.Study, space: Space) -> list[FrozenTrial]:
    """Completed trials, best first by ``rank_score`` (ties: lower number first)."""
    trials = [t for t in study.get_trials(deepcopy=False) if is_completed(t)]
    return sorted(trials, key=lambda t: (-rank_score(t, space), t.number))


# --------------------------------------------------------------------------------------------
# Evidence and metrics
# --------------------------------------------------------------------------------------------


def _trial_rows(table: pa.Table, trial_id: str) -> TrialEvidence | None:
    rows = table.filter(pc.equal(table["trial_id"], trial_id))
    if rows.num_rows == 0:
        return None
    last = pc.max(rows["epoch"]).as_py()
    rows = rows.filter(pc.equal(rows["epoch"], last)).sort_by("sample_id")
    column = rows["probs"].combine_chunks()
    n = rows.num_rows
    if column.null_count:  # too many classes to store probs (see evidence.MAX_PROBS_CLASSES)
        return None
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    if flat.size == 0 or flat.size % n:
        return None
    probs = torch.from_numpy(flat.reshape(n, -1))
    probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(calibration.PROB_FLOOR)
    return TrialEvidence(
        sample_ids=rows["sample_id"].to_numpy(),
        labels=torch.from_numpy(rows["label"].to_numpy().astype(np.int64)),
        probs=probs,
        temperature=float(rows["temperature"][0].as_py()),
    )


def load_test_evidence(root_uri: str, trial_ids: Iterable[str]) -> dict[str, TrialEvidence]:
    """Test evidence of each trial (its last evaluated epoch); trials without any are left out."""
    ids = sorted({i for i in trial_ids if i})
    if not ids:
        return {}
    try:
        dataset = open_evidence(root_uri)
        table = dataset.to_table(
            columns=EVIDENCE_COLUMNS,
            filter=(ds.field("split") == "test") & ds.field("trial_id").isin(ids),
        )
    except (FileNotFoundError, pa.ArrowException):
        return {}
    found = {i: _trial_rows(table, i) for i in ids}
    return {i: ev for i, ev in found.items() if ev is not None}


def probs_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, ece, adaece, classwise_ece, nll, brier, overconfidence and smece of
    probabilities."""
    logp = probs.clamp_min(
        calibration.PROB_FLOOR
    ).log()  # softmax(log p) == p: log-probs are valid logits
    values = {
        "accuracy": calibration.accuracy(probs, labels),
        "ece": calibration.ece(probs, labels, N_BINS),
        "adaece": calibration.adaptive_ece(probs, labels, N_BINS),
        "classwise_ece": calibration.classwise_ece(probs, labels, probs.shape[1], N_BINS),
        "nll": calibration.nll(logp, labels),
        "brier": calibration.brier(probs, labels),
        "overconfidence": calibration.overconfidence(probs, labels),
    }
    out = {k: float(v) for k, v in values.items()}
    out["smece"] = calibration.smooth_ece(probs, labels)
    return out


def evidence_metrics(ev: TrialEvidence) -> dict[str, float]:
    """``probs_metrics`` of a trial's test evidence plus ``ece_ts`` and ``temperature``."""
    out = probs_metrics(ev.probs, ev.labels)
    out["ece_ts"] = float(calibration.ece(ev.scaled_probs(), ev.labels, N_BINS))
    out["temperature"] = ev.temperature
    return out


def repeat_group(trial: FrozenTrial, trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """``trial`` and the other trials of its configuration (its repeat seeds)."""
    mine = configuration_key(trial)
    group = [t for t in trials if configuration_key(t) == mine and t.number != trial.number]
    return [trial, *sorted(group, key=lambda t: t.number)]


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` decimals (small ones in e-notation), NaN as n/a."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and abs(value) < 10 ** -(digits - 1):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_param(value: Any) -> str:
    """A hyperparameter value: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


def _method_colors(methods: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _val(trial: FrozenTrial, key: str) -> float:
    value = trial.user_attrs.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


# --------------------------------------------------------------------------------------------
# Sections: each returns its Markdown, records its numbers in ``data`` and draws its figure
# --------------------------------------------------------------------------------------------


def _objective_text(space: Space) -> str:
    if space.objective.type == "pareto":
        return "pareto (maximize val_accuracy, minimize val_ece)"
    return f"weighted (maximize val_accuracy - {space.objective.weight:g} * val_ece)"


def _rank_text(space: Space) -> str:
    if space.objective.type == "pareto":
        return (
            "Trials are ranked by **val_accuracy - val_ece** (highest first): the Pareto front "
            "has no single best trial, so this scalarisation picks one."
        )
    return "Trials are ranked by the study's weighted objective (highest first)."


def _search_text(space: Space) -> str:
    parts = []
    for name, dist in space.search.items():
        shown = dist.categorical if dist.categorical is not None else list(dist.bounds or ())
        when = f" when {dist.when}" if dist.when else ""
        parts.append(f"`{name}`: {dist.kind} {shown}{when}")
    return "; ".join(parts) or "(nothing searched)"


def _trial_counts(study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            label = str(trial.user_attrs.get(STATUS_ATTR, "completed"))
        else:
            label = trial.state.name.lower()
        counts[label] = counts.get(label, 0) + 1
    detail = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    return f"{len(study.trials)} trials ({detail or 'none'})"


def header_section(view: StudyView, paths: StudyPaths, data: dict[str, Any]) -> str:
    """Title and the study's settings."""
    space = view.space
    fixed = ", ".join(f"{k}={v}" for k, v in space.fixed.items()) or "(none)"
    rows = [
        ["space", str(space.name or view.name)],
        ["objective", _objective_text(space)],
        ["sampler", space.sampler],
        ["scheduler", space.scheduler],
        ["configurations", f"{space.samples} ({len(space.points)} given as points)"],
        ["seeds per configuration", str(space.repeats)],
        ["concurrency", str(space.concurrency)],
        ["seed", str(space.seed)],
        ["trials", _trial_counts(view.study)],
        ["fixed", fixed],
        ["searched", _search_text(space)],
        ["study directory", f"`{paths.root}`"],
    ]
    data["settings"] = {r[0]: r[1] for r in rows}
    lines = [f"# Study report: {view.name}"]
    if space.description:
        lines.append(space.description)
    lines.append(markdown_table(["setting", "value"], rows, cell=fmt))
    return "\n\n".join(lines)


def front_section(view: StudyView, data: dict[str, Any]) -> str:
    """The Pareto front (or the best trial) as Optuna holds it, with the logged metrics."""
    params = [p for p in view.space.search if p != "method"]
    metric_keys = ["test_accuracy", "test_ece", "test_ece_ts", "test_nll"]
    headers = ["trial", "Tune id", "method", *params, "val accuracy", "val ECE"]
    headers += ["test accuracy", "test ECE", "test ECE after TS", "test NLL"]
    if not view.pareto:
        headers.append("objective")
    rows, records = [], []
    for trial in best_trials(view.study):
        row: list[Any] = [
            str(trial.number),
            str(trial.user_attrs.get(TRIAL_ID_ATTR, "")),
            view.method(trial),
        ]
        row += [fmt_param(trial.params.get(p, "-")) for p in params]
        row += [_val(trial, "val_accuracy"), _val(trial, "val_ece")]
        row += [_val(trial, k) for k in metric_keys]
        if not view.pareto:
            row.append(float(trial.values[0]))
        rows.append(row)
        records.append(
            {
                "trial": trial.number,
                "tune_id": row[1],
                "method": row[2],
                "params": dict(trial.params),
            }
        )
    data["front"] = records
    title = "## Pareto front" if view.pareto else "## Best trial"
    intro = (
        "Optuna's Pareto front over (val accuracy up, val ECE down); test metrics as the trials "
        "logged them."
        if view.pareto
        else "The trial with the highest weighted objective; test metrics as logged."
    )
    body = markdown_table(headers, rows, cell=fmt) if rows else "No completed trial."
    parts = [title, intro, body, "![](pareto.png)"]
    done = {t.number for t in view.completed}
    left_out = [t for t in view.study.get_trials(deepcopy=False) if t.number not in done]
    if left_out:
        parts.append(
            f"{len(left_out)} trial(s) that did not complete normally (diverged, pruned, failed "
            "or running) are left out of the figures, the rankings and the ensemble."
        )
    return "\n\n".join(parts)


def draw_pareto(view: StudyView, path: Path) -> None:
    """Val accuracy against val ECE of every completed trial, the front ringed and joined."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    methods = view.methods()
    colors = _method_colors(methods)
    for method in methods:
        trials = [t for t in view.completed if view.method(t) == method]
        ax.scatter(
            [_val(t, "val_ece") for t in trials],
            [_val(t, "val_accuracy") for t in trials],
            color=colors[method],
            label=method,
            s=36,
            zorder=3,
        )
    done = {t.number for t in view.completed}
    front = sorted(
        (t for t in best_trials(view.study) if t.number in done), key=lambda t: _val(t, "val_ece")
    )
    if front:
        xs, ys = [_val(t, "val_ece") for t in front], [_val(t, "val_accuracy") for t in front]
        label = "Pareto front" if view.pareto else "best trial"
        ax.scatter(
            xs,
            ys,
            s=160,
            facecolors="none",
            edgecolors="black",
            linewidths=1.5,
            label=label,
            zorder=4,
        )
        if view.pareto and len(front) > 1:
            ax.plot(xs, ys, "k--", linewidth=1, zorder=2)
        for t, x, y in zip(front, xs, ys):
            ax.annotate(f"#{t.number}", (x, y), textcoords="offset points", xytext=(6, 6))
    ax.set(xlabel="val ECE", ylabel="val accuracy", title=f"{view.name}: completed trials")
    if methods:
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _method_best(view: StudyView) -> dict[str, FrozenTrial]:
    """The best trial of each method among those with test evidence."""
    best: dict[str, FrozenTrial] = {}
    for trial in view.completed:  # best first
        if view.evidence_of(trial) is not None:
            best.setdefault(view.method(trial), trial)
    return {m: best[m] for m in view.methods() if m in best}


def _cell(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} ± {fmt(std)}"


def methods_section(view: StudyView, data: dict[str, Any]) -> str:
    """Best trial per method: test metrics recomputed from the evidence (mean ± std over seeds)."""
    best = _method_best(view)
    keys = list(METRIC_TITLES)
    headers = ["method", "trial", "seeds", *METRIC_TITLES.values(), "T"]
    rows, records, gaps = [], {}, []
    for method, trial in best.items():
        group = [t for t in repeat_group(trial, view.completed) if view.evidence_of(t)]
        metrics = [evidence_metrics(view.evidence_of(t)) for t in group]  # type: ignore[arg-type]
        for t, m in zip(group, metrics):
            gaps += [
                abs(m[k] - float(t.user_attrs[a]))
                for k, a in LOGGED.items()
                if isinstance(t.user_attrs.get(a), (int, float))
            ]
        columns = {k: [m[k] for m in metrics] for k in [*keys, "temperature"]}
        trials = ", ".join(f"#{t.number}" for t in group)
        rows.append(
            [
                method,
                trials,
                str(len(group)),
                *(_cell(columns[k]) for k in keys),
                _cell(columns["temperature"]),
            ]
        )
        records[method] = {
            "trial": trial.number,
            "tune_id": str(trial.user_attrs.get(TRIAL_ID_ATTR, "")),
            "trials": [t.number for t in group],
            "per_trial": metrics,
            "mean": {k: mean_std(v)[0] for k, v in columns.items()},
            "std": {k: mean_std(v)[1] for k, v in columns.items()},
        }
    data["methods"] = records
    data["max_logged_gap"] = max(gaps) if gaps else None
    parts = ["## Best trial per method", _rank_text(view.space)]
    if not rows:
        parts.append("No completed trial has test evidence to recompute metrics from.")
        return "\n\n".join(parts)
    parts.append(
        "Test metrics recomputed from the Parquet evidence (float16 probs, renormalised) with "
        f"`trainables.calibration` ({N_BINS} bins). Where trials repeat the best trial's "
        "parameters with other seeds, cells show mean ± std over them. ECE after TS scales the "
        "probs with the trial's val-fitted temperature T: probs^(1/T), renormalised."
    )
    parts.append(markdown_table(headers, rows, cell=fmt))
    if gaps:
        parts.append(
            f"Largest difference between these recomputed metrics and the ones the trials logged: "
            f"{max(gaps):.1e} (float16 storage of the probs)."
        )
    parts.append("![](reliability.png)")
    return "\n\n".join(parts)


def comparison_section(view: StudyView, data: dict[str, Any], evidence: str) -> str:
    """Every configuration (best per method and loss when there are many), mean ± std over its
    seeds, and the deep ensemble of each configuration's seeds (from the ``evidence``), as
    ``study compare --ensembles`` prints them; OOD and corruption metrics in a second table."""
    tables = comparison_tables(view.study, view.space)
    skipped: list[str] = []
    shown = with_ensembles(tables, evidence, skipped) if tables[0].confs else tables
    data["ensembles_skipped"] = skipped
    data["ensembles"] = [
        {"configuration": e.label, "trials": [t.number for t in e.trials], **e.metrics}
        for e in shown[0].confs[len(tables[0].confs) :]
    ]
    data["comparison"] = [
        {
            "configuration": conf.label,
            "settings": conf.settings,
            "trials": [t.number for t in conf.trials],
            **{m: conf.mean_std(m) for table in tables for m in table.columns},
        }
        for conf in tables[0].confs
    ]
    parts = [
        "## Comparison",
        "Each configuration with its seeds (`study compare --ensembles`): test metrics in "
        "percent as the trials logged them, mean ± std over seeds, the best mean of each column "
        "in bold; a configuration run with several seeds also as their deep ensemble "
        '("ensemble x K": the seeds\' stored probabilities averaged, its temperature fitted on '
        "their averaged val probabilities).",
    ]
    if not tables[0].confs:
        return "\n\n".join([*parts, "No completed trial."])
    parts.append(render(shown[0], "markdown"))
    baseline = sgd_baseline(tables[0].confs, view.space)
    if baseline is not None:
        paired = paired_table(tables[0].confs, baseline, view.space)
        data["paired_baseline"] = paired.baseline.label
        data["paired"] = {
            conf.label: {m: vars(d) for m, d in diffs.items()} for conf, diffs in paired.rows
        }
        parts.append(
            f"Difference of each configuration to {paired.baseline.label}, paired by seed "
            "(`study compare --baseline`): mean [95% Student-t interval] in percentage points, "
            "bold where the interval excludes 0."
        )
        parts.append(render_paired(paired, "markdown"))
    if len(tables) > 1:
        parts.append(
            "Out-of-distribution and corruption evaluation of the final models (SVHN: AUROC of "
            "the max-softmax confidence, test set vs SVHN; -C sets: mean over every corruption "
            "and severity; per corruption and severity in the evidence splits):"
        )
        parts.append(render(shown[1], "markdown"))
    parts += [f"Note: {reason}." for reason in skipped]
    return "\n\n".join(parts)


def sgd_baseline(confs: Sequence[Configuration], space: Space) -> int | None:
    """The row of the first SGD + cross-entropy configuration with at least two seeds."""
    for i, conf in enumerate(confs):
        full = space.train_config(conf.settings)
        if full.method == "sgd" and full.loss == "ce" and len(conf.trials) >= 2:
            return i
    return None


def trial_intervals_section(view: StudyView, data: dict[str, Any]) -> str:
    """Each trial's test ECE with a bootstrap 95% interval over its test samples."""
    parts = ["## Test ECE of each trial, with its bootstrap interval"]
    rows, records = [], {}
    for trial in view.completed:
        ev = view.evidence_of(trial)
        if ev is None:
            continue
        value = float(calibration.ece(ev.probs, ev.labels, N_BINS))
        low, high = calibration.bootstrap_ece(
            ev.probs, ev.labels, BOOTSTRAP_RESAMPLES, N_BINS, seed=trial.number
        )
        smece = calibration.smooth_ece(ev.probs, ev.labels)
        label = describe_trial(trial, view.space)
        rows.append([f"#{trial.number}", label, value, f"[{fmt(low)}, {fmt(high)}]", smece])
        records[trial.number] = {"ece": value, "low": low, "high": high, "smece": smece}
    data["trial_ece_intervals"] = records
    if not rows:
        parts.append("No completed trial has test evidence.")
        return "\n\n".join(parts)
    parts.append(
        f"Recomputed from the Parquet evidence: {BOOTSTRAP_RESAMPLES} resamples of the test "
        "samples with replacement (percentile interval, seeded by the trial number). It measures "
        "the test set's sampling noise only, not the training seed's (the comparison above "
        "shows that); the binned ECE is biased upwards for a nearly calibrated model, which the "
        "interval inherits, and the smooth ECE beside it is the less biased estimate."
    )
    parts.append(
        markdown_table(
            ["trial", "configuration", "ECE", "95% interval", "smooth ECE"], rows, cell=fmt
        )
    )
    return "\n\n".join(parts)


def describe_trial(trial: FrozenTrial, space: Space) -> str:
    """The trial's configuration label and its seed."""
    settings = trial_settings(trial)
    label = describe({k: v for k, v in settings.items() if k != "seed"}, space)
    return f"{label}, seed {space.train_config(settings).seed}"


def regime_section(view: StudyView, path: Path, data: dict[str, Any]) -> str:
    """The regime map, when the study trained SGD and other methods under several budgets."""
    found = regimes(grouped(view.study, view.space), view.space)
    if len(found) < 2:
        data["regimes"] = None
        return ""
    labels = sorted({label for r in found for label in r.methods})
    headers = ["regime", "SGD T", "SGD over-conf. (%)"]
    headers += [f"{label}: Δ {title} (pp)" for label in labels for title in MAP_METRICS.values()]
    rows, records = [], []
    for regime in found:
        diffs = regime.differences(view.space)
        row = [regime_text(regime), fmt(regime.temperature(), 3)]
        row.append(fmt(100 * regime.overconfidence(), 2))
        for label in labels:
            for metric in MAP_METRICS:
                d = diffs.get(label, {}).get(metric)
                row.append("-" if d is None else _interval_cell(d))
        rows.append(row)
        records.append(
            {
                "regime": regime.settings,
                "sgd_temperature": regime.temperature(),
                "sgd_overconfidence": regime.overconfidence(),
                "seeds": len(regime.baseline.trials),
                "differences": {
                    label: {m: vars(d) for m, d in per.items()} for label, per in diffs.items()
                },
            }
        )
    data["regimes"] = records
    draw_regime_map(found, view.space, path)
    return "\n\n".join(
        [
            "## Regime map: when sharpness-aware training helps calibration",
            "Each regime is one training budget (the settings in its row); in each, SGD with "
            "cross-entropy is the baseline. Its fitted temperature T says where the regime lies "
            "(T < 1: SGD underconfident, T > 1: overconfident); each method's test ECE and ECE "
            "after temperature scaling minus SGD's, paired by seed, mean [95% Student-t "
            "interval] in percentage points, bold where the interval excludes 0 (negative: "
            "better calibrated than SGD).",
            markdown_table(headers, rows, cell=fmt),
            "![](regimes.png)",
        ]
    )


def _interval_cell(d: Any) -> str:
    text = f"{100 * d.mean:+.2f}"
    if d.n >= 2:
        text += f" [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
    return f"**{text}**" if d.excludes_zero else text


def draw_reliability(view: StudyView, path: Path) -> bool:
    """Test reliability diagrams of each method's best trial, raw and temperature-scaled."""
    best = _method_best(view)
    if not best:
        return False
    fig, axes = plt.subplots(len(best), 2, figsize=(9, 4.2 * len(best)), squeeze=False)
    for row, (method, trial) in zip(axes, best.items()):
        ev = view.evidence_of(trial)
        assert ev is not None
        title = f"{method} #{trial.number}"
        reliability_axes(row[0], ev.probs, ev.labels, title)
        reliability_axes(row[1], ev.scaled_probs(), ev.labels, f"{title}, T={ev.temperature:.2f}")
    _save(fig, path)
    return True


def ensemble_section(view: StudyView, data: dict[str, Any]) -> str:
    """Averaged test probs of the top-k trials against the best single trial (evidence only)."""
    ranked = [t for t in view.completed if view.evidence_of(t) is not None]
    if ranked:  # only trials tested on the best one's samples (a test_subset is drawn per seed)
        first = view.evidence_of(ranked[0])
        ranked = [t for t in ranked if _same_samples(view.evidence_of(t), first)]
    k = min(TOP_K, len(ranked))
    parts = [f"## Ensemble of the top-{k}"]
    if k == 0:
        data["ensemble"] = None
        parts.append("No completed trial has test evidence: no ensemble.")
        return "\n\n".join(parts)
    members = ranked[:k]
    evs = [view.evidence_of(t) for t in members]
    common = evs[0].sample_ids  # type: ignore[union-attr]
    for ev in evs[1:]:
        common = np.intersect1d(common, ev.sample_ids)  # type: ignore[union-attr]
    aligned = [_select(ev, common) for ev in evs]  # type: ignore[arg-type]
    labels = aligned[0][1]
    single = _ensemble_metrics(aligned[0][0], labels)
    ensemble = _ensemble_metrics(torch.stack([p for p, _ in aligned]).mean(dim=0), labels)
    singles = [_ensemble_metrics(p, labels) for p, _ in aligned]
    mean_single = {m: float(np.mean([s[m] for s in singles])) for m in ENSEMBLE_METRICS}
    numbers = ", ".join(f"#{t.number}" for t in members)
    rows = [
        [f"best single (#{members[0].number})", *(single[m] for m in ENSEMBLE_METRICS)],
        [f"mean of the {k} members", *(mean_single[m] for m in ENSEMBLE_METRICS)],
        [f"ensemble ({numbers})", *(ensemble[m] for m in ENSEMBLE_METRICS)],
    ]
    data["ensemble"] = {
        "k": k,
        "trials": [t.number for t in members],
        "samples": int(common.size),
        "best_single": single,
        "mean_single": mean_single,
        "ensemble": ensemble,
    }
    parts.append(
        f"The {k} best trials by the same ranking that were tested on the same samples; their "
        f"stored test probs are averaged per sample ({common.size} test samples), without "
        "retraining."
    )
    parts.append(
        markdown_table(["model", *(METRIC_TITLES[m] for m in ENSEMBLE_METRICS)], rows, cell=fmt)
    )
    return "\n\n".join(parts)


def _same_samples(ev: TrialEvidence | None, other: TrialEvidence | None) -> bool:
    """The same test samples (ids and labels) in both: their probabilities can be averaged."""
    if ev is None or other is None:
        return False
    return np.array_equal(ev.sample_ids, other.sample_ids) and torch.equal(ev.labels, other.labels)


def _select(ev: TrialEvidence, sample_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.from_numpy(np.searchsorted(ev.sample_ids, sample_ids))
    return ev.probs[index], ev.labels[index]


def _ensemble_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    metrics = probs_metrics(probs, labels)
    return {m: metrics[m] for m in ENSEMBLE_METRICS}


def importance_targets(space: Space) -> list[tuple[str, Callable[[FrozenTrial], float]]]:
    """The objectives to explain: val_accuracy and val_ece, or the weighted objective."""
    if space.objective.type == "pareto":
        return [("val_accuracy", lambda t: t.values[0]), ("val_ece", lambda t: t.values[1])]
    return [("objective", lambda t: t.values[0])]


def compute_importances(view: StudyView) -> dict[str, dict[str, float]] | str:
    """Optuna's importances per objective, or the sentence saying why there are none."""
    told = view.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(told) < 2:
        return (
            f"Parameter importances need at least 2 completed trials (this study has {len(told)})."
        )
    if len(view.space.search) < 2:
        return (
            "Parameter importances are not shown: the study searched "
            f"{len(view.space.search)} parameter(s), so there is nothing to compare."
        )
    out: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, target in importance_targets(view.space):
                found = optuna.importance.get_param_importances(view.study, target=target)
                out[name] = {k: float(v) for k, v in found.items()}
    except Exception as err:  # Optuna refuses some studies (e.g. all values equal)
        return f"Optuna could not compute parameter importances: {err}"
    return out


def importance_section(view: StudyView, path: Path, data: dict[str, Any]) -> str:
    """Importance table and figure, or a sentence."""
    found = compute_importances(view)
    parts = ["## Parameter importance"]
    if isinstance(found, str):
        data["importance"] = None
        parts.append(found)
        return "\n\n".join(parts)
    data["importance"] = found
    params = sorted(
        {p for v in found.values() for p in v},
        key=lambda p: -max(v.get(p, 0.0) for v in found.values()),
    )
    rows = [[p, *(found[t].get(p, math.nan) for t in found)] for p in params]
    parts.append(
        "Optuna's `get_param_importances` (default evaluator) per objective, over the "
        f"{len(view.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))} trials "
        "Optuna holds as complete (diverged ones included, with their worst-case values); "
        "with few trials these are rough."
    )
    parts.append(markdown_table(["parameter", *found], rows, cell=fmt))
    parts.append("![](importance.png)")
    draw_importance(found, path)
    return "\n\n".join(parts)


def draw_importance(found: dict[str, dict[str, float]], path: Path) -> None:
    """One horizontal bar chart per objective."""
    fig, axes = plt.subplots(1, len(found), figsize=(4.6 * len(found), 3.6), squeeze=False)
    for ax, (target, values) in zip(axes[0], found.items()):
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set(xlabel="importance", title=target, xlim=(0, 1))
    _save(fig, path)


def sensitivity_section(view: StudyView, path: Path, data: dict[str, Any]) -> str:
    """Val ECE and val accuracy against rho and gamma, when they were searched."""
    params = [p for p in SENSITIVITY_PARAMS if p in view.space.search]
    parts = ["## Sensitivity to rho and gamma"]
    data["sensitivity"] = params
    if not params or not view.completed:
        parts.append("Neither rho nor gamma was searched (or no trial completed): no figure.")
        return "\n\n".join(parts)
    skipped = [p for p in SENSITIVITY_PARAMS if p not in params]
    text = "Val ECE and val accuracy of every completed trial against " + " and ".join(params)
    text += " (rho on a log axis), coloured by method"
    text += f"; {' and '.join(skipped)} was not searched." if skipped else "."
    parts += [text, "![](sensitivity.png)"]
    draw_sensitivity(view, params, path)
    return "\n\n".join(parts)


def draw_sensitivity(view: StudyView, params: Sequence[str], path: Path) -> None:
    """A grid: rows val ECE / val accuracy, one column per searched param."""
    metrics = [("val_ece", "val ECE"), ("val_accuracy", "val accuracy")]
    fig, axes = plt.subplots(2, len(params), figsize=(4.8 * len(params), 7), squeeze=False)
    methods = view.methods()
    colors = _method_colors(methods)
    for col, param in enumerate(params):
        for row, (key, label) in enumerate(metrics):
            ax = axes[row][col]
            for method in methods:
                trials = [
                    t for t in view.completed if view.method(t) == method and param in t.params
                ]
                if trials:
                    ax.scatter(
                        [t.params[param] for t in trials],
                        [_val(t, key) for t in trials],
                        color=colors[method],
                        label=method,
                        s=30,
                    )
            if param == "rho":
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set(xlabel=param, ylabel=label)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize="small")
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_view(paths: StudyPaths, name: str, space: Space) -> StudyView:
    """The study, its ranked completed trials and their test evidence."""
    study = load_optuna_study(name, paths.optuna_url)
    completed = ranked_completed(study, space)
    ids = [str(t.user_attrs.get(TRIAL_ID_ATTR, "")) for t in completed]
    evidence = load_test_evidence(paths.evidence, ids)
    return StudyView(name=name, space=space, study=study, completed=completed, evidence=evidence)


def log_report(report_dir: Path, tracking: dict[str, str]) -> bool:
    """Log the report directory to the study's parent MLflow run; warn (only) on failure."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking["tracking_uri"])
        client.log_artifacts(tracking["parent_run_id"], str(report_dir), artifact_path="report")
    except Exception as err:  # the files on disk are the report; MLflow only mirrors them
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        warn(f"could not log the report to MLflow: {reason}")
        return False
    return True


def write_report(
    paths: StudyPaths, name: str, space: Space, tracking: dict[str, str] | None = None
) -> Path:
    """Write ``<study dir>/report/`` (Markdown, JSON numbers, figures) and return report.md's path.

    The directory is built beside the old one and swapped in whole (``replace_directory``): a
    failed write keeps the previous report, and figures of an earlier report never linger. With
    ``tracking`` (what ``runner.load_tracking`` returns), the directory is also logged to the
    study's parent MLflow run under ``report/``; an MLflow failure only prints a warning.
    """
    view = load_view(paths, name, space)
    replace_directory(paths.report, lambda report_dir: _write_files(view, paths, report_dir))
    if tracking and tracking.get("tracking_uri") and tracking.get("parent_run_id"):
        log_report(paths.report, tracking)
    return paths.report / REPORT_FILE


def partial_notice(view: StudyView, data: dict[str, Any]) -> str | None:
    """A warning at the top of the report of a study that has not finished all its trials."""
    finished = sum(t.state.is_finished() for t in view.study.get_trials(deepcopy=False))
    data["partial"] = finished < view.space.trials
    data["trials_finished"] = finished
    if not data["partial"]:
        return None
    return (
        f"> **Partial report:** {finished} of {view.space.trials} trials finished (the study was "
        f"interrupted or is still running); `study resume {view.name}` completes it."
    )


def _write_files(view: StudyView, paths: StudyPaths, report_dir: Path) -> None:
    """Every section and figure of the report, into the (new, empty) ``report_dir``."""
    data: dict[str, Any] = {"study": view.name}
    sections = [header_section(view, paths, data)]
    notice = partial_notice(view, data)
    if notice:
        sections.append(notice)
    sections.append(front_section(view, data))
    draw_pareto(view, report_dir / "pareto.png")
    sections.append(comparison_section(view, data, paths.evidence))
    sections.append(methods_section(view, data))
    draw_reliability(view, report_dir / "reliability.png")
    sections.append(trial_intervals_section(view, data))
    regime = regime_section(view, report_dir / "regimes.png", data)
    if regime:
        sections.append(regime)
    sections.append(ensemble_section(view, data))
    sections.append(importance_section(view, report_dir / "importance.png", data))
    sections.append(sensitivity_section(view, report_dir / "sensitivity.png", data))
    text = "\n\n".join(sections) + "\n"
    (report_dir / REPORT_FILE).write_text(text)
    page = report_html(text, report_dir, f"Study report: {view.name}")
    (report_dir / HTML_FILE).write_text(page)
    (report_dir / DATA_FILE).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
