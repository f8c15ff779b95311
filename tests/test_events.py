"""What a trial's console line says of its settings (no Ray started)."""

from __future__ import annotations

from search_spaces.schema import check_space
from study.events import TrialEvents

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
