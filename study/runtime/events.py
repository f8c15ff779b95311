"""The Tune callback that reports a study's trials on the console (``study.output``)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from search_spaces.schema import Space
from study import output
from study.output import duration
from study.storage.binding import current
from study.storage.records import counted, trial_status
from trainables.messages import diverged_reason


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class TrialEvents(Callback):
    """A Tune callback printing each trial's start (its sampled settings), its end (val accuracy,
    val ECE, status, seconds; the reason when pruned, diverged or failed) and the progress: done,
    running and pending trials, elapsed and estimated time left, the size of the current front.

    It holds no stream (Tune pickles its callbacks into the experiment state, and a resumed study
    gets them back): it prints through the display that ``console()`` opened, if any."""

    def __init__(self, space: Space, study_name: str, optuna_url: str) -> None:
        self.space = space
        self.study_name = study_name
        self.optuna_url = optuna_url
        self._started = time.time()
        self._ended_here: set[str] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled by a resume: the study is where the driver found it now (study.storage.binding).
        self.__dict__.update(state)
        self._ended_here = set()  # the time left is estimated from this run's trials only
        bound = current()
        if bound is not None:
            self.space, self.study_name, self.optuna_url = bound.space, bound.name, bound.optuna_url

    def setup(self, **info: Any) -> None:
        self._started = time.time()
        self._refreshed = 0.0
        self._ended_here = set()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # The live line between events: its clock and counts, every 2 s (terminal only).
        display = output.current()
        live = display is not None and display.bar is not None
        if live and time.time() - getattr(self, "_refreshed", 0.0) >= 2.0:
            self._refreshed = time.time()
            display.progress(self._progress(trials, None))

    def _shown_settings(self, config: dict[str, Any]) -> str:
        """``shown_settings`` of this study."""
        return shown_settings(self.space, config)

    def _elapsed(self) -> str:
        return duration(time.time() - self._started)

    def _progress(self, trials: list[Any], ended: Any) -> str:
        from study.analysis.front import front_points, load_optuna_study

        study = load_optuna_study(self.study_name, self.optuna_url)
        finished = [t for t in counted(study.get_trials(deepcopy=False)) if t.state.is_finished()]
        done = len(finished)
        running = sum(t.status == "RUNNING" and t is not ended for t in trials)
        pending = max(0, self.space.trials - done - running)
        elapsed = time.time() - self._started
        if ended is not None:
            self._ended_here.add(ended.trial_id)
        # Trials a resumed experiment brings back ended are not this run's: they took no time.
        this_run = len(self._ended_here)
        left = "?"
        if not pending + running:
            left = "nothing"
        elif this_run and elapsed > 0:
            left = "~" + duration(elapsed / this_run * (pending + running / 2))
        front = "front" if self.space.objective.type == "pareto" else "best"
        return (
            f"{done}/{self.space.trials} done, {running} running, {pending} pending, "
            f"{duration(elapsed)} elapsed, {left} left, {front} {len(front_points(study, self.space))}"
        )

    def _show(self, text: str, trials: list[Any] | None = None, ended: Any = None) -> None:
        display = output.current()
        if display is None:
            return
        line = f"[{self._elapsed():>6}] {text}"
        if trials is None:
            display.line(line)
            return
        progress = self._progress(trials, ended)
        display.line(line if display.bar is not None else f"{line}  ({progress})")
        display.progress(progress)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show(f"{trial.trial_id} started   {self._shown_settings(dict(trial.config))}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        status = trial_status(result, error=False)
        shown = "  ".join(
            f"{m} {result.get(m, float('nan')):.4g}" for m in self.space.objective.metrics
        )
        text = f"{trial.trial_id} {status:<9} {shown}  {result.get('time_total_s', 0):.0f} s"
        epoch, total = result.get("epoch", 0), result.get("epochs_total", 0)
        if status == "pruned":
            text += f"  (stopped by ASHA after epoch {epoch} of {total})"
        elif status == "diverged":
            text += f"  ({diverged_reason(bool(result.get('at_chance')), epoch)})"
        if result.get("node_type"):  # a cluster whose node types label their nodes
            text += f"  on {result['node_type']} {str(result.get('node_id', ''))[:6]}"
        self._record(trial, error=False)
        self._show(text, trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, error=True)
        self._show(f"{trial.trial_id} failed    {_error_line(trial)}", trials, trial)

    def _record(self, trial: Any, error: bool) -> None:
        """Make sure the Optuna study knows how ``trial`` ended: the searcher records it, but
        Tune's concurrency wrapper of a study started before issue 34 drops the results of
        trials missing from its own restored record (``study.search.TrialRecorder`` records
        once)."""
        from study.search.searcher import TrialRecorder

        recorder = TrialRecorder.open(self.space, self.study_name, self.optuna_url)
        recorder.record(trial.trial_id, trial.last_result or None, error)


def shown_settings(space: Space, config: dict[str, Any]) -> str:
    """What a trial line says of a trial's ``config``: every setting that varies within the
    study, at its value for this trial whether it is the default or not, so that rows of one
    kind read alike (``method=sam lr=0.02 rho=0.1`` beside ``method=sam lr=0.02 rho=0.03``).

    That is: the method (always); each searched setting that applies to the trial (its ``when``
    holds for the trial's settings); each setting that a point of the trial's method sets (a
    point's ``rho`` is shown on every SAM trial, not on SGD's); the seed of a repeated study."""
    settings = space.train_config(config).model_dump()
    shown = ["method"]
    shown += [k for k, dist in space.search.items() if dist.applies(settings)]
    same_kind = [p for p in space.points if space.train_config(p).method == settings["method"]]
    shown += [k for p in same_kind for k in p]
    if space.repeats > 1:
        shown.append("seed")
    return " ".join(filter(None, (_shown(k, settings[k]) for k in dict.fromkeys(shown))))


def _shown(key: str, value: Any) -> str:
    if key == "ood":  # of a point's own ood section, what changes training: held-out classes
        heldout = (value or {}).get("heldout") or {}
        return f"heldout={','.join(map(str, heldout.get('classes', [])))}" if heldout else ""
    return f"{key}={_value(value)}"


def _error_line(trial: Any) -> str:
    """The last line of a failed trial's error (its exception), or where to read it."""
    try:
        error = trial.get_error()
    except Exception:  # noqa: BLE001 - an unreadable error file must not stop the study
        error = None
    lines = [line for line in str(error or "").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else "see the study's driver.log"
