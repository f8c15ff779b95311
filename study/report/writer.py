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
Temperature scaling uses the evidence's ``temperature`` (fitted on val by the trial); the
metrics and their titles are the metric registry's (``trainables.metrics.METRICS``).

The report is its sections (``study.report.sections.SECTIONS``), in registration order: each is
``section(view) -> Section`` (Markdown, figures, report.json numbers); the built-in ones are
defined here and in ``study.report.sections``, and ``_write_files`` writes what they return. The
figures are drawn by ``study.report.figures``.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search_spaces.schema import Space
from study.analysis.compare import (
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
from study.analysis.epochs import epoch_of
from study.analysis.front import front_points
from study.analysis.regimes import MAP_METRICS, draw_regime_map, regime_text, regimes
from study.analysis.tables import markdown_table
from study.output import warn
from study.report.figures import (
    Figure,
    draw_importance,
    draw_pareto,
    draw_reliability,
    draw_sensitivity,
    save_figure,
    trial_value,
)
from study.report.html import HTML_FILE, report_html
from study.report.sections import SECTIONS, Section, figure_name
from study.report.view import (
    StudyView,
    fmt,
    fmt_param,
    inert,
    load_view,
    method_best,
    repeat_group,
    sgd_baseline,
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
from trainables.errors import PluginError
from trainables.layout import StudyPaths
from trainables.metrics import METRICS, Metric, calibration
from trainables.metrics.base import stored_metrics
from trainables.metrics.objectives import directions, is_cost
from trainables.trial.hold import hold_driver_if_asked

REPORT_FILE = "report.md"
DATA_FILE = "report.json"
TOP_K = 5
SENSITIVITY_PARAMS = ("rho", "gamma")


def report_metrics() -> list[Metric]:
    """The columns of the per-method table: the metrics recomputed from evidence that the report
    shows (``Metric.in_report``), in registration order; the fitted T comes last."""
    return [m for m in stored_metrics() if m.in_report]


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
        terms = [m for m in objective.metrics if not is_cost(m)]
        known = directions()
        score = " ".join(f"{'+' if known[m] == 'max' else '-'} {m}" for m in terms).removeprefix(
            "+ "
        )
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


def header_section(view: StudyView) -> Section:
    """Title and the study's settings."""
    data: dict[str, Any] = {}
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
        ["study directory", f"`{view.paths.root if view.paths is not None else '-'}`"],
    ]
    data["settings"] = {r[0]: r[1] for r in rows}
    lines = [f"# Study report: {view.name}"]
    if space.description:
        lines.append(inert(space.description))
    lines.append(markdown_table(["setting", "value"], [[k, inert(v)] for k, v in rows], cell=fmt))
    return Section("\n\n".join(lines), data=data)


def front_section(view: StudyView) -> Section:
    """The Pareto front (or the best trial) as Optuna holds it, with the logged metrics."""
    data: dict[str, Any] = {}
    params = [p for p in view.space.search if p != "method"]
    metric_keys = ["test_accuracy", "test_ece", "test_ece_ts", "test_nll"]
    objective_keys = list(view.space.objective.metrics)
    late = bool(view.space.late_fraction)
    headers = ["trial", *(["epoch"] if late else []), "Tune id", "method", *params, *objective_keys]
    headers += [f"test {METRICS.get(k.removeprefix('test_')).heading}" for k in metric_keys]
    if not view.pareto:
        headers.append("objective")
    rows, records = [], []
    for trial in front_points(view.study, view.space):
        tune_id = str(trial.user_attrs.get(TRIAL_ID_ATTR, ""))
        row: list[Any] = [str(trial.number), *([str(epoch_of(trial))] if late else [])]
        row += [tune_id, view.method(trial)]
        row += [fmt_param(trial.params.get(p, "-")) for p in params]
        row += [trial_value(trial, k) for k in objective_keys]
        row += [trial_value(trial, k) for k in metric_keys]
        if not view.pareto:
            row.append(float(trial.values[0]))
        rows.append(row)
        records.append(
            {
                "trial": trial.number,
                "epoch": epoch_of(trial),
                "tune_id": tune_id,
                "method": view.method(trial),
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
    if late:
        intro += (
            f" Late checkpoints were kept (the last {view.space.late_fraction:g} of each trial's "
            "epochs): the front is over (trial, epoch) pairs, each row's metrics and model those "
            "of its epoch."
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
    return Section(
        "\n\n".join(parts), data=data, figures={"pareto.png": lambda path: draw_pareto(view, path)}
    )


def _cell(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} ± {fmt(std)}"


def methods_section(view: StudyView) -> Section:
    """Best trial per method: test metrics recomputed from the evidence (mean ± std over seeds)."""
    data: dict[str, Any] = {}
    best = method_best(view)
    diagrams = {m: (t, view.evidence_of(t)) for m, t in best.items()}
    figures = {"reliability.png": lambda path: draw_reliability(diagrams, path)}  # type: ignore[arg-type]
    shown = report_metrics()
    keys = [m.name for m in shown]
    logged = {m.name: m.test_key for m in shown}  # the key the trial logged it under
    headers = ["method", "trial", "seeds", *(m.heading for m in shown), "T"]
    rows, records, gaps = [], {}, []
    for method, trial in best.items():
        group = [t for t in repeat_group(trial, view.completed) if view.evidence_of(t)]
        metrics = [split_metrics(view.evidence_of(t)) for t in group]  # type: ignore[arg-type]
        for t, m in zip(group, metrics):
            gaps += [
                abs(m[k] - float(t.user_attrs[a]))
                for k, a in logged.items()
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
        return Section("\n\n".join(parts), figures, data)
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
    return Section("\n\n".join(parts), figures, data)


def comparison_section(view: StudyView) -> Section:
    """Every configuration (best per method and loss when there are many), mean ± std over its
    seeds, and the deep ensemble of each configuration's seeds (from the ``evidence``), as
    ``study compare --ensembles`` prints them; OOD and corruption metrics in a second table."""
    data: dict[str, Any] = {}
    tables = comparison_tables(view.study, view.space)
    skipped: list[str] = []
    shown = with_ensembles(tables, view.evidence_root, skipped) if tables[0].confs else tables
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
        return Section("\n\n".join([*parts, "No completed trial."]), data=data)
    parts.append(render(shown[0], "markdown"))
    baseline = sgd_baseline(tables[0].confs, view.space)
    if baseline is not None:
        paired = paired_table(tables[0].confs, baseline, view.space, paired_columns(tables))
        data["paired_baseline"] = paired.baseline.label
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
    return Section("\n\n".join(parts), data=data)


def trial_intervals_section(view: StudyView) -> Section:
    """Each trial's test ECE with a bootstrap 95% interval over its test samples."""
    data: dict[str, Any] = {}
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
        return Section("\n\n".join(parts), data=data)
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
    return Section("\n\n".join(parts), data=data)


def describe_trial(trial: FrozenTrial, space: Space) -> str:
    """The trial's configuration label and its seed."""
    settings = trial_settings(trial)
    label = describe({k: v for k, v in settings.items() if k != "seed"}, space)
    return f"{label}, seed {space.train_config(settings).seed}"


def regime_section(view: StudyView) -> Section:
    """The regime map, when the study trained SGD and other methods under several budgets."""
    data: dict[str, Any] = {}
    found = regimes(grouped(view.study, view.space), view.space)
    if len(found) < 2:
        return Section(data={"regimes": None})
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
    text = "\n\n".join(
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
    return Section(
        text, {"regimes.png": lambda path: draw_regime_map(found, view.space, path)}, data
    )


def _interval_cell(d: Any) -> str:
    text = f"{100 * d.mean:+.2f}"
    if d.n >= 2:
        text += f" [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
    return f"**{text}**" if d.excludes_zero else text


def ensemble_section(view: StudyView) -> Section:
    """Averaged test probs of the top-k trials against the best single trial (evidence only)."""
    data: dict[str, Any] = {}
    ranked = [t for t in view.completed if view.evidence_of(t) is not None]
    if ranked:  # only trials tested on the best one's samples (a test_subset is drawn per seed)
        first = view.evidence_of(ranked[0])
        ranked = [t for t in ranked if same_samples([view.evidence_of(t), first])]
    k = min(TOP_K, len(ranked))
    parts = [f"## Ensemble of the top-{k}"]
    if k == 0:
        data["ensemble"] = None
        parts.append("No completed trial has test evidence: no ensemble.")
        return Section("\n\n".join(parts), data=data)
    members = ranked[:k]
    splits: list[StoredSplit] = [view.evidence_of(t) for t in members]  # type: ignore[misc]
    numbers = [t.number for t in members]
    if any(s.probs is None for s in splits):
        refused = f"no ensemble of the top-{k}: {NO_PROBS}"
        data["ensemble"] = {"k": k, "trials": numbers, "refused": refused}
        return Section("\n\n".join([*parts, f"{refused[0].upper()}{refused[1:]}."]), data=data)
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
        markdown_table(
            ["model", *(METRICS.get(m).heading for m in ENSEMBLE_METRICS)], rows, cell=fmt
        )
    )
    return Section("\n\n".join(parts), data=data)


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


def importance_section(view: StudyView) -> Section:
    """Importance table and figure, or a sentence."""
    data: dict[str, Any] = {}
    found = compute_importances(view)
    parts = ["## Parameter importance"]
    if isinstance(found, str):
        data["importance"] = None
        parts.append(found)
        return Section("\n\n".join(parts), data=data)
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
    figures = {"importance.png": lambda path: draw_importance(found, path)}
    return Section("\n\n".join(parts), figures, data)


def sensitivity_section(view: StudyView) -> Section:
    """Val ECE and val accuracy against rho and gamma, when they were searched."""
    data: dict[str, Any] = {}
    params = [p for p in SENSITIVITY_PARAMS if p in view.space.search]
    parts = ["## Sensitivity to rho and gamma"]
    data["sensitivity"] = params
    if not params or not view.completed:
        parts.append("Neither rho nor gamma was searched (or no trial completed): no figure.")
        return Section("\n\n".join(parts), data=data)
    skipped = [p for p in SENSITIVITY_PARAMS if p not in params]
    text = "Val ECE and val accuracy of every completed trial against " + " and ".join(params)
    text += " (rho on a log axis), coloured by method"
    text += f"; {' and '.join(skipped)} was not searched." if skipped else "."
    parts += [text, "![](sensitivity.png)"]
    figures = {"sensitivity.png": lambda path: draw_sensitivity(view, params, path)}
    return Section("\n\n".join(parts), figures, data)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def evidence_notice(view: StudyView) -> Section:
    """The trials whose evidence is missing or unreadable, at the top of the report."""
    data: dict[str, Any] = {}
    data["evidence_left_out"] = list(view.notes)
    if not view.notes:
        return Section(data=data)
    lines = [f"> - {inert(note)}" for note in view.notes]
    text = "\n".join(["> **Evidence left out** of every recomputed metric:", ">", *lines])
    return Section(text, data=data)


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
        replace_directory(paths.report, lambda report_dir: _write_files(view, report_dir))
    except OSError as err:  # a full disk or a read-only directory half-way: the old one stays
        raise StudyFilesError(
            f"the report of study {name!r} could not be written to {paths.report} "
            f"({err.strerror or type(err).__name__}); the previous report is kept: free space "
            f"or make it writable, then run 'study report {name}' again"
        ) from None
    if tracking and tracking.get("tracking_uri") and tracking.get("parent_run_id"):
        log_report(paths.report, tracking)
    return paths.report / REPORT_FILE


def partial_notice(view: StudyView) -> Section:
    """A warning at the top of the report of a study that has not finished all its trials."""
    data: dict[str, Any] = {}
    finished = finished_count(view.study)
    data["partial"] = finished < view.space.trials
    data["trials_finished"] = finished
    if not data["partial"]:
        return Section(data=data)
    return Section(
        f"> **Partial report:** {finished} of {view.space.trials} trials finished (the study was "
        f"interrupted or is still running); `study resume {view.name}` completes it.",
        data=data,
    )


def _write_files(view: StudyView, report_dir: Path) -> None:
    """Every section of the report (``SECTIONS``, in registration order) and its figures,
    into the (new, empty) ``report_dir``."""
    hold_driver_if_asked("report")
    data: dict[str, Any] = {"study": view.name}
    texts = []
    for name, section in SECTIONS.items():
        found = section(view)
        if not isinstance(found, Section):
            raise PluginError(
                f"report section {name!r} from {SECTIONS.origin(name)} returned "
                f"{type(found).__name__}, not a Section: return Section(text, figures, data)"
            )
        if found.text:
            texts.append(found.text)
        data.update(found.data)
        for file, figure in found.figures.items():
            _write_figure(name, file, figure, report_dir)
    text = "\n\n".join(texts) + "\n"
    (report_dir / REPORT_FILE).write_text(text)
    page = report_html(text, report_dir, f"Study report: {view.name}")
    (report_dir / HTML_FILE).write_text(page)
    (report_dir / DATA_FILE).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _write_figure(section: str, file: str, figure: Any, report_dir: Path) -> None:
    """One of a section's figures into ``report_dir``: a matplotlib figure saved as PNG, a
    drawn file copied, or a function that draws to the path it is given."""
    try:
        path = report_dir / figure_name(file)
    except ValueError as err:
        raise PluginError(f"report section {section!r}: {err}") from None
    if isinstance(figure, Figure):
        save_figure(figure, path)
    elif isinstance(figure, (str, Path)):
        shutil.copyfile(figure, path)
    elif callable(figure):
        figure(path)
    else:
        raise PluginError(
            f"report section {section!r}: figure {file!r} is a {type(figure).__name__}; give a "
            "matplotlib Figure, a file's path, or a function that draws to a path"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
