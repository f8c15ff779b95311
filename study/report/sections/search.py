"""The report's section on the search itself: the hypervolume of the front found, after each
trial and against the budget and time spent, and, where MO-ASHA ran, what each rung stopped and
what that saved in epochs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from search_spaces.schema import Space
from study.analysis.hypervolume import hypervolume, reference_point
from study.analysis.tables import markdown_table
from study.report.figures import plt, save_figure
from study.report.sections import Section
from study.storage.records import RUNGS_ATTR, STATUS_ATTR
from trainables.metrics.objectives import directions, with_role

if TYPE_CHECKING:
    from study.report.view import StudyView


@dataclass(frozen=True)
class SearchStep:
    """The study after one more trial finished: how many, the epochs and time spent so far, and
    the hypervolume of the front of the completed trials so far."""

    trials: int
    epochs: float
    seconds: float
    hypervolume: float


def _finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return sorted(done, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))


def _minimised(trial: FrozenTrial, space: Space) -> list[float]:
    objective = space.objective
    if objective.type == "weighted":
        return [-float(trial.values[0])]
    known = directions()
    return [
        -float(v) if known[m] == "max" else float(v)
        for m, v in zip(objective.metrics, trial.values, strict=True)
    ]


def search_reference(space: Space, trials: list[FrozenTrial]) -> list[float]:
    """The hypervolume's reference point: each metric's worst value (accuracy 0, ECE 1, ...); a
    weighted objective's worst, ``-weight``; a cost's, the most any finished trial spent."""
    objective = space.objective
    if objective.type == "weighted":
        return [objective.weight * 1.0]
    spent = {
        cost: max((float(t.user_attrs.get(cost, 0.0)) for t in trials), default=1.0) or 1.0
        for cost in with_role("cost")
    }
    return [r + 0.0 for r in reference_point(objective.metrics, spent)]  # no -0.0


def search_steps(space: Space, trials: list[FrozenTrial]) -> list[SearchStep]:
    """One step per finished trial (COMPLETE or PRUNED), in the order they finished."""
    finished = _finished(trials)
    if not finished:
        return []
    reference = search_reference(space, finished)
    start = min(t.datetime_start for t in finished if t.datetime_start)
    front: list[list[float]] = []
    epochs, steps = 0.0, []
    for n, trial in enumerate(finished, 1):
        epochs += float(trial.user_attrs.get("epoch", 0))
        completed = trial.user_attrs.get(STATUS_ATTR) == "completed"
        if trial.state == TrialState.COMPLETE and completed and trial.values:
            front.append(_minimised(trial, space))
        end = trial.datetime_complete or trial.datetime_start
        seconds = (end - start).total_seconds() if end else math.nan
        steps.append(SearchStep(n, epochs, seconds, hypervolume(front, reference)))
    return steps


def rung_rows(trials: list[FrozenTrial]) -> list[tuple[int, int, int]]:
    """Per MO-ASHA rung (its epoch): how many trials were ranked there and how many stopped."""
    rungs: dict[int, list[bool]] = {}
    for trial in trials:
        for milestone, record in (trial.user_attrs.get(RUNGS_ATTR) or {}).items():
            rungs.setdefault(int(milestone), []).append(bool(record["stop"]))
    return [(m, len(stops), sum(stops)) for m, stops in sorted(rungs.items())]


def agreement_rows(trials: list[FrozenTrial], objectives: list[str]) -> list[tuple[Any, ...]]:
    """Per rung and objective, under ``asha.agreement``: the rank agreement between the rung's
    and the final values as last measured there (Kendall's tau, its lower bound, the finished
    configurations it was measured on), whether that decision ranked on the objective, and in
    how many of the rung's decisions it was ranked on."""
    last: dict[int, list[Any]] = {}
    acted: dict[tuple[int, int], int] = {}
    decisions: dict[int, int] = {}
    for trial in trials:
        for milestone, record in (trial.user_attrs.get(RUNGS_ATTR) or {}).items():
            measured = record.get("agreement")
            if not measured:
                continue
            m = int(milestone)
            decisions[m] = decisions.get(m, 0) + 1
            for j, (_, _, _, acts) in enumerate(measured):
                acted[m, j] = acted.get((m, j), 0) + bool(acts)
            if m not in last or measured[0][2] >= last[m][0][2]:
                last[m] = measured
    rows = []
    for m in sorted(last):
        for j, (tau, lower, pairs, acts) in enumerate(last[m]):
            rows.append((
                m, objectives[j] if j < len(objectives) else j,
                "-" if tau is None else f"{tau:.2f}", "-" if lower is None else f"{lower:.2f}",
                pairs, "yes" if acts else "no", f"{acted.get((m, j), 0)} of {decisions[m]}",
            ))  # fmt: skip
    return rows


def _draw(steps: list[SearchStep], epochs_total: int, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    values = [s.hypervolume for s in steps]
    xs = (
        ([s.trials for s in steps], "trials finished"),
        ([s.epochs / epochs_total for s in steps], "budget spent (full-trial equivalents)"),
        ([s.seconds / 60 for s in steps], "minutes since the first trial started"),
    )
    for ax, (x, label) in zip(axes, xs, strict=True):
        ax.step(x, values, where="post", color="tab:blue")
        ax.scatter(x, values, s=12, color="tab:blue")
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="hypervolume of the front")
    save_figure(fig, path)


def _trials(n: int | None) -> str:
    return f"{n} trial{'s' if n != 1 else ''}"


def search_section(view: StudyView) -> Section:
    """The hypervolume after each trial (``search.png``; its numbers under ``search``) and
    MO-ASHA's rungs."""
    space = view.space
    trials = view.study.get_trials(deepcopy=False)
    steps = search_steps(space, trials)
    if not steps:
        return Section("## The search\n\nNo trial has finished yet.")
    epochs_total = space.train_config().epochs
    reference = search_reference(space, _finished(trials))
    final = steps[-1].hypervolume
    reach = {
        share: next((s.trials for s in steps if s.hypervolume >= share * final), None)
        for share in (0.9, 0.95)
    }
    axes = space.objective.names if space.objective.type == "weighted" else space.objective.metrics
    parts = [
        "## The search",
        f"Hypervolume of the front of the completed trials over ({', '.join(axes)}), against "
        f"the reference point {reference} (each metric's worst value; a cost's, the most a "
        f"trial spent; minimised form): **{final:.4g}** after {len(steps)} finished trials and "
        f"{steps[-1].epochs / epochs_total:.1f} full-trial equivalents of epochs. "
        + (
            f"90% of it was reached after {_trials(reach[0.9])}, 95% after {_trials(reach[0.95])}."
            if final > 0
            else "No completed trial is inside the reference box."
        ),
        "![The hypervolume after each trial, against the budget and the time spent](search.png)",
    ]
    figures = {"search.png": lambda path: _draw(steps, epochs_total, path)}
    record: dict[str, Any] = {
        "reference": reference,
        "hypervolume": [s.hypervolume for s in steps],
        "epochs": [s.epochs for s in steps],
        "seconds": [s.seconds for s in steps],
        "trials_to_90": reach[0.9],
        "trials_to_95": reach[0.95],
    }
    if space.scheduler == "asha":
        rows = rung_rows(trials)
        finished = _finished(trials)
        spent = sum(float(t.user_attrs.get("epoch", 0)) for t in finished)
        saved = len(finished) * epochs_total - spent
        parts.append(
            "MO-ASHA's rungs (each trial ranked at a rung, and how many it stopped there):"
        )
        parts.append(markdown_table(["rung (epoch)", "ranked", "stopped"], rows))
        parts.append(
            f"Stopping saved **{saved:.0f} of {len(finished) * epochs_total} epochs** "
            f"({saved / max(len(finished) * epochs_total, 1):.0%}) against running every "
            "finished trial to its last epoch."
        )
        record.update(rungs=rows, epochs_saved=saved, epochs_full=len(finished) * epochs_total)
        if space.asha.agreement is not None:
            agreed = agreement_rows(trials, list(space.objective.optuna_metrics))
            parts.append(
                f"Each rung ranks only on the objectives whose values there rank the finished "
                f"configurations as their final values do (lower bound of Kendall's tau at least "
                f"{space.asha.agreement:g}), and keeps every configuration while none does. "
                "The agreement as last measured at each rung:"
            )
            parts.append(
                markdown_table(
                    [
                        "rung (epoch)",
                        "objective",
                        "tau",
                        "lower bound",
                        "finished",
                        "ranked on",
                        "decisions ranked on it",
                    ],
                    agreed,
                )  # fmt: skip
                if agreed
                else "No rung has decided yet."
            )
            record.update(agreement=agreed)
    return Section("\n\n".join(parts), figures, {"search": record})
