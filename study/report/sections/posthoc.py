"""The report's post-hoc calibration section: every configuration after each calibrator of
``study.analysis.calibrators`` (fitted on each trial's val evidence), its paired differences to the SGD
baseline after the same calibrator, and, where the study stored corruption splits, calibration
under shift: ECE against severity, raw and after temperature scaling (``shift.png``).

Written for the studies whose report pairs configurations against an SGD baseline (the paper
presets: fixed rows, several seeds); a search study has no such row and gets no section, which
also keeps the calibrators' fits out of every other report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from search_spaces.schema import Space
from study.analysis.calibrators import CALIBRATORS, short_title
from study.analysis.compare import (
    Column,
    Table,
    comparison_tables,
    paired_table,
    render,
    render_paired,
    split_title,
)
from study.analysis.posthoc import (
    NONE,
    Recalibrated,
    calibrated_tables,
    posthoc_metrics,
)
from study.report.sections import Section
from study.report.view import StudyView, sgd_baseline
from trainables.config import SEVERITIES
from trainables.evaluation.splits import shift_splits
from trainables.metrics import Metric

SHIFT_FIGURE = "shift.png"


def table_metrics() -> list[Metric]:
    """The metrics with a table after each calibrator: the post-hoc ones that are minimised
    (ECE, smooth ECE, NLL)."""
    return [m for m in posthoc_metrics() if m.direction == "min"]


def _short(name: str) -> str:
    """A column's heading: ``none``, or the calibrator's ``short`` title."""
    return NONE if name == NONE else short_title(name)


def _by_calibrator(key: str, better: str = "min", percent: bool = True) -> dict[str, Column]:
    """Columns ``<key>@<calibrator>`` for none and every calibrator."""
    return {f"{key}@{n}": Column(_short(n), better, percent) for n in (NONE, *CALIBRATORS)}


def posthoc_section(view: StudyView) -> Section:
    """The section of a study whose report pairs its configurations against an SGD baseline
    (``sgd_baseline``); none otherwise."""
    confs = comparison_tables(view.study, view.space)[0].confs
    baseline = sgd_baseline(confs, view.space)
    found = posthoc_part(view.study, view.space, view.evidence_root, baseline)
    return found if found is not None else Section()


def posthoc_part(
    study: optuna.Study, space: Space, evidence: str, baseline: int | None
) -> Section | None:
    """The section against row ``baseline`` (None: no section, nor without a trial with val
    and test probabilities): its Markdown, its numbers under ``posthoc`` and, where the study
    stored corruption splits, ``shift.png``."""
    if baseline is None:
        return None
    confs = comparison_tables(study, space)[0].confs
    notes: list[str] = []
    tables = calibrated_tables(confs, evidence, CALIBRATORS, notes)
    rows = [c for c in tables[0][1].confs if isinstance(c, Recalibrated)] if tables else []
    if not any(c.metrics for c in rows):
        return None
    parts = [
        "## Post-hoc calibration",
        "Each trial recalibrated after training (`study compare --calibrators "
        f"{','.join(CALIBRATORS)}`): every calibrator fitted on the trial's own val evidence and "
        "applied to its test rows; none = the stored probabilities. TS temperature, VS vector "
        "and MS matrix (Dirichlet) scaling on log-probabilities, HB histogram binning, Iso "
        "isotonic regression. Mean ± std over seeds.",
    ]
    data: dict[str, Any] = {"posthoc": {}}
    figures: dict[str, Any] = {}
    for metric in table_metrics():
        columns = _by_calibrator(metric.test_key, percent=metric.percent)
        parts += [
            f"Test {metric.heading} after each calibrator:",
            render(Table(rows, columns), "markdown"),
        ]
        data["posthoc"][metric.name] = {c.label: {k: c.mean_std(k) for k in columns} for c in rows}
    paired = paired_table(rows, baseline, space, _by_calibrator("test_ece"))
    data["posthoc"]["paired_ece"] = {
        conf.label: {m: vars(d) for m, d in diffs.items()} for conf, diffs in paired.rows
    }
    parts += [
        f"Difference of test ECE to {paired.baseline.label} *after the same calibrator*, paired "
        "by seed: mean [95% Student-t interval] in percentage points, bold where it excludes 0."
        + paired.tasks_note(),
        render_paired(paired, "markdown"),
    ]
    shifted = [
        s
        for s in shift_splits()
        if any(f"{s}_ece@none" in m for c in rows for m in c.metrics.values())
    ]
    for split in shifted:
        parts += [
            f"{split_title(split)}: ECE averaged over corruptions and severities, each "
            "calibrator fitted on *clean* val:",
            render(Table(rows, _by_calibrator(f"{split}_ece")), "markdown"),
        ]
        data["posthoc"][split] = {
            c.label: {
                f"s{s}@{n}": c.mean_std(f"{split}_s{s}_ece@{n}")[0]
                for s in SEVERITIES
                for n in (NONE, *CALIBRATORS)
            }
            for c in rows
        }
    if shifted:
        figures[SHIFT_FIGURE] = lambda path: draw_shift(rows, shifted, path)
        parts.append(f"![]({SHIFT_FIGURE})")
    parts += [f"Note: {note}." for note in notes]
    return Section("\n\n".join(parts), figures, data)


def severity_curve(conf: Recalibrated, split: str, calibrator: str) -> list[float]:
    """Mean ECE over seeds at severity 0 (the clean test split) and 1..5."""
    keys = [f"test_ece@{calibrator}"] + [f"{split}_s{s}_ece@{calibrator}" for s in SEVERITIES]
    return [conf.mean_std(k)[0] for k in keys]


def draw_shift(rows: Sequence[Recalibrated], splits: Sequence[str], path: Path) -> None:
    """ECE against severity (0: clean test), one colour per configuration that stored the split:
    a row of two panels per split, before calibration and after temperature scaling fitted on
    clean val, on one y axis."""
    from study.report.figures import plt, save_figure

    fig, axes = plt.subplots(
        len(splits), 2, figsize=(14, 4.2 * len(splits)), squeeze=False, sharey="row"
    )
    cmap = plt.get_cmap("tab20")
    for panels, split in zip(axes, splits):
        shown = [c for c in rows if np.isfinite(severity_curve(c, split, NONE)[1:]).any()]
        for ax, (calibrator, title) in zip(panels, ((NONE, "raw"), ("ts", "after TS"))):
            for i, conf in enumerate(shown):
                curve = np.array(severity_curve(conf, split, calibrator)) * 100
                label = conf.label if len(conf.label) <= 40 else conf.label[:39] + "…"
                ax.plot(range(6), curve, color=cmap(i % 20), marker="o", ms=3, label=label)
            ax.set_xticks(range(6), ["clean", *map(str, SEVERITIES)])
            ax.set_xlabel("corruption severity")
            ax.set_title(f"{split_title(split)}: {title}")
            ax.grid(alpha=0.3)
        panels[0].set_ylabel("ECE (%), mean over corruptions and seeds")
        panels[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save_figure(fig, path)
