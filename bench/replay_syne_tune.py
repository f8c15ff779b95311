"""Syne Tune on the replay table: the outside anchor of ``bench/replay_search.py``.

Syne Tune's simulator backend (``UserBlackboxBackend``, the backend its ``BlackboxTabular``
benchmarks run on) replays the same table through a ``Blackbox`` over it: Syne Tune samples the
default space's settings (every one, as it has no conditional settings), the table's nearest
configuration answers (``ReplayTable.snap``, the same snapping as sharpcal's replays), with a seed
drawn at random per trial, every epoch at its recorded time on Syne Tune's simulated clock.

Contenders: ``st-moasha`` (its MOASHA, configurations at random, the default space's rung
settings), ``st-random`` (its multi-objective random search), ``st-morea`` (its multi-objective
regularized evolution, population 25, sample 5: the defaults of 100 and 10 would stay random within
100 trials) and ``st-ehvi`` (its expected hypervolume improvement) where BoTorch is installed.
Objectives are minimised on Syne Tune's side (accuracy negated).

    pip install -e '.[bench]'      # syne-tune 0.16 (not needed by sharpcal itself)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from syne_tune import Tuner
from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
from syne_tune.blackbox_repository.blackbox import Blackbox
from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
from syne_tune.config_space import choice, loguniform, randint, uniform
from syne_tune.optimizer.scheduler import SchedulerDecision
from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
from syne_tune.optimizer.schedulers.multiobjective.multi_objective_regularized_evolution import (
    MultiObjectiveRegularizedEvolution,
)
from syne_tune.optimizer.schedulers.searchers.random_searcher import MultiObjectiveRandomSearcher
from syne_tune.optimizer.schedulers.single_fidelity_scheduler import SingleFidelityScheduler
from syne_tune.tuner_callback import TunerCallback
from syne_tune.tuner_logger import TunerLogger

# (time, trial, epoch, epoch seconds, val values, test values, ended): bench/replay_search.Report
Trace = list[tuple[float, int, int, float, tuple[float, ...], tuple[float, ...], bool]]


def config_space(space: Any) -> dict[str, Any]:
    """The space's ``search`` section as Syne Tune's domains (``when`` conditions dropped)."""
    domains = {"loguniform": loguniform, "uniform": uniform, "int": randint}
    out: dict[str, Any] = {}
    for name, dist in space.search.items():
        if dist.kind == "categorical":
            out[name] = choice(list(dist.categorical))
        else:
            out[name] = domains[dist.kind](*dist.bounds)
    return out


class TableBlackbox(Blackbox):
    """The replay table as a Syne Tune blackbox with one fidelity, the epoch: a configuration's
    curve is the nearest table configuration's, at a seed drawn per call (one call per trial)."""

    def __init__(self, table: Any, rng: np.random.Generator) -> None:
        names = [f"min_{m}" for m in table.metrics]
        tests = [f"min_test_{m.removeprefix('val_')}" for m in table.metrics]
        super().__init__(
            configuration_space=config_space(table.space),
            fidelity_space={"epoch": randint(1, table.epochs)},
            objectives_names=[*names, *tests, "elapsed_time", "epoch_seconds"],
        )
        self.table, self.rng = table, rng
        self.val_names, self.test_names = names, tests

    @property
    def fidelity_values(self) -> np.ndarray:
        return np.arange(1, self.table.epochs + 1)

    def _objective_function(
        self, configuration: dict[str, Any], fidelity: dict | None = None, seed: int | None = None
    ) -> np.ndarray:
        config = self.table.snap(configuration)
        seconds, val, test = self.table.draw(config, self.rng)
        return np.column_stack([val, test, np.cumsum(seconds), seconds])


class _Trace(TunerCallback):
    """Collects every result Syne Tune's tuner saw, with the scheduler's decision on it."""

    def __init__(self, blackbox: TableBlackbox, budget: float) -> None:
        self.blackbox, self.budget = blackbox, budget
        self.rows: Trace = []
        self.spent = 0.0

    def on_trial_result(self, trial: Any, status: str, result: dict, decision: str) -> None:
        epoch = int(result["epoch"])
        ended = decision == SchedulerDecision.STOP or epoch == self.blackbox.table.epochs
        self.spent += float(result["epoch_seconds"])
        self.rows.append(
            (
                float(result["st_tuner_time"]),
                int(trial.trial_id),
                epoch,
                float(result["epoch_seconds"]),
                tuple(float(result[n]) for n in self.blackbox.val_names),
                tuple(float(result[n]) for n in self.blackbox.test_names),
                ended,
            )
        )

    def done(self, status: Any) -> bool:
        return self.spent >= self.budget


def _scheduler(name: str, blackbox: TableBlackbox, seed: int) -> Any:
    space, metrics = blackbox.configuration_space, blackbox.val_names
    if name == "st-moasha":
        asha = blackbox.table.space.asha
        return MOASHA(
            space,
            metrics=metrics,
            do_minimize=True,
            time_attr="epoch",
            max_t=blackbox.table.space.asha_max_t,
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
            random_seed=seed,
        )
    if name == "st-random":  # its RandomSearch baseline refuses two metrics in 0.16
        searcher = MultiObjectiveRandomSearcher(space, random_seed=seed)
        return SingleFidelityScheduler(
            space, metrics=metrics, do_minimize=True, searcher=searcher, random_seed=seed
        )
    if name == "st-morea":
        searcher = MultiObjectiveRegularizedEvolution(
            space, population_size=25, sample_size=5, random_seed=seed
        )
        return SingleFidelityScheduler(
            space, metrics=metrics, do_minimize=True, searcher=searcher, random_seed=seed
        )
    if name == "st-ehvi":
        from syne_tune.optimizer.baselines import EHVI

        return EHVI(space, metrics=metrics, do_minimize=True, random_seed=seed)
    raise ValueError(f"unknown Syne Tune contender {name!r}")


def replay_syne_tune(name: str, table: Any, workers: int, budget: float, seed: int) -> Trace:
    """One Syne Tune run of contender ``name`` on ``table`` with ``workers`` workers, until
    ``budget`` training seconds are spent (simulated)."""
    logging.getLogger("syne_tune").setLevel(logging.ERROR)
    np.random.seed(seed)  # Syne Tune's simulator draws from NumPy's global generator
    blackbox = TableBlackbox(table, np.random.default_rng(seed))
    trace = _Trace(blackbox, budget)
    quiet = TunerLogger()
    for method in dir(quiet):
        if method.startswith("print_"):
            setattr(quiet, method, lambda *args, **kwargs: None)
    with tempfile.TemporaryDirectory() as tmp, _results_in(tmp):
        backend = UserBlackboxBackend(blackbox, elapsed_time_attr="elapsed_time")
        tuner = Tuner(
            trial_backend=backend,
            scheduler=_scheduler(name, blackbox, seed),
            stop_criterion=trace.done,
            n_workers=workers,
            sleep_time=0,
            callbacks=[SimulatorCallback(), trace],
            save_tuner=False,
            tuner_name=f"replay-{name}-{seed}",
            trial_backend_path=tmp,
            print_update_interval=1e9,
            results_update_interval=1e9,
            output_logger=quiet,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # its closing summary table
            tuner.run()
    return trace.rows


@contextlib.contextmanager
def _results_in(folder: str) -> Iterator[None]:
    """Syne Tune writes each run's results under ``$SYNETUNE_FOLDER`` (default ``~/syne-tune``)."""
    before = os.environ.get("SYNETUNE_FOLDER")
    os.environ["SYNETUNE_FOLDER"] = folder
    try:
        yield
    finally:
        if before is None:
            del os.environ["SYNETUNE_FOLDER"]
        else:
            os.environ["SYNETUNE_FOLDER"] = before


def syne_tune_contenders() -> dict[str, Callable[[Any, int, float, int], Trace]]:
    """Syne Tune's contenders by name (``st-ehvi`` only where BoTorch imports)."""
    names = ["st-moasha", "st-random", "st-morea"]
    try:
        import botorch  # noqa: F401
    except ImportError:
        pass
    else:
        names.append("st-ehvi")

    def contender(name: str) -> Callable[[Any, int, float, int], Trace]:
        return lambda table, workers, budget, seed: replay_syne_tune(
            name, table, workers, budget, seed
        )

    return {name: contender(name) for name in names}
