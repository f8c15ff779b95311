"""The figures of ``study report``: the Pareto plot, reliability diagrams, parameter importances
and sensitivity to rho and gamma (the regime map is drawn by ``study.analysis.regimes``). Each takes what
``study.report.writer`` assembled and writes one PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.trial import FrozenTrial  # noqa: E402

from study.analysis.front import front_points  # noqa: E402
from study.storage.evidence import StoredSplit  # noqa: E402
from study.storage.records import EPOCH_ATTR  # noqa: E402
from trainables.evaluation.plots import reliability_axes  # noqa: E402

if TYPE_CHECKING:
    from study.report.view import StudyView


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """One tab10 colour per method, in order."""
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def trial_value(trial: FrozenTrial, key: str) -> float:
    """A number the trial logged (a user attribute), NaN when it has none."""
    value = trial.user_attrs.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def draw_pareto(view: StudyView, path: Path) -> None:
    """The objective's two plotted metrics (``Objective.plot_axes``; val accuracy against val
    ECE by default) of every completed trial, the front ringed and joined (a three-metric
    front is shown in these two)."""
    x_key, y_key = view.space.objective.plot_axes
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    methods = view.methods()
    colors = method_colors(methods)
    for method in methods:
        trials = [t for t in view.completed if view.method(t) == method]
        ax.scatter(
            [trial_value(t, x_key) for t in trials],
            [trial_value(t, y_key) for t in trials],
            color=colors[method],
            label=method,
            s=36,
            zorder=3,
        )
    done = {t.number for t in view.completed}
    front = sorted(
        (t for t in front_points(view.study, view.space) if t.number in done),
        key=lambda t: trial_value(t, x_key),
    )
    if front:
        xs = [trial_value(t, x_key) for t in front]
        ys = [trial_value(t, y_key) for t in front]
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
            late = f"@{t.user_attrs[EPOCH_ATTR]}" if EPOCH_ATTR in t.user_attrs else ""
            ax.annotate(f"#{t.number}{late}", (x, y), textcoords="offset points", xytext=(6, 6))
    ax.set(xlabel=x_key, ylabel=y_key, title=f"{view.name}: completed trials")
    if methods:
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def draw_reliability(best: dict[str, tuple[FrozenTrial, StoredSplit]], path: Path) -> bool:
    """Test reliability diagrams of each method's best trial, raw and temperature-scaled (from
    the stored confidences: no probability vector needed)."""
    if not best:
        return False
    fig, axes = plt.subplots(len(best), 2, figsize=(9, 4.2 * len(best)), squeeze=False)
    for row, (method, (trial, split)) in zip(axes, best.items()):
        title = f"{method} #{trial.number}"
        reliability_axes(row[0], *split.top_label(), title)
        scaled_title = f"{title}, T={split.temperature:.2f}"
        reliability_axes(row[1], *split.top_label(scaled=True), scaled_title)
    save_figure(fig, path)
    return True


def draw_importance(found: dict[str, dict[str, float]], path: Path) -> None:
    """One horizontal bar chart per objective."""
    fig, axes = plt.subplots(1, len(found), figsize=(4.6 * len(found), 3.6), squeeze=False)
    for ax, (target, values) in zip(axes[0], found.items()):
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set(xlabel="importance", title=target, xlim=(0, 1))
    save_figure(fig, path)


def draw_sensitivity(view: StudyView, params: Sequence[str], path: Path) -> None:
    """A grid: one row per plotted objective metric (``Objective.plot_axes``), one column per
    searched param."""
    metrics = [(key, key) for key in view.space.objective.plot_axes]
    fig, axes = plt.subplots(2, len(params), figsize=(4.8 * len(params), 7), squeeze=False)
    methods = view.methods()
    colors = method_colors(methods)
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
                        [trial_value(t, key) for t in trials],
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
    save_figure(fig, path)
