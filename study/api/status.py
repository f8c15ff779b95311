"""`study status NAME`: where a running or finished study stands, read from its storage alone
(the Optuna database, the driver lock, the tracking file), without Ray."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from search_spaces.schema import Space
from study.analysis.front import format_table, front_rows
from study.output import plural
from study.storage.lock import held_by
from study.storage.records import STATUS_ATTR, counted
from trainables.layout import StudyPaths

STATES = ("completed", "diverged", "pruned", "failed", "running", "interrupted", "pending")
FINISHED = ("completed", "diverged", "pruned", "failed")


@dataclass(frozen=True)
class StudyStatus:
    """Trial counts by state (``STATES``), the driver running the study (None: none is), the
    time from the first trial's start to the last one's end (or to now, while it runs), the
    best trials so far (as ``front_rows``) and the MLflow run of the study."""

    name: str
    planned: int
    counts: dict[str, int]
    driver: str | None
    elapsed_s: float | None
    best: list[dict[str, Any]] = field(default_factory=list)
    tracking: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, int] | None = None  # the cluster's alive nodes by type, while a driver runs
    at_chance: int = 0  # of the diverged: those the chance guard stopped

    @property
    def finished(self) -> bool:
        """Every planned trial finished (completed, diverged, pruned or failed), no driver."""
        done = sum(self.counts.get(s, 0) for s in FINISHED)
        return self.driver is None and done >= self.planned


def trial_state(trial: optuna.trial.FrozenTrial, driver_alive: bool) -> str:
    """One of ``STATES``: a trial asked for but unfinished is running while a driver holds the
    study, else interrupted (``study resume`` continues it)."""
    if trial.state == TrialState.COMPLETE:
        return "diverged" if trial.user_attrs.get(STATUS_ATTR) == "diverged" else "completed"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.FAIL:
        return "failed"
    if trial.state == TrialState.WAITING:
        return "pending"
    return "running" if driver_alive else "interrupted"


def study_status(
    name: str,
    paths: StudyPaths,
    space: Space,
    study: optuna.Study | None,
    tracking: dict[str, str],
) -> StudyStatus:
    """The status of study ``name`` (``study`` None: no trial has started yet)."""
    driver = held_by(paths.root)
    trials = counted(study.get_trials(deepcopy=False)) if study is not None else []
    counts = dict.fromkeys(STATES, 0)
    for trial in trials:
        counts[trial_state(trial, driver is not None)] += 1
    counts["pending"] += max(0, space.trials - len(trials))
    at_chance = sum(
        trial_state(t, False) == "diverged" and bool(t.user_attrs.get("at_chance")) for t in trials
    )
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    elapsed = None
    if starts:
        last = time.time() if driver is not None or not ends else max(ends)
        elapsed = max(0.0, last - min(starts))
    best = front_rows(study, space) if study is not None else []
    return StudyStatus(
        name, space.trials, counts, driver, elapsed, best, tracking, at_chance=at_chance
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def format_status(status: StudyStatus, space: Space) -> str:
    """The status as `study status` prints it."""
    counts = ", ".join(
        f"{n} {state} ({status.at_chance} at chance)"
        if state == "diverged" and status.at_chance
        else f"{n} {state}"
        for state, n in status.counts.items()
        if n
    )
    done = sum(status.counts[s] for s in FINISHED)
    finished = status.finished
    lines = [f"study {status.name}: {done}/{plural(status.planned, 'trial')} finished ({counts})"]
    if status.driver:
        lines.append(f"driver:  {status.driver}")
    elif finished:
        lines.append("driver:  none (the study is finished)")
    else:
        lines.append(
            f"driver:  none (resume with 'study resume {status.name}': trials are interrupted "
            "or pending)"
        )
    if status.elapsed_s is not None:
        lines.append(f"elapsed: {_duration(status.elapsed_s)}")
    if status.nodes:
        lines.append("nodes:   " + ", ".join(f"{n} {kind}" for kind, n in status.nodes.items()))
    if status.tracking:
        lines.append(
            f"mlflow:  run {status.tracking['parent_run_id']} in experiment "
            f"{status.tracking['experiment_id']} at {status.tracking['tracking_uri']}"
        )
    title = "Pareto front" if space.objective.type == "pareto" else "best trial"
    lines += ["", f"{title}:" if finished else f"{title} so far:", format_table(status.best)]
    return "\n".join(lines)
