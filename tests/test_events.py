"""What a trial's console line says of its settings (no Ray started)."""

from __future__ import annotations

import re

from search_spaces.schema import check_space
from study.runtime.events import TrialEvents

SPACE = check_space(
    {
        "fixed": {"dataset": "digits", "epochs": 1},
        "points": [{"method": "sam", "rho": 0.05}, {"method": "sgd"}],
        "repeats": 2,
    },
    "test",
)


def test_a_trial_line_always_names_the_method_even_the_default_one():
    """Issue 22, item 9: a SAM point (sam is the default method) read ``rho=0.05 seed=0``."""
    events = TrialEvents(SPACE, "st", "sqlite:////nonexistent/optuna.db")
    assert events._shown_settings({"method": "sam", "rho": 0.05, "seed": 0}) == (
        "method=sam rho=0.05 seed=0"
    )
    assert events._shown_settings({"method": "sgd", "seed": 1}) == "method=sgd seed=1"
    searched = check_space(
        {"fixed": {"method": "csam"}, "search": {"gamma": {"uniform": [0, 2]}}}, "t"
    )
    line = TrialEvents(searched, "st", "sqlite:////x.db")._shown_settings({"gamma": 0.5})
    assert line == "method=csam gamma=0.5"


def test_a_trial_line_shows_every_setting_that_varies_in_the_study_default_or_not():
    """Issue 34, item 11: ``method=sam lr=0.02`` (rho at its default 0.1) read like a different
    kind of row from ``method=sam lr=0.02 rho=0.03``."""
    points = check_space(
        {
            "fixed": {"dataset": "digits", "epochs": 1},
            "points": [
                {"method": "sam", "lr": 0.02},
                {"method": "sam", "lr": 0.02, "rho": 0.03},
                {"method": "sgd", "lr": 0.05},
            ],
        },
        "test",
    )
    events = TrialEvents(points, "st", "sqlite:////x.db")
    assert events._shown_settings({"method": "sam", "lr": 0.02}) == "method=sam lr=0.02 rho=0.1"
    assert events._shown_settings({"method": "sam", "lr": 0.02, "rho": 0.03}) == (
        "method=sam lr=0.02 rho=0.03"
    )
    assert events._shown_settings({"method": "sgd", "lr": 0.05}) == "method=sgd lr=0.05"
    # searched: every setting whose `when` holds, at its value (here gamma at its default 1)
    searched = check_space(
        {
            "fixed": {"dataset": "digits", "epochs": 1},
            "search": {
                "method": {"categorical": ["sgd", "csam"]},
                "lr": {"loguniform": [0.01, 0.1]},
                "gamma": {"uniform": [0.0, 2.0], "when": {"method": ["csam"]}},
            },
        },
        "test",
    )
    events = TrialEvents(searched, "st", "sqlite:////x.db")
    line = events._shown_settings({"method": "csam", "lr": 0.05, "gamma": 1.0})
    assert line == "method=csam lr=0.05 gamma=1"
    assert events._shown_settings({"method": "sgd", "lr": 0.1}) == "method=sgd lr=0.1"


def test_a_trial_line_names_held_out_classes_not_the_ood_section():
    """Issue 24, item 5: a point's own ``ood`` section showed as a dict on every trial line."""
    heldout = {"heldout": {"classes": [6, 9]}, "digits": {}}
    space = check_space(
        {
            "fixed": {"dataset": "fashion_mnist", "epochs": 1},
            "ood": {"digits": {}},
            "points": [{"method": "sgd"}, {"method": "sgd", "ood": heldout}],
        },
        "test",
    )
    events = TrialEvents(space, "st", "sqlite:////x.db")
    assert events._shown_settings({"method": "sgd", "ood": {"digits": {}}}) == "method=sgd"
    assert events._shown_settings({"method": "sgd", "ood": heldout}) == "method=sgd heldout=6,9"


class _Trial:
    def __init__(self, trial_id: str, status: str) -> None:
        self.trial_id, self.status = trial_id, status


def test_the_time_left_of_a_resumed_study_counts_only_this_runs_trials(tmp_path):
    """A resume brings back the trials that ended before as TERMINATED: counted as this run's,
    they made a 2-hour study read "~1m left" after its first trial here."""
    import time

    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="st", directions=["maximize", "minimize"])
    for _ in range(2):  # ended in an earlier run
        study.add_trial(optuna.trial.create_trial(values=[0.5, 0.1], params={}, distributions={}))
    events = TrialEvents(SPACE, "st", url)  # 4 trials: 2 points x 2 repeats
    events.setup()
    events._started = time.time() - 100  # this run: 100 s so far
    earlier = [_Trial("a", "TERMINATED"), _Trial("b", "TERMINATED")]
    ended, running = _Trial("c", "RUNNING"), _Trial("d", "RUNNING")
    study.add_trial(optuna.trial.create_trial(values=[0.5, 0.1], params={}, distributions={}))
    line = events._progress([*earlier, ended, running], ended)
    # 1 trial ended in 100 s: 0 pending and 1 running left ~ 50 s (not 100 / 3 * 0.5 = 17 s)
    # (50 s and a little more: reading the Optuna database takes its time on a busy machine)
    assert "3/4 done, 1 running, 0 pending" in line and re.search(r"~0m5\ds left", line), line


def test_the_console_leaves_last_resort_handlers_to_follow_stderr(tmp_path, capsys):
    """dill (a Syne Tune dependency) attaches logging's last-resort handler, whose stream cannot
    be set: the console failed to open. It follows sys.stderr into the log by itself."""
    import logging

    from study.output import console

    logger = logging.getLogger("sharpcal-test-last-resort")
    logger.addHandler(logging._StderrHandler())  # what dill.logger does
    logger.propagate = False
    try:
        with console(tmp_path / "driver.log", total=1):
            logger.warning("to the log, not the console")
    finally:
        logger.handlers.clear()
    assert "to the log" in (tmp_path / "driver.log").read_text()
    assert "to the log" not in capsys.readouterr().err
