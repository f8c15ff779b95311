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
``trainables.metrics.calibration`` from the per-sample Parquet evidence (``study.storage.evidence`` reads it: each
metric from its exact float32 column where one exists, Brier and classwise ECE from the float16
``probs``), not copied from what the trials logged; the report says how far the two differ.
Temperature scaling uses the evidence's ``temperature`` (fitted on val by the trial). The sections
are assembled here; the figures are drawn by ``study.report.figures``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search_spaces.schema import Space
from study.analysis.compare import (
    Configuration,
    comparison_tables,
    describe,
    grouped,
    mean_std,
    paired_columns,
    paired_table,
    render,
    render_paired,
)
from study.analysis.ensembles import with_ensembles
from study.analysis.front import best_trials
from study.analysis.regimes import MAP_METRICS, draw_regime_map, regime_text, regimes
from study.analysis.tables import markdown_table
from study.output import warn
from study.report.figures import (
    draw_importance,
    draw_pareto,
    draw_reliability,
    draw_sensitivity,
    trial_value,
)
from study.report.html import HTML_FILE, report_html
from study.report.sections.posthoc import posthoc_section
from study.report.sections.search import search_section
from study.report.view import (
    StudyView,
    fmt,
    fmt_param,
    inert,
    load_view,
    method_best,
    repeat_group,
)
from study.storage.evidence import (
    N_BINS,
    NO_PROBS,
    StoredSplit,
    mean_split,
    same_samples,
    split_metrics,
)
from study.storage.files import StudyFilesError
from study.storage.records import (
    STATUS_ATTR,
    TRIAL_ID_ATTR,
    finished_count,
    trial_settings,
)
from trainables.atomic import replace_directory
from trainables.layout import StudyPaths
from trainables.metrics import calibration
from trainables.metrics.objectives import COST_METRICS, DIRECTIONS
from trainables.trial.hold import hold_driver_if_asked

REPORT_FILE = "report.md"
DATA_FILE = "report.json"
TOP_K = 5
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
# Sections: each returns its Markdown, records its numbers in ``data`` and draws its figure
# --------------------------------------------------------------------------------------------


def _objective_text(space: Space) -> str:
    objective = space.objective
    if objective.type == "pareto":
        goals = ", ".join(f"{'maximize' if d == 'max' else 'minimize'} {m}"
                          for m, d in zip(objective.metrics, objective.modes, strict=True))  # fmt: skip
        return f"pareto ({goals})"
    return f"weighted (maximize {objective.names[0]})"


def _directions_text(space: Space) -> str:
    """``val_accuracy up, val_ece down``: the Pareto metrics and their directions."""
    objective = space.objective
    return ", ".join(
        f"{m} {'up' if d == 'max' else 'down'}"
        for m, d in zip(objective.metrics, objective.modes, strict=True)
    )


def _rank_text(space: Space) -> str:
    objective = space.objective
    if objective.type == "pareto":
        terms = [m for m in objective.metrics if m not in COST_METRICS]
        score = " ".join(
            f"{'+' if DIRECTIONS[m] == 'max' else '-'} {m}" for m in terms
        ).removeprefix("+ ")
        return (
            f"Trials are ranked by **{score}** (highest first): the Pareto front has no single "
            "best trial, so this scalarisation picks one."
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
        lines.append(inert(space.description))
    lines.append(markdown_table(["setting", "value"], [[k, inert(v)] for k, v in rows], cell=fmt))
    return "\n\n".join(lines)


def front_section(view: StudyView, data: dict[str, Any]) -> str:
    """The Pareto front (or the best trial) as Optuna holds it, with the logged metrics."""
    params = [p for p in view.space.search if p != "method"]
    metric_keys = ["test_accuracy", "test_ece", "test_ece_ts", "test_nll"]
    objective_keys = list(view.space.objective.metrics)
    headers = ["trial", "Tune id", "method", *params, *objective_keys]
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
        row += [trial_value(trial, k) for k in objective_keys]
        row += [trial_value(trial, k) for k in metric_keys]
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
        f"Optuna's Pareto front over ({_directions_text(view.space)}); test metrics as the "
        "trials logged them."
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


def _cell(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} ± {fmt(std)}"


def methods_section(view: StudyView, data: dict[str, Any]) -> str:
    """Best trial per method: test metrics recomputed from the evidence (mean ± std over seeds)."""
    best = method_best(view)
    keys = list(METRIC_TITLES)
    headers = ["method", "trial", "seeds", *METRIC_TITLES.values(), "T"]
    rows, records, gaps = [], {}, []
    for method, trial in best.items():
        group = [t for t in repeat_group(trial, view.completed) if view.evidence_of(t)]
        metrics = [split_metrics(view.evidence_of(t)) for t in group]  # type: ignore[arg-type]
        for t, m in zip(group, metrics):
            gaps += [
                abs(m[k] - float(t.user_attrs[a]))
                for k, a in LOGGED.items()
                if isinstance(t.user_attrs.get(a), (int, float)) and math.isfinite(m[k])
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
        "Test metrics recomputed from the Parquet evidence with `trainables.metrics.calibration` "
        f"({N_BINS} bins): accuracy, the ECEs, over-confidence and NLL from the float32 columns "
        "(correct, confidence, confidence after the trial's val-fitted temperature T, the "
        "label's probability); Brier and classwise ECE from the float16 probability vectors "
        f"(n/a where the {NO_PROBS}). Where trials repeat the best trial's parameters with other "
        "seeds, cells show mean ± std over them."
    )
    parts.append(markdown_table(headers, rows, cell=fmt))
    if gaps:
        parts.append(
            f"Largest difference between these recomputed metrics and the ones the trials logged: "
            f"{max(gaps):.1e} (float16 storage of the probability vectors)."
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
        paired = paired_table(tables[0].confs, baseline, view.space, paired_columns(tables))
        data["paired_baseline"] = paired.baseline.label
        data["paired_row"] = baseline
        data["paired"] = {
            conf.label: {m: vars(d) for m, d in diffs.items()} for conf, diffs in paired.rows
        }
        parts.append(
            f"Difference of each configuration to {paired.baseline.label}, paired by seed "
            "(`study compare --baseline`): mean [95% Student-t interval] in percentage points, "
            "bold where the interval excludes 0." + paired.tasks_note()
        )
        parts.append(render_paired(paired, "markdown"))
    if len(tables) > 1:
        parts.append(
            "Out-of-distribution and corruption evaluation of the final models (SVHN, digits, "
            "held-out classes: AUROC and AUPR of the max-softmax confidence and AUROC of minus "
            "the predictive entropy, the test set as the positive class; -C sets: mean over "
            "every corruption and severity; per corruption and severity in the evidence splits):"
        )
        parts.append(render(shown[1], "markdown"))
    parts += [f"Note: {reason}." for reason in skipped if reason not in view.notes]
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
        scores, labels = ev.top_label()
        value = float(calibration.ece(scores, labels, N_BINS))
        low, high = calibration.bootstrap_ece(
            scores, labels, BOOTSTRAP_RESAMPLES, N_BINS, seed=trial.number
        )
        smece = calibration.smooth_ece(scores, labels)
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


def ensemble_section(view: StudyView, data: dict[str, Any]) -> str:
    """Averaged test probs of the top-k trials against the best single trial (evidence only)."""
    ranked = [t for t in view.completed if view.evidence_of(t) is not None]
    if ranked:  # only trials tested on the best one's samples (a test_subset is drawn per seed)
        first = view.evidence_of(ranked[0])
        ranked = [t for t in ranked if same_samples([view.evidence_of(t), first])]
    k = min(TOP_K, len(ranked))
    parts = [f"## Ensemble of the top-{k}"]
    if k == 0:
        data["ensemble"] = None
        parts.append("No completed trial has test evidence: no ensemble.")
        return "\n\n".join(parts)
    members = ranked[:k]
    splits: list[StoredSplit] = [view.evidence_of(t) for t in members]  # type: ignore[misc]
    numbers = [t.number for t in members]
    if any(s.probs is None for s in splits):
        refused = f"no ensemble of the top-{k}: {NO_PROBS}"
        data["ensemble"] = {"k": k, "trials": numbers, "refused": refused}
        return "\n\n".join([*parts, f"{refused[0].upper()}{refused[1:]}."])
    singles = [split_metrics(s, ENSEMBLE_METRICS) for s in splits]
    mean_single = {m: float(np.mean([s[m] for s in singles])) for m in ENSEMBLE_METRICS}
    ensemble = split_metrics(mean_split(splits), ENSEMBLE_METRICS)
    rows = [
        [f"best single (#{numbers[0]})", *(singles[0][m] for m in ENSEMBLE_METRICS)],
        [f"mean of the {k} members", *(mean_single[m] for m in ENSEMBLE_METRICS)],
        [f"ensemble ({', '.join(f'#{n}' for n in numbers)})", *ensemble.values()],
    ]
    data["ensemble"] = {
        "k": k,
        "trials": numbers,
        "samples": len(splits[0].keys),
        "best_single": singles[0],
        "mean_single": mean_single,
        "ensemble": ensemble,
    }
    parts.append(
        f"The {k} best trials by the same ranking that were tested on the same samples; their "
        f"stored test probs are averaged per sample ({len(splits[0].keys)} test samples), "
        "without retraining (the ensemble's NLL from the mean of their float32 probabilities "
        "of the label)."
    )
    parts.append(
        markdown_table(["model", *(METRIC_TITLES[m] for m in ENSEMBLE_METRICS)], rows, cell=fmt)
    )
    return "\n\n".join(parts)


def importance_targets(space: Space) -> list[tuple[str, Callable[[FrozenTrial], float]]]:
    """The objectives to explain: each Pareto metric, or the weighted objective."""
    if space.objective.type == "pareto":
        return [
            (name, lambda t, i=i: t.values[i]) for i, name in enumerate(space.objective.metrics)
        ]
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


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def evidence_notice(view: StudyView) -> str | None:
    """The trials whose evidence is missing or unreadable, at the top of the report."""
    if not view.notes:
        return None
    lines = [f"> - {inert(note)}" for note in view.notes]
    return "\n".join(["> **Evidence left out** of every recomputed metric:", ">", *lines])


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
    ``tracking`` (what ``storage.load_tracking`` returns), the directory is also logged to the
    study's parent MLflow run under ``report/``; an MLflow failure only prints a warning.
    """
    view = load_view(paths, name, space)
    try:
        replace_directory(paths.report, lambda report_dir: _write_files(view, paths, report_dir))
    except OSError as err:  # a full disk or a read-only directory half-way: the old one stays
        raise StudyFilesError(
            f"the report of study {name!r} could not be written to {paths.report} "
            f"({err.strerror or type(err).__name__}); the previous report is kept: free space "
            f"or make it writable, then run 'study report {name}' again"
        ) from None
    if tracking and tracking.get("tracking_uri") and tracking.get("parent_run_id"):
        log_report(paths.report, tracking)
    return paths.report / REPORT_FILE


def partial_notice(view: StudyView, data: dict[str, Any]) -> str | None:
    """A warning at the top of the report of a study that has not finished all its trials."""
    finished = finished_count(view.study)
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
    hold_driver_if_asked("report")
    data: dict[str, Any] = {"study": view.name}
    sections = [header_section(view, paths, data)]
    notice = partial_notice(view, data)
    if notice:
        sections.append(notice)
    data["evidence_left_out"] = list(view.notes)
    evidence_note = evidence_notice(view)
    if evidence_note:
        sections.append(evidence_note)
    sections.append(front_section(view, data))
    draw_pareto(view, report_dir / "pareto.png")
    sections.append(search_section(view, report_dir / "search.png", data))
    sections.append(comparison_section(view, data, paths.evidence))
    posthoc = posthoc_section(
        view.study, view.space, paths.evidence, data.pop("paired_row", None),
        report_dir / "shift.png", data,
    )  # fmt: skip
    if posthoc:
        sections.append(posthoc)
    sections.append(methods_section(view, data))
    best = {m: (t, view.evidence_of(t)) for m, t in method_best(view).items()}
    draw_reliability(best, report_dir / "reliability.png")  # type: ignore[arg-type]
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
