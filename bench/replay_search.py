"""Search efficiency on the replay table (issue 23, item 4): studies of the default space replayed
in simulated time on ``bench/tables/default.parquet`` — no training, every epoch taking the time
it took when the table was made — and the hypervolume of the front each finds against the budget
it spent, relative to the table's oracle front.

    python bench/replay_search.py                       # every contender, K = 2 and 8, 10 replays
    python bench/replay_search.py --replays 30 --workers 2 --contenders tpe,tpe+asha
    python bench/replay_search.py --space my-space.yaml --table my-table.parquet
    python bench/replay_search.py --contenders tpe,tpe+agree:0.3 --late 0.25 --first-seed 100

Any space and its table (``bench/replay_table.py`` of a grid study of it): the settings come from
the table's columns, matched to a sampled configuration exactly where they are categorical
(``method``, ``loss``; absent where a condition leaves them out) and by distance on their search
scale where they are numeric (integers included); a setting the space fixes is matched at its
fixed value.

Contenders: sharpcal's own studies — the samplers ``random``, ``tpe``, ``nsga2`` and ``gp`` built
by ``study.search.sampler.build_sampler`` from the table's space, asked through its define-by-run
function, each with and without MO-ASHA (``study.search.rungs.RungLadder`` with the space's ``asha``
settings, or ``SAMPLER+asha:G`` with a grace period of G epochs, or ``SAMPLER+agree:B``: the rung
that ranks only on objectives whose rank agreement with the final values, measured over the
trials that finished, has a lower bound of at least B) — and Syne Tune's
(``bench/replay_syne_tune.py``, the ``bench`` extra) on the same table.

The simulator: K workers; a free worker asks for a trial, the trial's configuration is the table's
nearest (each setting to its nearest grid value, on the scale it is searched on), its seed one of
the table's seeds drawn at random, and each epoch ends after its recorded ``epoch_seconds``;
rungs decide as each epoch ends. The budget is the training time spent (stopped trials included),
in full-trial equivalents (the table's mean time of a whole trial).

Protocol (as JAHS-Bench-201's): the front of every ended trial (completed or stopped, at the values
it ended with), its hypervolume against one reference point fixed from the table before any run,
over the oracle's — on val (what the search sees) and on test (the same trials' test values: what
the user gets). The oracle front is the Pareto front of the table's configurations (means over
seeds, last epoch). Headline: the budget at which the mean curve reaches 90% and 95% of the
oracle's, and the area under the curve (its mean over the budget axis). The reference point is
the nadir of the oracle's fronts moved out by a tenth of their extent. A found front can exceed the
oracle's on val: a search keeps the seeds that happened to score well there (the oracle averages
them); the test values of the same trials carry no such selection.

``--late F`` also scores every contender's replays as a study with ``late_checkpoints: F`` would
end them (``with_late``: a completed trial adds the epochs of its own val front over its last F of
epochs, each with its own test values), as ``NAME+late``, with the paired gain over the same
replays (the difference of the areas under the curve with its 95% interval, and the ratio of the
hypervolumes at equal budget).

Not charged: a trial's start-up (Ray, data, model) and its evaluation time, the same for every
contender per trial; schedulers that stop many short trials pay more of it in a real study (the
real default study with and without MO-ASHA in BENCHMARKS.md measures wall time as well).
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import optuna
import pandas as pd
from scipy import stats

from search_spaces.schema import Space, check_space, load_space
from study.analysis.hypervolume import hypervolume
from study.search.rungs import minimised, nondominated_fronts
from study.search.sampler import SpaceSampler, build_sampler
from study.search.schedulers import ladder_for
from trainables.config import TrainConfig
from trainables.trial.late import first_late_epoch

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "bench" / "tables" / "default.parquet"
SAMPLERS = ("random", "tpe", "nsga2", "gp")
THRESHOLDS = (0.9, 0.95)


@dataclass(frozen=True)
class Report:
    """One epoch of one replayed trial: when it ended (simulated seconds), the training time
    spent by then over all trials (``compute``, filled in by ``with_compute``), its val and test
    objective values (minimised) and whether the trial ended with it (last epoch or stopped)."""

    time: float
    trial: int
    epoch: int
    seconds: float
    val: tuple[float, ...]
    test: tuple[float, ...]
    ended: bool
    compute: float = 0.0


class ReplayTable:
    """The table of one space: each (configuration, seed)'s learning curve, the grid each
    method's settings take, the oracle front and the reference point."""

    def __init__(self, frame: pd.DataFrame, space: Space) -> None:
        self.space = space
        self.metrics = list(space.objective.metrics)
        self.modes = list(space.objective.modes)
        missing = [m for m in self.metrics if m not in frame.columns]
        if missing:
            raise ValueError(f"the table has no column {missing}: objectives must be val metrics")
        self.epochs = int(frame["epoch"].max())
        if self.epochs != space.train_config().epochs:
            raise ValueError(
                f"the table has {self.epochs} epochs, the space trains {space.train_config().epochs}"
            )
        complete = frame.groupby(["config", "seed"])["epoch"].transform("count") == self.epochs
        frame = frame[complete].sort_values(["config", "seed", "epoch"])
        self.seeds = sorted(frame["seed"].unique().tolist())
        self.names = setting_columns(frame)
        self.settings = frame.groupby("config")[self.names].first()
        self.curves: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        test_metrics = [_test_name(m) for m in self.metrics]
        for (config, seed), rows in frame.groupby(["config", "seed"]):
            self.curves[int(config), int(seed)] = (
                rows["epoch_seconds"].to_numpy(float),
                np.array([minimised(v, self.modes) for v in rows[self.metrics].to_numpy(float)]),
                np.array([minimised(v, self.modes) for v in rows[test_metrics].to_numpy(float)]),
            )
        configs = sorted({c for c, _ in self.curves})
        self.settings = self.settings.loc[configs]
        self.full_trial_seconds = float(np.mean([c[0].sum() for c in self.curves.values()]))
        self.categorical = [n for n in self.names if _is_categorical(n, self.settings[n], space)]
        finals = {
            split: np.array(
                [
                    np.mean(
                        [self.curves[c, s][i][-1] for s in self.seeds if (c, s) in self.curves], 0
                    )
                    for c in configs
                ]
            )
            for split, i in (("val", 1), ("test", 2))
        }
        self.reference = _reference_point(list(finals.values()), self.metrics)
        self.oracle = {
            split: hypervolume(points[nondominated_fronts(points)[0]], self.reference)
            for split, points in finals.items()
        }
        self.oracle_configs = [configs[i] for i in nondominated_fronts(finals["val"])[0]]

    def snap(self, settings: dict[str, Any]) -> int:
        """The table's configuration nearest to ``settings`` (a sampled configuration over the
        space's fixed settings): of those with its every categorical setting (``method``,
        ``loss``...; a setting it lacks matches an absent one or one at the setting's default:
        CSAM's ``loss``, unsampled, is ``ce`` in a grid that names it), the least distant over the
        numeric settings, each on the scale it is searched on (log for ``loguniform``) over the
        span of the candidates' values. On a whole grid, each setting at its nearest value."""
        wanted = {name: settings.get(name, self.space.fixed.get(name)) for name in self.names}
        rows = self.settings
        for name in self.categorical:
            value = wanted[name]
            if value is None:
                default = TrainConfig.model_fields.get(name)
                match = rows[name].isna()
                if default is not None and default.default is not None:
                    match |= rows[name] == default.default
                rows = rows[match]
            else:
                rows = rows[rows[name] == value]
        if rows.empty:
            shown = {n: wanted[n] for n in self.categorical}
            raise ValueError(f"the table has no configuration with {shown}")
        distance = np.zeros(len(rows))
        for name in (n for n in self.names if n not in self.categorical):
            column = rows[name].to_numpy(float)
            value = wanted[name]
            if value is None or np.isnan(column).all():
                distance += np.where(np.isnan(column), 0.0, 1.0)  # absent where it is absent
                continue
            search = self.space.search.get(name)
            scale = np.log if search is not None and search.kind == "loguniform" else np.asarray
            known = column[~np.isnan(column)]
            span = float(scale(known.max()) - scale(known.min())) or 1.0
            gap = ((scale(column) - scale(float(value))) / span) ** 2
            distance += np.where(np.isnan(column), 1.0, gap)
        return int(rows.index[int(np.argmin(distance))])

    def curve(self, config: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Epoch seconds, val and test values (minimised) of one configuration and seed."""
        return self.curves[config, seed]

    def draw(
        self, config: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The curve of ``config`` at one of its seeds, drawn at random (a seed whose trial did
        not complete is not in the table)."""
        seeds = [s for s in self.seeds if (config, s) in self.curves]
        return self.curves[config, int(rng.choice(seeds))]


# A table's columns that are not a configuration's settings (bench/replay_table.py)
NOT_SETTINGS = frozenset(
    ("config", "trial", "epoch", "seed", "epoch_seconds", "train_seconds", "wall_seconds",
     "train_loss", "temperature")
)  # fmt: skip


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of a replay table that name a configuration's settings, in order."""
    return [
        c for c in frame.columns if c not in NOT_SETTINGS and not c.startswith(("val_", "test_"))
    ]


def _is_categorical(name: str, values: pd.Series, space: Space) -> bool:
    """A setting matched exactly, not by distance: categorical in the space, or not numeric."""
    search = space.search.get(name)
    if search is not None:
        return search.kind == "categorical"
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _test_name(metric: str) -> str:
    return "test_" + metric.removeprefix("val_")


def _reference_point(splits: Sequence[np.ndarray], metrics: Sequence[str]) -> list[float]:
    """Fixed from the table before any replay: the nadir of the oracle's fronts (val and test;
    configurations that learned, accuracy above twice chance) moved out by a tenth of the fronts'
    extent, so every oracle configuration adds volume and a found set worse than all of them
    adds none."""
    fronts = []
    for points in splits:
        learned = np.ones(len(points), dtype=bool)
        for j, name in enumerate(metrics):
            if name.endswith("accuracy"):
                learned &= -points[:, j] > 0.2
        kept = points[learned]
        fronts.append(kept[nondominated_fronts(kept)[0]])
    front = np.vstack(fronts)
    nadir, ideal = front.max(axis=0), front.min(axis=0)
    extent = np.where(nadir > ideal, nadir - ideal, np.abs(nadir) + 1e-12)
    return (nadir + 0.1 * extent).tolist()


def with_compute(reports: list[Report]) -> list[Report]:
    """Reports in time order, each with the training seconds spent by then over all trials."""
    spent, out = 0.0, []
    for r in sorted(reports, key=lambda r: (r.time, r.trial, r.epoch)):
        spent += r.seconds
        out.append(Report(**{**r.__dict__, "compute": spent}))
    return out


def replay_optuna(
    table: ReplayTable, space: Space, workers: int, budget: float, seed: int
) -> list[Report]:
    """One study of ``space`` (its sampler and scheduler) replayed with ``workers`` workers until
    ``budget`` training seconds are spent; the Optuna study in memory."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=build_sampler(space),
        directions=["maximize" if m == "max" else "minimize" for m in space.objective.modes],
    )
    ladder = ladder_for(space) if space.scheduler == "asha" else None
    define = SpaceSampler(space)
    rng = np.random.default_rng(seed)
    running: dict[int, tuple[optuna.Trial, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    events: list[tuple[float, int, int]] = []
    reports: list[Report] = []

    def start(now: float) -> None:
        trial = study.ask()
        settings = {**define(trial), **trial.params}
        curve = table.draw(table.snap(settings), rng)
        running[trial.number] = (trial, curve)
        heapq.heappush(events, (now + curve[0][0], trial.number, 1))

    for _ in range(workers):
        start(0.0)
    spent = 0.0
    while events and spent < budget:
        now, number, epoch = heapq.heappop(events)
        trial, (seconds, val, test) = running[number]
        spent += seconds[epoch - 1]
        values = val[epoch - 1]
        decision = ladder.on_result(str(number), epoch, values) if ladder else None
        last = epoch == table.epochs
        stop = not last and decision is not None and decision.stop
        reports.append(
            Report(
                now,
                number,
                epoch,
                seconds[epoch - 1],
                tuple(values),
                tuple(test[epoch - 1]),
                last or stop,
            )
        )
        if last:
            if ladder is not None:  # a pair for the agreement (a ladder with ``agreement``)
                ladder.record_final(str(number), values)
            study.tell(trial, minimised(values, space.objective.modes))  # back to the study's signs
        elif stop:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            heapq.heappush(events, (now + seconds[epoch], number, epoch + 1))
            continue
        del running[number]
        start(now)
    return with_compute(reports)


def hypervolume_curve(
    reports: list[Report], table: ReplayTable, budgets: np.ndarray
) -> dict[str, np.ndarray]:
    """The found front's hypervolume over the oracle's at each budget (full-trial equivalents):
    ``val``, and ``test`` (the val front's trials' test values)."""
    ended = [r for r in reports if r.ended]
    curve = {"val": np.zeros(len(budgets)), "test": np.zeros(len(budgets))}
    val_points: list[tuple[float, ...]] = []
    test_points: list[tuple[float, ...]] = []
    i = 0
    for j, budget in enumerate(budgets * table.full_trial_seconds):
        while i < len(ended) and ended[i].compute <= budget:
            val_points.append(ended[i].val)
            test_points.append(ended[i].test)
            i += 1
        if not val_points:
            continue
        vals = np.array(val_points)
        front = nondominated_fronts(vals)[0]
        curve["val"][j] = hypervolume(vals[front], table.reference) / table.oracle["val"]
        tests = np.array(test_points)[front]
        curve["test"][j] = hypervolume(tests, table.reference) / table.oracle["test"]
    return curve


def with_late(reports: list[Report], epochs: int, fraction: float) -> list[Report]:
    """``reports`` as a study with late checkpoints (``late_checkpoints: fraction``) ends them:
    each completed trial's last epoch replaced, as what it adds to the front, by the epochs of its
    own val front in its last ``fraction`` of epochs (``trainables.trial.late``), each with its
    own test values, at the compute of the trial's last epoch. Stopped trials end as before."""
    first = first_late_epoch(epochs, fraction)
    by_trial: dict[int, list[Report]] = {}
    for r in reports:
        by_trial.setdefault(r.trial, []).append(r)
    out = []
    for r in reports:
        if not (r.ended and r.epoch == epochs):
            out.append(r)
            continue
        window = [w for w in by_trial[r.trial] if w.epoch >= first]
        kept = nondominated_fronts(np.array([w.val for w in window]))[0]
        out.append(Report(**{**r.__dict__, "ended": False}))
        for i in kept:
            out.append(Report(**{**window[i].__dict__, "ended": True, "compute": r.compute}))
    return out


def paired_gain(
    base: list[dict[str, np.ndarray]], late: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Late checkpoints against none on the same replays: the paired difference of the area under
    the curve (mean, 95% t half-width) and the mean over budgets of the ratio of the mean
    hypervolumes (budgets where both found something), on val and test."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        diffs = np.array([lc[split].mean() - bc[split].mean() for bc, lc in zip(base, late)])
        half = (
            stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
            if len(diffs) > 1
            else 0.0
        )
        b = np.mean([c[split] for c in base], axis=0)
        lm = np.mean([c[split] for c in late], axis=0)
        found = b > 0
        out[split] = {
            "auc_diff": float(diffs.mean()),
            "half_width": float(half),
            "ratio": float(np.mean(lm[found] / b[found])) if found.any() else None,
            "ratio_at_max": float(lm[-1] / b[-1]) if b[-1] > 0 else None,
        }
    return out


def replay_aucs(curves: list[dict[str, np.ndarray]]) -> dict[str, list[float]]:
    """Each replay's area under its curve (the mean over the budgets), on val and test."""
    return {split: [float(c[split].mean()) for c in curves] for split in ("val", "test")}


def paired_auc_lines(results: dict[str, Any], base: str | None = None) -> list[str]:
    """Each contender against ``base`` (by default its own sampler without a scheduler or late
    checkpoints: ``random+asha`` against ``random``) at the same worker count, paired by replay
    seed (replay i of both drew from the same seed): the mean difference of the area under the
    curve and its 95% Student-t interval, on val and test."""
    runs, lines = results["runs"], []
    for key in sorted(runs, key=lambda key: (int(key.rsplit("@", 1)[1]), _order(key))):
        name, k = key.rsplit("@", 1)
        against = base or name.split("+")[0]
        other = runs.get(f"{against}@{k}")
        if name == against or other is None or "replay_auc" not in runs[key]:
            continue
        if "replay_auc" not in other or len(other["replay_auc"]["val"]) != runs[key]["replays"]:
            continue
        parts = []
        for split in ("val", "test"):
            diffs = np.subtract(runs[key]["replay_auc"][split], other["replay_auc"][split])
            half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
            parts.append(f"{split} ΔAUC {diffs.mean():+.4f} [{diffs.mean() - half:+.4f}, "
                         f"{diffs.mean() + half:+.4f}]")  # fmt: skip
        lines.append(f"K={k} {name} − {against}: " + ", ".join(parts))
    return lines


Replayer = Callable[[ReplayTable, int, float, int], list[Report]]


def sharpcal_contender(
    sampler: str, asha: bool, grace_period: int | None = None, agreement: float | None = None
) -> Replayer:
    """A replayer of the table's space with ``sampler`` and (or not) MO-ASHA, at the space's
    ``asha`` settings or another ``grace_period``, or with the rung that checks its own
    assumption (``agreement``: the lower bound an objective's rank agreement needs)."""

    def run(table: ReplayTable, workers: int, budget: float, seed: int) -> list[Report]:
        data = table.space.model_dump(mode="json")
        data.update(sampler=sampler, seed=seed, scheduler="asha" if asha else "none")
        if grace_period is not None:
            data["asha"] = {**data["asha"], "grace_period": grace_period}
        if agreement is not None:
            data["asha"] = {**data["asha"], "agreement": agreement}
        space = check_space(data, f"the replay of {table.space.name or 'a space'}")
        return replay_optuna(table, space, workers, budget, seed)

    return run


def _variant(name: str) -> Replayer | None:
    """``SAMPLER+asha:G``: MO-ASHA with grace period G (rungs at G, 3G, 9G, ...);
    ``SAMPLER+agree:B``: MO-ASHA whose rungs rank only on objectives whose rank agreement's
    lower bound is at least B (``asha: {agreement: B}``)."""
    sampler, _, grace = name.partition("+asha:")
    if sampler in SAMPLERS and grace.isdigit():
        return sharpcal_contender(sampler, asha=True, grace_period=int(grace))
    sampler, _, bound = name.partition("+agree:")
    try:
        agreement = float(bound)
    except ValueError:
        return None
    if sampler in SAMPLERS:
        return sharpcal_contender(sampler, asha=True, agreement=agreement)
    return None


def contenders() -> dict[str, Replayer]:
    """Every contender by name: sharpcal's samplers with and without MO-ASHA, and Syne Tune's
    where its package is installed (the ``bench`` extra)."""
    found: dict[str, Replayer] = {}
    for sampler in SAMPLERS:
        found[sampler] = sharpcal_contender(sampler, asha=False)
        found[f"{sampler}+asha"] = sharpcal_contender(sampler, asha=True)
    try:
        syne_tune = _load_sibling("replay_syne_tune")
    except ImportError as err:
        print(f"(Syne Tune's contenders left out: {err}; pip install -e '.[bench]')")
    else:
        for name, replay in syne_tune.syne_tune_contenders().items():
            found[name] = _from_trace(replay)
    return found


def _load_sibling(name: str) -> ModuleType:
    """A module of this directory by its file (``bench/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _from_trace(replay: Callable[..., list[tuple]]) -> Replayer:
    def run(table: ReplayTable, workers: int, budget: float, seed: int) -> list[Report]:
        return with_compute([Report(*row) for row in replay(table, workers, budget, seed)])

    return run


def summarise(curves: list[dict[str, np.ndarray]], budgets: np.ndarray) -> dict[str, Any]:
    """Mean and 95% t-interval of the relative hypervolume at each budget; the budget at which
    the mean curve first reaches each threshold (None: not within the budgets) with the share of
    replays that reached it by then; the area under the mean curve."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        values = np.array([c[split] for c in curves])
        mean = values.mean(axis=0)
        half = (
            stats.t.ppf(0.975, len(values) - 1)
            * values.std(axis=0, ddof=1)
            / math.sqrt(len(values))
            if len(values) > 1
            else np.zeros_like(mean)
        )
        reach = {}
        for threshold in THRESHOLDS:
            hit = np.nonzero(mean >= threshold)[0]
            reach[str(threshold)] = float(budgets[hit[0]]) if len(hit) else None
        out[split] = {
            "mean": mean.tolist(),
            "half_width": half.tolist(),
            "reach": reach,
            "auc": float(mean.mean()),
            "final": float(mean[-1]),
        }
    return out


def run_benchmark(
    table: ReplayTable,
    names: Sequence[str],
    workers: Sequence[int],
    replays: int,
    max_budget: float,
    step: float = 0.5,
    replays_for: dict[str, int] | None = None,
    out: Path | None = None,
    late: float = 0.0,
    first_seed: int = 0,
) -> dict[str, Any]:
    """Every contender named, for each worker count, ``replays`` times (``replays_for`` a
    contender's own count; replay i seeded ``first_seed + i``: fresh seeds for a confirming run).
    With ``out``, the results are written after each
    contender, and contenders already in an ``out`` made with the same table are not rerun.
    With ``late`` (a fraction), each contender's replays are also scored with late checkpoints
    (``with_late``) as ``NAME+late``, with the paired gain over the same replays."""
    available = contenders()
    available.update({n: v for n in names if n not in available and (v := _variant(n))})
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; known: {sorted(available)}")
    budgets = np.arange(step, max_budget + step / 2, step)
    results: dict[str, Any] = {
        "budgets": budgets.tolist(),
        "reference": table.reference,
        "oracle": table.oracle,
        "full_trial_seconds": table.full_trial_seconds,
        "first_seed": first_seed,
        "runs": {},
    }
    if out is not None and out.is_file():
        earlier = json.loads(out.read_text())
        same = ("budgets", "reference", "oracle", "first_seed")
        if all(earlier.get(k, 0 if k == "first_seed" else None) == results[k] for k in same):
            results["runs"] = earlier["runs"]
    stop_at = (max_budget + 1) * table.full_trial_seconds
    for k, name in itertools.product(workers, names):
        if f"{name}@{k}" in results["runs"]:
            print(_line(name, k, results["runs"][f"{name}@{k}"]) + "  (earlier run)")
            continue
        started = time.perf_counter()
        curves, late_curves, trials = [], [], []
        count = (replays_for or {}).get(name, replays)
        for seed in range(first_seed, first_seed + count):
            reports = available[name](table, k, stop_at, seed)
            trials.append(len({r.trial for r in reports if r.ended}))
            curves.append(hypervolume_curve(reports, table, budgets))
            if late:
                late_reports = with_late(reports, table.epochs, late)
                late_curves.append(hypervolume_curve(late_reports, table, budgets))
        summary = summarise(curves, budgets)
        summary.update(
            replays=len(curves), trials_ended=float(np.mean(trials)),
            seconds=time.perf_counter() - started, replay_auc=replay_aucs(curves),
        )  # fmt: skip
        results["runs"][f"{name}@{k}"] = summary
        print(_line(name, k, summary), flush=True)
        if late:
            with_checkpoints = summarise(late_curves, budgets)
            with_checkpoints.update(
                replays=len(late_curves), trials_ended=summary["trials_ended"], seconds=0.0,
                late=late, paired=paired_gain(curves, late_curves),
                replay_auc=replay_aucs(late_curves),
            )  # fmt: skip
            results["runs"][f"{name}+late@{k}"] = with_checkpoints
            print(_line(f"{name}+late", k, with_checkpoints), flush=True)
            print(_paired_line(with_checkpoints["paired"]), flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results))
    return results


def _order(key: str) -> tuple[int, int, str]:
    """Rows in reading order: no scheduler, MO-ASHA, other grace periods; sharpcal's samplers
    (random, TPE, NSGA-II, GP) before Syne Tune's."""
    name = key.rsplit("@", 1)[0]
    group = 2 if ":" in name else 1 if "asha" in name else 0
    family = [*SAMPLERS, "st"].index("st" if name.startswith("st-") else name.split("+")[0])
    return group, family, name


def markdown_table(results: dict[str, Any]) -> str:
    """The runs as a Markdown table: budgets to 90% and 95% of the oracle's hypervolume (full-trial
    equivalents, of the mean curve), the area under the mean curve, its last value ± the 95%
    half-width, on val and test."""

    def budget(value: float | None) -> str:
        return f"{value:g}" if value is not None else "> max"

    lines = [
        "| contender | K | replays | trials | val 90% | val 95% | val AUC | val at max "
        "| test 90% | test 95% | test AUC | test at max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = results["runs"]
    for key in sorted(runs, key=lambda key: (int(key.rsplit("@", 1)[1]), _order(key))):
        run = runs[key]
        name, k = key.rsplit("@", 1)
        cells = [name, k, str(run["replays"]), f"{run['trials_ended']:.0f}"]
        for split in ("val", "test"):
            r = run[split]
            cells += [budget(r["reach"]["0.9"]), budget(r["reach"]["0.95"]), f"{r['auc']:.3f}"]
            cells.append(f"{r['final']:.3f} ± {r['half_width'][-1]:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


FAMILY_COLOURS = {"random": "C0", "tpe": "C1", "nsga2": "C2", "gp": "C4", "st": "C3"}


def _style(name: str) -> dict[str, Any]:
    """A contender's line: coloured by sampler family (Syne Tune's in one colour), solid without
    a scheduler, dashed with MO-ASHA, dotted with another grace period; bands only for solid and
    dashed lines."""
    family = "st" if name.startswith("st-") else name.split("+")[0]
    scheduled = "asha" in name
    if name.startswith("st-"):
        marker = {"st-random": "o", "st-morea": "s", "st-moasha": "^"}.get(name)
        return dict(color=FAMILY_COLOURS["st"], ls="--" if scheduled else "-", marker=marker,
                    markevery=25, ms=4, lw=1.3)  # fmt: skip
    ls = ":" if ":" in name else "--" if scheduled else "-"
    return dict(color=FAMILY_COLOURS.get(family, "k"), ls=ls, lw=1.0 if ":" in name else 1.4)


def plot(results: dict[str, Any], path: Path) -> None:
    """The mean relative hypervolume against the budget with its 95% band: one panel per worker
    count and split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = np.array(results["budgets"])
    runs = results["runs"]
    workers = sorted({int(key.rsplit("@", 1)[1]) for key in runs})
    fig, axes = plt.subplots(
        len(workers), 2, figsize=(13, 4.6 * len(workers)), squeeze=False, sharey=True
    )
    for row, k in enumerate(workers):
        for col, split in enumerate(("val", "test")):
            ax = axes[row][col]
            for key, run in sorted(runs.items()):
                name, kk = key.rsplit("@", 1)
                if int(kk) != k:
                    continue
                mean, half = np.array(run[split]["mean"]), np.array(run[split]["half_width"])
                style = _style(name)
                ax.plot(budgets, mean, label=name, **style)
                if style["ls"] != ":":
                    ax.fill_between(
                        budgets, mean - half, mean + half, color=style["color"], alpha=0.06
                    )
            for threshold in THRESHOLDS:
                ax.axhline(threshold, color="grey", lw=0.6, ls=":")
            ax.set_title(f"{split}, K = {k} workers")
            ax.set_xlabel("budget spent (full-trial equivalents)")
            ax.set_ylabel("hypervolume / oracle's")
            ax.set_ylim(0.0, 1.2)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def goal_lines(
    results: dict[str, Any], asha: str = "tpe+asha", full: str = "tpe", split: str = "test"
) -> list[str]:
    """The issue's goal, checked per worker count: ``asha`` reaches 95% of the oracle's
    hypervolume for at most a third of the budget ``full`` needs, and is nowhere significantly
    below Syne Tune's best contender (by mean, at each budget): its mean plus its half-width at
    least that contender's mean."""
    runs, budgets = results["runs"], np.array(results["budgets"])
    lines = []
    for k in sorted({int(key.rsplit("@", 1)[1]) for key in runs}):
        ours, base = runs.get(f"{asha}@{k}"), runs.get(f"{full}@{k}")
        if ours is None or base is None:
            continue
        mine, theirs = ours[split]["reach"]["0.95"], base[split]["reach"]["0.95"]
        if mine is None:
            verdict = "not met: it never reaches 95%"
        elif theirs is None:
            verdict = f"met: it reaches 95% at {mine:g}, {full} not within {budgets[-1]:g}"
        else:
            met = "met" if mine <= theirs / 3 else "not met"
            verdict = f"{met}: {mine:g} against {full}'s {theirs:g} ({mine / theirs:.2f} of it)"
        lines.append(f"K={k} {split}: {asha} at 95% for <= 1/3 of {full}'s budget: {verdict}")
        anchors = [key for key in runs if key.startswith("st-") and key.endswith(f"@{k}")]
        if not anchors:
            continue
        best = max(anchors, key=lambda key: runs[key][split]["auc"])
        mean = np.array(ours[split]["mean"]) + np.array(ours[split]["half_width"])
        for other in dict.fromkeys([best, f"st-moasha@{k}"]):  # the best, and like for like
            if other not in runs:
                continue
            below = budgets[mean < np.array(runs[other][split]["mean"])]
            verdict = (
                "met"
                if not len(below)
                else f"not met at {len(below)} of {len(budgets)} budgets (first {below[0]:g})"
            )
            lines.append(f"K={k} {split}: {asha} no worse than {other.split('@')[0]}: {verdict}")
    return lines


def _paired_line(paired: dict[str, Any]) -> str:
    """The paired gain of late checkpoints, one line."""
    parts = []
    for split in ("val", "test"):
        p = paired[split]
        ratio = "n/a" if p["ratio"] is None else f"{p['ratio']:.3f}"
        parts.append(
            f"{split}: ΔAUC {p['auc_diff']:+.4f} ± {p['half_width']:.4f}, HV ratio {ratio} "
            f"(at max {p['ratio_at_max']:.3f})"
        )
    return f"{'late vs none, paired':>24}  " + "  ".join(parts)


def _line(name: str, workers: int, s: dict[str, Any]) -> str:
    def budget(value: float | None) -> str:
        return f"{value:6.1f}" if value is not None else "  >max"

    parts = [f"{name:>22} K={workers}"]
    for split in ("val", "test"):
        r = s[split]
        parts.append(
            f"{split}: 90% {budget(r['reach']['0.9'])} 95% {budget(r['reach']['0.95'])} "
            f"AUC {r['auc']:.3f} end {r['final']:.3f}"
        )
    parts.append(f"trials {s['trials_ended']:.0f}  ({s['seconds']:.0f} s)")
    return "  ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument(
        "--space",
        default="default",
        help="the space the table was made for: a bundled name or a file",
    )
    parser.add_argument("--contenders", default=None, help="comma-separated (default: all)")
    parser.add_argument("--workers", default="2,8")
    parser.add_argument("--replays", type=int, default=10)
    parser.add_argument(
        "--replays-for", default="", help="a contender's own count: random=30,gp+asha=5"
    )
    parser.add_argument("--budget", type=float, default=100.0, help="full-trial equivalents")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "replay_search.json")
    parser.add_argument("--figure", type=Path, default=None, help="write the curves here (PNG)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="replay i is seeded FIRST_SEED + i (fresh seeds)"
    )
    parser.add_argument(
        "--late", type=float, default=0.0,
        help="also score every contender with late checkpoints over this last fraction of epochs",
    )  # fmt: skip
    parser.add_argument(
        "--merge", type=Path, nargs="*", default=[],
        help="fold in the runs of these result files (other processes' contenders, same table)",
    )  # fmt: skip
    args = parser.parse_args()
    import torch  # Optuna's GP runs on it: one thread, so that replays can share the cores

    torch.set_num_threads(1)
    table = ReplayTable(pd.read_parquet(args.table), load_space(args.space))
    names = args.contenders.split(",") if args.contenders else list(contenders())
    own = dict(item.split("=") for item in args.replays_for.split(",") if item)
    print(
        f"table {args.table.name}: {len(table.settings)} configurations x {len(table.seeds)} "
        f"seeds, {table.epochs} epochs, a full trial {table.full_trial_seconds:.1f} s; "
        f"reference {np.round(table.reference, 4).tolist()}; oracle HV val "
        f"{table.oracle['val']:.5f} test {table.oracle['test']:.5f} "
        f"({len(table.oracle_configs)} configurations on its val front)"
    )
    workers = [int(k) for k in args.workers.split(",")]
    results = run_benchmark(
        table, names, workers, args.replays, args.budget,
        replays_for={k: int(v) for k, v in own.items()}, out=args.out, late=args.late,
        first_seed=args.first_seed,
    )  # fmt: skip
    for path in args.merge:
        other = json.loads(path.read_text())
        if other["reference"] != results["reference"] or other["oracle"] != results["oracle"]:
            raise SystemExit(f"{path} was made on another table")
        results["runs"].update(other["runs"])
    if args.merge:
        args.out.write_text(json.dumps(results))
    print(f"wrote {args.out}\n\n{markdown_table(results)}\n")
    print("\n".join(goal_lines(results) + goal_lines(results, split="val")))
    print("\npaired by replay seed:\n" + "\n".join(paired_auc_lines(results)))
    if args.figure is not None:
        plot(results, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
