"""sharpcal's studies as a Python library; the ``study`` command is argument parsing and printing
over it.

    from study import Study

    s = Study.create("default", name="first", overrides={"samples": 4})
    s.run()                       # trials on a private local Ray (or run(address="auto"))
    s.front()                     # the Pareto front (or best trial), a DataFrame
    s.compare(baseline=1).frame() # per configuration, mean/std over seeds (+ paired differences)
    s.evidence().to_table()       # the per-sample Parquet evidence (a pyarrow dataset)
    s.report()                    # writes <study>/report/, returns its path
    Study.load("first").resume()  # after a crash, Ctrl-C or reboot

Every error is a ``trainables.errors.SharpcalError`` (one line: what, where, how to fix), bad
input before anything is written or started; ``StudyInputError`` is its older name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces.schema import Space, check_space, load_space
from study.output import plural, warn
from trainables.errors import InputError, SharpcalError
from trainables.layout import StudyPaths, study_paths

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import pyarrow.dataset as pads

    from study.analysis.compare import Comparison
    from study.api.status import StudyStatus

# New Tuners a run may start after Tune's own ends short of the study's trials (see ``_fit``).
MAX_TOP_UPS = 3
# The name the API's errors had before they shared one base: every error sharpcal raises for its
# user (bad input, storage, data, plugins) is a ``SharpcalError``, and catching this catches them.
StudyInputError = SharpcalError


@contextmanager
def user_errors(*more: type[Exception]) -> Iterator[None]:
    """Let sharpcal's own errors through, and turn ``more`` (other libraries' errors that mean
    bad input at this point) into an ``InputError`` with the same one-line message."""
    try:
        yield
    except SharpcalError:
        raise
    except more as err:
        raise InputError(str(err)) from None


@dataclass(frozen=True)
class RunSummary:
    """How a run or resume ended: trials Tune ran this time, how many errored, the report (None
    when every trial errored, or when it was stopped hard), when it ended before all its trials
    (Ctrl-C, SIGTERM, a full disk) how many of the study's trials had finished (None: it did
    not) and, when the machine stopped it (a full disk), why (``stopped``)."""

    trials: int
    errors: int
    report: Path | None
    interrupted_at: int | None = None
    stopped: str | None = None


def resolve(
    space: str | Path | dict[str, Any] | Space, overrides: dict[str, Any] | None = None
) -> Space:
    """A validated space from a bundled name, a YAML file, a dict or a ``Space``, with
    ``overrides`` (``--set``-style settings or study keys such as ``samples``) applied."""
    from study.search.schedulers import check_scheduler

    with user_errors():
        if isinstance(space, Space):
            space = space.model_dump(mode="json")
        source = "space"
        if isinstance(space, dict):
            from search_spaces.schema import check_overridden

            resolved = check_overridden(dict(space), overrides or {}, source)
        else:
            from search_spaces import resolve_space

            source = str(resolve_space(str(space)))
            resolved = load_space(str(space), overrides)
        # a registered scheduler (plugins included) that can run the space's settings
        check_scheduler(resolved, source)
        return resolved


def unsearched_settings(
    space: str | Path | dict[str, Any] | Space, overrides: dict[str, Any] | None
) -> list[str]:
    """The settings ``overrides`` fix that ``space`` searched (overriding takes them out of the
    search)."""
    from search_spaces import read_space_yaml, resolve_space
    from search_spaces.schema import unsearched

    if not overrides:
        return []
    with user_errors():
        if isinstance(space, Space):
            data: dict[str, Any] = {"search": dict(space.search)}
        elif isinstance(space, dict):
            data = space
        else:
            data = read_space_yaml(resolve_space(str(space)))
    return unsearched(data, overrides)


def check_inputs(
    space: Space,
    name: str,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    runs_here: bool | None = None,
) -> StudyPaths:
    """Everything a study's start checks before it writes a file or starts Ray: the name, the
    storage, the URIs (no credentials in them), the OOD files and, for a study that runs on this
    machine (``runs_here``, default: no ``address``), every device and dataset. Returns the
    study's paths."""
    from study.api.inputs import (
        check_address,
        check_no_credentials,
        check_storage,
        check_tracking_reachable,
        check_tracking_uri,
    )

    with user_errors():
        check_tracking_uri(tracking_uri)
        check_tracking_reachable(tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}")
        check_no_credentials(address, "--address")
        check_address(address)
        check_storage(storage)
        paths = study_paths(name, storage)
    from study.storage.files import check_new_study

    with user_errors():
        check_new_study(paths, name)  # what the run refuses, the dry run refuses
    check_files(space, runs_here if runs_here is not None else not address)
    return paths


def check_files(space: Space, runs_here: bool = True) -> None:
    """What a space reads, checked before anything is written: its OOD files and, for a study
    that runs on this machine, every device and dataset it can reach."""
    from study.api.inputs import check_runs_here
    from trainables.evaluation.ood import check_ood_config

    with user_errors():
        check_ood_config(space.train_config())
        if runs_here:
            check_runs_here(space)


@dataclass(frozen=True)
class StudyPlan:
    """A study checked and ready to create: its resolved space, name and paths, and the
    settings an override took out of the search (``unsearched``)."""

    space: Space
    name: str
    paths: StudyPaths
    unsearched: list[str]

    def describe(self) -> str:
        """``study NAME: 8 configurations x 2 seeds = 16 trials, 2 at a time``."""
        space = self.space
        repeats = f" x {plural(space.repeats, 'seed')}" if space.repeats > 1 else ""
        return (
            f"study {self.name}: {plural(space.samples, 'configuration')}{repeats} = "
            f"{plural(space.trials, 'trial')}, {space.concurrency} at a time"
        )

    def notes(self) -> list[str]:
        """What the user may not expect from their overrides."""
        return [
            f"--set {key} fixes {key}={self.space.fixed[key]!r}: it is no longer searched"
            for key in self.unsearched
        ]


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None: it exists)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


class Study:
    """One study: its name, where it lives (``paths``) and its resolved ``space``."""

    def __init__(self, name: str, paths: StudyPaths, space: Space) -> None:
        self.name = name
        self.paths = paths
        self.space = space
        self._address: str | None = None

    def __repr__(self) -> str:
        return f"Study({self.name!r}, root={str(self.paths.root)!r})"

    # ---------------------------------------------------------------------------------------
    # Making and finding studies
    # ---------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        space: str | Path | dict[str, Any] | Space,
        name: str | None = None,
        storage: str | None = "studies",
        tracking_uri: str | None = None,
        overrides: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        address: str | None = None,
    ) -> Study:
        """Validate everything (``check``), then create the study (its directory, resolved space
        and MLflow parent run); ``run()`` starts its trials. ``name`` defaults to the space's
        name; a name that already has a study is refused (``Study.load(name).resume()``
        continues it). ``address``: the Ray cluster it will run on (None: this machine, whose
        devices and data are checked now)."""
        from study.api import arguments

        with user_errors():
            tags = arguments.str_dict(tags, "tags", str_values=True)
        plan = cls.check(space, name, storage, tracking_uri, overrides, address)
        source = space if isinstance(space, (str, Path)) else "a dict"
        _create(
            plan.space, plan.name, plan.paths, tracking_uri, {"space": str(source), **(tags or {})}
        )
        return cls(plan.name, plan.paths, plan.space.model_copy(update={"name": plan.name}))

    @staticmethod
    def check(
        space: str | Path | dict[str, Any] | Space,
        name: str | None = None,
        storage: str | None = "studies",
        tracking_uri: str | None = None,
        overrides: dict[str, Any] | None = None,
        address: str | None = None,
    ) -> StudyPlan:
        """Every check ``create`` makes (space, name, storage, URIs, OOD files and, without an
        ``address``, devices and data), writing nothing: what ``study run --dry-run`` runs.
        Bad input is a ``StudyInputError``."""
        from study.api import arguments

        with user_errors():
            arguments.space_arg(space)
            arguments.optional_str(name, "name")
            storage = arguments.storage_arg(storage)
            arguments.optional_str(tracking_uri, "tracking_uri")
            arguments.str_dict(overrides, "overrides")
            arguments.optional_str(address, "address")
        resolved = resolve(space, overrides)
        name = name or resolved.name or "study"
        paths = check_inputs(resolved, name, storage, tracking_uri, address)
        return StudyPlan(resolved, name, paths, unsearched_settings(space, overrides))

    @classmethod
    def load(cls, name: str, storage: str | None = "studies") -> Study:
        """An existing study by name."""
        from study.api import arguments
        from study.api.inputs import check_no_credentials
        from study.storage.files import check_study_dir, load_study_space

        with user_errors():
            arguments.required_str(name, "name")
            storage = arguments.storage_arg(storage)
            check_no_credentials(storage, "--storage")
            paths = study_paths(name, storage)
            check_study_dir(paths, name, writing=False)  # no symlinked study or lock is read
            return cls(name, paths, load_study_space(paths, name))

    # ---------------------------------------------------------------------------------------
    # Running
    # ---------------------------------------------------------------------------------------

    def run(self, address: str | None = None, verbose: bool = False) -> RunSummary:
        """Run the study's trials (on a private local Ray, or the cluster at ``address``) and
        write its report. A study whose trials already started is resumed with ``resume()``.

        Prints one line per trial event and a progress line; Ray's and Tune's own output goes
        to ``<study>/driver.log`` (``verbose``: to the console, as Ray prints it)."""
        return self._start(address, verbose, restart=False)

    def _start(self, address: str | None, verbose: bool, restart: bool) -> RunSummary:
        """Run the study from the Optuna database with a new Tuner. ``restart``: a start that
        ended before Tune recorded anything (``resume()``): its leftovers are cleared first."""
        from study.storage.files import has_tune_state

        with self._driving(address):
            if has_tune_state(self.paths):
                raise InputError(
                    f"study {self.name!r} has already started its trials; continue it with "
                    f"'study resume {self.name}'"
                )
            return self._start_driven(verbose, restart)

    def _start_driven(self, verbose: bool, restart: bool) -> RunSummary:
        """``_start`` under the driver lock."""
        from study.search.searcher import create_optuna_db
        from study.storage.records import finished_count

        remaining = self.space.trials
        if restart:
            self._clear_unstarted()
            if self._asked_any():
                remaining -= finished_count(self.optuna())
        create_optuna_db(self.space, self.name, self.paths.optuna_db, self.paths.optuna_url)
        return self._fit(lambda: self._fresh_tuner(remaining), verbose)

    def _fresh_tuner(self, trials: int) -> Any:
        """A new Tuner running ``trials`` more trials of the study, with its callbacks (trial
        events, MLflow)."""
        from study.runtime.events import TrialEvents
        from study.runtime.tuner import build_tuner
        from study.tracking.runs import MlflowTrialCallback

        info = self.tracking()
        callbacks: list[Any] = [TrialEvents(self.space, self.name, self.paths.optuna_url)]
        if info:
            callbacks.append(
                MlflowTrialCallback(
                    info["tracking_uri"],
                    info["experiment_id"],
                    info["parent_run_id"],
                    self.paths.data_uri,
                    optuna_study=(self.paths.optuna_url, self.name),
                )
            )
        return build_tuner(self.space, self.name, self.paths, callbacks, trials)

    def _clear_unstarted(self) -> None:
        """What a start killed before Tune's first snapshot left: Tune's files (nothing a restore
        could continue) and the Optuna trials it asked for (failed as orphans, with any evidence
        of theirs), so that a new start neither repeats nor counts them."""
        from study.storage.files import discard_unstarted_tune_dir, has_unstarted_tune_dir
        from study.storage.records import fail_orphans

        if has_unstarted_tune_dir(self.paths):
            discard_unstarted_tune_dir(self.paths)
        if not self._asked_any():
            return
        fail_orphans(self.optuna(writable=True), data_uri=self.paths.data_uri)

    def resume(self, address: str | None = None, verbose: bool = False) -> RunSummary:
        """Continue an interrupted study from Tune's experiment state and the Optuna database:
        finished trials stay, interrupted ones restart from their last epoch checkpoint. A study
        whose start failed before any trial was asked for runs from the beginning."""
        from study.api import arguments
        from study.runtime.tuner import check_in_place
        from study.storage.files import (
            check_optuna_db,
            check_restorable,
            check_writable,
            has_tune_state,
        )

        with user_errors():
            arguments.optional_str(address, "address")
            check_writable(self.paths, self.name, "resume")
            # intact, never repaired (under the name it was stored with: a renamed study's
            # policy is check_in_place's)
            check_optuna_db(self.paths, self.space.name or self.name)
        self.tracking()  # readable, before Ray starts
        with user_errors():
            check_restorable(self.paths, self.name)  # this user's own, before reading or clearing
        if not has_tune_state(self.paths):
            # Tune recorded nothing: a start that failed, or was killed before Tune's first
            # snapshot. The study starts again from its Optuna database (``_clear_unstarted``).
            with user_errors():
                check_in_place(self.space, self.name, self.paths)
            return self._start(address, verbose, restart=True)
        with user_errors():
            check_in_place(self.space, self.name, self.paths)
        with self._driving(address):
            if not self._set_aside_cut_tune_state():
                return self._start_driven(verbose, restart=True)
            return self._fit(self._restored_tuner, verbose)

    def _set_aside_cut_tune_state(self) -> bool:
        """Set aside Tune's state files that a killed driver or a full disk cut short
        (``set_aside_cut_tune_state``), saying so; returns whether a whole experiment state is
        left to restore. None left (the study's only one was cut): the study goes on from its
        Optuna database with a new Tuner, its finished trials and their checkpoints kept."""
        from study.storage.files import CUT_SUFFIX, has_tune_state, set_aside_cut_tune_state

        cut = set_aside_cut_tune_state(self.paths)
        restorable = has_tune_state(self.paths)
        if cut:
            then = (
                "the restore reads the newest whole one"
                if restorable
                else "no whole experiment state is left, so the study goes on from its Optuna "
                "database with a new Tuner (finished trials kept, unfinished ones start again)"
            )
            warn(
                f"Tune's {', '.join(cut)} in {self.paths.tune} cut short (a driver killed or a "
                f"disk full while Tune copied it): set aside as {CUT_SUFFIX}; {then}"
            )
        return restorable

    def _restored_tuner(self) -> Any:
        """Tune's restored Tuner. Tune writes ``tuner.pkl`` in place, when a Tuner is made (the
        study's start, a top-up): a driver killed then leaves it cut short beside an experiment
        state, and it is written again from the study's space (the trials, the searcher's and
        the scheduler's states come from their own files). A state file cut short the same way
        is set aside before (``_set_aside_cut_tune_state``)."""
        from study.runtime.tuner import restore_tuner

        try:
            return restore_tuner(self.space, self.name, self.paths)
        except (EOFError, pickle.UnpicklingError):
            warn(
                f"Tune's tuner.pkl in {self.paths.tune} was cut short (a driver killed while "
                "Tune wrote it): written again from the study's space"
            )
            self._fresh_tuner(self.space.trials)
            return restore_tuner(self.space, self.name, self.paths)

    def _asked_any(self) -> bool:
        """Whether any trial was ever asked of the Optuna study."""
        if not self.paths.optuna_db.is_file():
            return False
        try:
            return bool(self.optuna().get_trials(deepcopy=False))
        except KeyError:  # the database exists, the study in it does not
            return False

    @contextmanager
    def _driving(self, address: str | None) -> Iterator[None]:
        """Hold the study's driver lock, after checking what can be checked without Ray."""
        from study.api import arguments
        from study.api.inputs import check_address, check_no_credentials, check_runs_here
        from study.storage.files import check_study_dir, check_writable
        from study.storage.lock import StudyLock, describe_holder
        from study.tracking.runs import parent_run_open

        info = self.tracking()
        lock = StudyLock(self.paths.root, self.name)
        with user_errors():
            check_study_dir(self.paths, self.name)  # no symlink, nothing of another user's
            check_writable(self.paths, self.name, "resume")
            arguments.optional_str(address, "address")
            check_no_credentials(address, "--address")
            check_address(address)
            if not address:
                check_runs_here(self.space)
            lock.acquire()
        try:
            if lock.previous:
                holder = describe_holder(lock.previous)
                print(f"taking over the lock of a driver that is gone ({holder})")
            with ExitStack() as parent_run:
                with user_errors():
                    parent_run.enter_context(parent_run_open(info, self.name))
                self._address = address
                yield
        finally:
            lock.release()

    def _fit(self, make_tuner: Callable[[], Any], verbose: bool) -> RunSummary:
        """Fit the tuner, then fail orphans and write the report, inside the study's console; a
        Ray started here is stopped here (so nothing of it prints after the summary).

        Ctrl-C or SIGTERM while the trials run stops Tune gracefully (``DriverSignals``); a
        second signal, or one elsewhere, stops at once; either way the study ends "interrupted"
        (``RunSummary.interrupted_at``) and its unfinished trials wait for ``resume()``. A full
        disk stops it the same way (``RunSummary.stopped``), the driver alive to say so."""
        import ray

        from study.output import console
        from study.runtime.interrupts import DriverSignals, disk_full
        from study.runtime.tuner import init_ray, probe_plugins
        from study.storage.records import fail_orphans, finished_count
        from study.tracking.model_registry import model_logging_warmed
        from trainables.trial.hold import hold_driver_if_asked

        results: Any = None
        stopped: str | None = None
        report: Path | None = None
        ran = errors = 0
        with console(self.paths.log, self.space.trials, verbose), DriverSignals() as signals:
            started_here = not ray.is_initialized()
            try:
                try:
                    with user_errors():
                        init_ray(self._address, plugins=self.space.plugins)
                    signals.install()  # again: ray.init installed its own SIGTERM handler
                    with user_errors():
                        probe_plugins(self.space.plugins)  # before any trial
                    hold_driver_if_asked("tuner")
                    with user_errors():
                        tuner = make_tuner()
                    with model_logging_warmed(bool(self.tracking())):
                        with signals.fitting():
                            results = tuner.fit()
                        ran, errors = len(results), results.num_errors
                        # Optuna, not Tune's saved state, says how many trials the study
                        # still needs (a kill can leave Tune's trial list and its count of
                        # trials asked for disagreeing): a normal end short of them runs a new
                        # Tuner for the rest
                        for _ in range(MAX_TOP_UPS):
                            if not self._ended_normally(results, signals):
                                break
                            # nothing can still be running
                            fail_orphans(self.optuna(writable=True), data_uri=self.paths.data_uri)
                            missing = self.space.trials - finished_count(self.optuna())
                            if missing <= 0:
                                break
                            with user_errors():
                                tuner = self._fresh_tuner(missing)
                            with signals.fitting():
                                results = tuner.fit()
                            ran, errors = ran + len(results), errors + results.num_errors
                except KeyboardInterrupt:
                    signals.received = max(signals.received, 1)
                except Exception as err:
                    full = disk_full(err)
                    if full is None:
                        raise
                    stopped = f"{full} (writing the study's files in {self.paths.root})"
                ran_any = ran > errors
                if stopped is None and signals.received < 2 and ran_any:
                    report = self.report()
                    self._log_front_models()
            except KeyboardInterrupt:  # again, while the report was written: it is left out
                signals.received = max(signals.received, 2)
            finally:
                if started_here:
                    ray.shutdown()
        finished = finished_count(self.optuna())
        cut_short = finished < self.space.trials or (signals.received and report is None)
        interrupted = finished if cut_short and stopped is None else None
        if stopped is not None:
            interrupted = finished
        return RunSummary(ran, errors, report, interrupted, stopped)

    @staticmethod
    def _ended_normally(results: Any, signals: Any) -> bool:
        """Tune's run ended by itself: no signal, every trial finished or errored."""
        return not signals.received and all(r.metrics or r.error for r in results)

    def _log_front_models(self) -> None:
        """Log the model of every front point (or of the best trial) on its trial's MLflow run,
        of its epoch; a model that cannot be logged is a warning (the study itself is done and
        on disk)."""
        from study.analysis.epochs import epoch_of
        from study.analysis.front import front_points
        from study.output import warn
        from study.storage.records import EPOCH_ATTR
        from study.tracking.model_registry import log_trial_model, trial_run_id

        info = self.tracking()
        if not info:
            return
        for trial in front_points(self.optuna(), self.space):
            try:
                run_id = trial_run_id(info["tracking_uri"], info["experiment_id"], trial)
                log_trial_model(self.paths, trial, info["tracking_uri"], run_id)
            except Exception as err:  # noqa: BLE001 - MLflow, storage or data: say it, go on
                reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                at = f" (epoch {epoch_of(trial)})" if EPOCH_ATTR in trial.user_attrs else ""
                warn(f"the model of trial {trial.number}{at} was not logged to MLflow: {reason}")

    def register(self, model_name: str, trial: int | None = None, epoch: int | None = None) -> Any:
        """Register a trial's model in MLflow's Model Registry as a new version of
        ``model_name`` (tagged with its epoch, its test metrics and temperature at that epoch);
        returns the ``ModelVersion``. ``trial``: an Optuna trial number; default the best trial
        (under a Pareto objective, the front point with the highest ``compare.rank_score``: by
        default ``val_accuracy - val_ece``). ``epoch``: one of the trial's kept epochs (late
        checkpoints); default its best. A diverged trial is never registered."""
        from study.api import arguments
        from study.tracking.model_registry import choose_trial, register_trial_model

        with user_errors():
            arguments.model_name(model_name)
            arguments.trial_number(trial)
            arguments.count(epoch, "epoch", optional=True)
        info = self.tracking()
        if not info:
            raise InputError(f"study {self.name!r} is not tracked in MLflow: nothing to register")
        study = self.optuna()
        with user_errors(LookupError):
            chosen = choose_trial(study, self.space, self.name, trial, epoch)
            return register_trial_model(self.paths, chosen, info, model_name)

    def rerun(
        self,
        top: int = 3,
        seeds: int = 3,
        name: str | None = None,
        concurrency: int | None = None,
        storage: str | None = None,
        tracking_uri: str | None = None,
        address: str | None = None,
        epoch: str | None = None,
    ) -> Study:
        """A new study (created, not run) of this study's ``top`` best configurations with
        ``seeds`` seeds each; ``name`` defaults to ``<name>-rerun``; ``address`` as in
        ``create``; ``epoch`` as in ``compare``: a configuration chosen at a late epoch is rerun
        to it (``stop_after``, the schedule of all its epochs). Only of a finished study: while
        its driver runs, or with trials unfinished (an interrupted study), its ranking is
        partial and the rerun is refused (one line)."""
        from study.analysis.compare import top_configurations
        from study.api import arguments
        from study.storage.lock import held_by

        with user_errors():
            arguments.count(top, "top")
            arguments.count(seeds, "seeds")
            arguments.optional_str(name, "name")
            arguments.count(concurrency, "concurrency", optional=True)
            storage = arguments.storage_arg(storage)
            arguments.optional_str(tracking_uri, "tracking_uri")
            arguments.optional_str(address, "address")
            _check_epoch(epoch)
        with user_errors():
            driver = held_by(self.paths.root)
        if driver:
            raise InputError(
                f"study {self.name!r} is still running (its driver: {driver}); a rerun would "
                f"rank its partial results: wait for it to finish ('study status {self.name}')"
            )
        study = self.optuna()
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        if finished < self.space.trials:
            raise InputError(
                f"study {self.name!r} is unfinished ({finished} of "
                f"{plural(self.space.trials, 'trial')} finished); a rerun would rank its partial "
                f"results: finish it first with 'study resume {self.name}'"
            )
        best = top_configurations(study, self.space, top, epoch)
        if not best:
            raise InputError(f"study {self.name!r} has no completed trial to rerun")
        new_name = name or f"{self.name}-rerun"
        data = self.space.model_dump(mode="json")
        data.update(
            name=new_name,
            description=f"the {plural(len(best), 'best configuration')} of {self.name}, "
            f"{plural(seeds, 'seed')}"
            + (
                ", to their chosen epochs (stop_after)"
                if any("stop_after" in b for b in best)
                else ""
            ),
            points=best,
            samples=len(best),
            repeats=seeds,
            scheduler="none",
            late_checkpoints="off",  # a chosen late epoch is each point's stop_after
            concurrency=concurrency or self.space.concurrency,
        )
        with user_errors():
            space = check_space(data, f"rerun of {self.name}")
        storage = storage if storage is not None else str(self.paths.root.parent)
        from study.storage.files import StudyExists, refuse_existing

        with user_errors():
            target = study_paths(new_name, storage)
        try:
            refuse_existing(new_name, target)
        except StudyExists:
            raise InputError(
                f"study {new_name!r} already exists in {target.root}: give the rerun another "
                f"name with --new-name (name= in the API)"
            ) from None
        return Study.create(
            space,
            new_name,
            storage,
            tracking_uri,
            tags={"space": f"rerun of {self.name}"},
            address=address,
        )

    # ---------------------------------------------------------------------------------------
    # Results
    # ---------------------------------------------------------------------------------------

    def optuna(self, writable: bool = False) -> optuna.Study:
        """The Optuna study, read-only from its checked database (never created, migrated or
        repaired by reading; ``writable``: for the driver). A corrupt database, or a directory
        holding another study (renamed or copied), is a ``StudyInputError``."""
        from study.analysis.front import load_optuna_study
        from study.storage.files import check_study_name, open_optuna_study

        if not self.paths.optuna_db.is_file():
            raise InputError(
                f"study {self.name!r} has no Optuna database ({self.paths.optuna_db}): none of its "
                f"trials has started; start them with 'study resume {self.name}'"
            )
        if writable:
            return load_optuna_study(self.name, self.paths.optuna_url)
        with user_errors():
            check_study_name(self.paths, self.name, self.space)
            return open_optuna_study(self.paths, self.name)

    def tracking(self) -> dict[str, str]:
        """Where the study is tracked in MLflow ({} without tracking)."""
        from study.storage.files import load_tracking

        with user_errors():
            return load_tracking(self.paths)

    def front(self) -> pd.DataFrame:
        """The Pareto front (or the best trial): one row per trial with its Tune id, status,
        hyperparameters, val and test metrics."""
        import pandas as pd

        from study.analysis.front import front_rows

        return pd.DataFrame(front_rows(self.optuna(), self.space))

    def compare(
        self,
        baseline: str | int | None = None,
        ensembles: bool = False,
        calibrators: str | Sequence[str] | None = None,
        epoch: str | None = None,
    ) -> Comparison:
        """The study's comparison, as ``study compare`` prints it (``study.analysis.compare.Comparison``):
        ``.tables`` (one row per configuration: seeds, each metric's mean and std over seeds),
        with ``baseline`` (a configuration's label or 1-based row number) ``.paired`` (each
        metric's paired difference to it: mean and 95% Student-t interval), with ``ensembles``
        the deep ensemble of each configuration's seeds from the stored probabilities
        (``.ensembles``, rows of the tables too) and why a configuration got none
        (``.skipped``), with ``calibrators`` (``"ts,vs,ms,hb,iso"``, ``study.analysis.calibrators``)
        every trial recalibrated from its stored val evidence: ``.calibrated`` (per calibrator,
        ``none`` first, the test and corruption metrics after it) and with a baseline
        ``.calibrated_paired`` (differences after the same calibrator).
        ``.frame()`` is all of it as one DataFrame (fractions, as logged),
        ``.render("markdown" | "latex" | "csv")`` the command's text. ``epoch``: each trial at
        its ``last`` epoch or at its ``chosen`` late checkpoint (an ``epoch`` column then);
        default ``chosen`` for a search with late checkpoints, else ``last``. A ``baseline``
        naming no row is a ``StudyInputError``."""
        from study.analysis.compare import (
            Comparison,
            comparison_tables,
            find_row,
            paired_columns,
            paired_table,
        )
        from study.analysis.ensembles import with_ensembles
        from study.analysis.posthoc import calibrated_tables
        from study.api import arguments

        with user_errors():
            arguments.baseline_arg(baseline)
            arguments.flag(ensembles, "ensembles")
            names = arguments.calibrators_arg(calibrators)
            _check_epoch(epoch)
        tables = comparison_tables(self.optuna(), self.space, epoch)
        confs = tables[0].confs
        paired, row = None, None
        if baseline is not None and confs:
            with user_errors():
                row = find_row(confs, str(baseline))
            paired = paired_table(confs, row, self.space, paired_columns(tables))
        skipped: list[str] = []
        shown = tables
        if ensembles and confs:
            shown = with_ensembles(tables, str(self.paths.evidence), skipped)
        comparison = Comparison(shown, paired, shown[0].confs[len(confs) :], skipped)
        if names and confs:
            comparison.calibrated = calibrated_tables(
                confs, str(self.paths.evidence), names, skipped
            )
            if row is not None:
                comparison.calibrated_paired = [
                    (name, paired_table(table.confs, row, self.space, table.columns))
                    for name, table in comparison.calibrated
                ]
        return comparison

    def status(self, address: str | None = "auto") -> StudyStatus:
        """Where the study stands, from its storage (works while another process runs it):
        trials by state, the driver, elapsed time, the best trials so far, the MLflow run; while
        its driver runs, the alive nodes of the Ray cluster at ``address`` by node type, from
        Ray's state API (``auto``: ``RAY_ADDRESS`` or the cluster ``ray start`` runs on this
        machine, never a driver's private Ray; None, or no cluster there: none, at once)."""
        from study.api.status import study_status
        from study.runtime.cluster import nodes_by_type
        from study.storage.files import check_study_name

        with user_errors():
            check_study_name(self.paths, self.name, self.space)
        study = self.optuna() if self._asked_any() else None
        status = study_status(self.name, self.paths, self.space, study, self.tracking())
        if status.driver is not None and address is not None:
            status = dataclasses.replace(status, nodes=nodes_by_type(address))
        return status

    def evidence(self) -> pads.Dataset:
        """The per-sample evidence of every trial (``trial_id`` and ``split`` as strings)."""
        from trainables.evaluation.evidence import open_evidence

        return open_evidence(self.paths.evidence)

    def report(self) -> Path:
        """Write (or rewrite) the study's report (``<study>/report/``); returns report.md's path."""
        from study.report.writer import write_report
        from study.storage.files import check_writable

        self.optuna()  # a study with no trials has nothing to report
        info = self.tracking() or None
        with user_errors():
            check_writable(self.paths, self.name, "report")
            return write_report(self.paths, self.name, self.space, info)


def _check_epoch(epoch: str | None) -> None:
    """``epoch`` of ``compare`` and ``rerun``: None or one of ``compare.EPOCHS``."""
    from study.analysis.compare import EPOCHS

    if epoch is not None and epoch not in EPOCHS:
        raise InputError(f"epoch must be one of {', '.join(EPOCHS)} (got {epoch!r})")


def _create(
    space: Space, name: str, paths: StudyPaths, tracking_uri: str | None, tags: dict[str, str]
) -> None:
    """Create the study's directory, space file and MLflow parent run under the driver lock;
    on any failure leave nothing of it behind."""
    from study.storage.files import (
        clear_unfinished_creation,
        prepare_study,
        refuse_existing,
        save_tracking,
        unfinished_creation,
    )
    from study.storage.lock import StudyLock
    from study.tracking.runs import (
        StudyTracker,
        default_tracking_uri,
        flatten,
        git_commit,
    )

    tracking_uri = tracking_uri or default_tracking_uri()
    created = _first_missing(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = StudyLock(paths.root, name)
    try:
        with user_errors():
            lock.acquire()
            refuse_existing(name, paths)  # before the tracking store is touched
            if unfinished_creation(paths):  # a start killed before space.yaml: no study yet
                _close_abandoned_run(clear_unfinished_creation(paths))
            # a local store keeps the study's artifacts in the study (an S3 study's metadata dir)
            tracker = StudyTracker(tracking_uri, name, paths.mlflow_artifacts)
        run_tags = {
            "sampler": space.sampler,
            "objective": space.objective.type,
            "sharpcal.kind": "study",
            **tags,
        }
        commit = git_commit()
        if commit:
            run_tags["git_commit"] = commit
        parent = tracker.parent_run(None, flatten(space.model_dump(mode="json")), run_tags)
        save_tracking(
            paths,
            {
                "tracking_uri": tracking_uri,
                "experiment_id": tracker.experiment_id,
                "parent_run_id": parent,
            },
        )
        with user_errors():
            prepare_study(space, name, paths)  # space.yaml last: it makes the study one
    except BaseException:
        lock.release(discard=True)  # a refused start leaves no driver.lock behind
        if created:  # nothing of this study may stay: a new start must find the name free
            shutil.rmtree(created, ignore_errors=True)
        elif unfinished_creation(paths):
            clear_unfinished_creation(paths)
        raise
    finally:
        lock.release()


def _close_abandoned_run(info: dict[str, str]) -> None:
    """Mark the MLflow parent run of a start killed before its study existed as failed (best
    effort: the new start makes its own)."""
    if not info:
        return
    from study.tracking.runs import make_client

    # an unreachable or changed store: the run stays as it was
    with contextlib.suppress(Exception):
        make_client(info["tracking_uri"]).set_terminated(info["parent_run_id"], status="FAILED")
