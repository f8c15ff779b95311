"""A study as its report sees it (``StudyView``: its trials, how they rank, their test
evidence) and the small formatting helpers every section and figure shares. The report's sections
(``study.report.sections``) and figures (``study.report.figures``) read it; it reads neither."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from search_spaces.schema import Space
from study.analysis.compare import Configuration, is_completed, rank_score
from study.output import warn
from study.storage.evidence import StoredSplit, read_trial_splits
from study.storage.files import open_optuna_study
from study.storage.records import TRIAL_ID_ATTR, configuration_key, trial_settings
from trainables.config import TrainConfig
from trainables.layout import StudyPaths


@dataclass(frozen=True)
class StudyView:
    """A study as the report sees it: its trials, how they rank, and their evidence."""

    name: str
    space: Space
    study: optuna.Study
    completed: list[FrozenTrial]  # COMPLETE and not diverged, best first
    evidence: dict[str, StoredSplit]  # Tune trial id -> its stored test split
    notes: tuple[str, ...] = ()  # evidence left out: which trial's, and why
    paths: StudyPaths | None = None  # where the study lives (None: a view built in memory)

    @property
    def pareto(self) -> bool:
        return self.space.objective.type == "pareto"

    def method(self, trial: FrozenTrial) -> str:
        return trial_method(trial, self.space)

    def score(self, trial: FrozenTrial) -> float:
        return rank_score(trial, self.space)

    def evidence_of(self, trial: FrozenTrial) -> StoredSplit | None:
        return self.evidence.get(str(trial.user_attrs.get(TRIAL_ID_ATTR, "")))

    @property
    def evidence_root(self) -> str:
        """The study's evidence directory (URI), "" for a view without ``paths``."""
        return self.paths.evidence if self.paths is not None else ""

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


def repeat_group(trial: FrozenTrial, trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """``trial`` and the other trials of its configuration (its repeat seeds)."""
    mine = configuration_key(trial)
    group = [t for t in trials if configuration_key(t) == mine and t.number != trial.number]
    return [trial, *sorted(group, key=lambda t: t.number)]


def method_best(view: StudyView) -> dict[str, FrozenTrial]:
    """The best trial of each method among those with test evidence."""
    best: dict[str, FrozenTrial] = {}
    for trial in view.completed:  # best first
        if view.evidence_of(trial) is not None:
            best.setdefault(view.method(trial), trial)
    return {m: best[m] for m in view.methods() if m in best}


def sgd_baseline(confs: Sequence[Configuration], space: Space) -> int | None:
    """The row of the first SGD + cross-entropy configuration with at least two seeds: the
    baseline the report pairs the others against."""
    for i, conf in enumerate(confs):
        full = space.train_config(conf.settings)
        if full.method == "sgd" and full.loss == "ce" and len(conf.trials) >= 2:
            return i
    return None


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


def inert(text: str) -> str:
    """User text (the space's description, setting values, file names) for report.md: ``<``
    written as ``&lt;``, so no Markdown viewer reads a tag in it (it still shows as ``<``).
    report.html is sanitised besides (``study.report.html``)."""
    return text.replace("<", "&lt;")


def fmt_param(value: Any) -> str:
    """A hyperparameter value: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load_view(paths: StudyPaths, name: str, space: Space) -> StudyView:
    """The study, its ranked completed trials and their test evidence."""
    study = open_optuna_study(paths, name)
    completed = ranked_completed(study, space)
    notes: list[str] = []
    evidence = read_trial_splits(paths.evidence, completed, "test", notes)
    for note in notes:
        warn(f"report: {note}")
    return StudyView(name, space, study, completed, evidence, tuple(notes), paths)
