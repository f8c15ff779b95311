"""The regime map reads SGD's fitted temperature as a verdict only where the fit did not stop on
a bound (``trainables.metrics.calibration.temperature_at_bound``)."""

from __future__ import annotations

import optuna
import pytest

from search_spaces.schema import check_space
from study.analysis.compare import grouped
from study.analysis.regimes import draw_regime_map, regime_text, regimes

FIXED = {
    "dataset": "digits",
    "train_subset": None,
    "model": "cnn",
    "epochs": 2,
    "batch_size": 64,
    "device": "cpu",
}
# budget (epochs) -> SGD's fitted T per seed, and whether the trial flagged it at a bound (None:
# an older trial that logged no flag; its T, beyond the bounds, says so by itself)
SGD_FITS = {
    1: [(0.8, 0.0), (0.7, 0.0)],
    2: [(0.05, 1.0), (1.4, 0.0)],  # one seed's val split was separable
    3: [(20.0, 1.0), (1e-6, None)],  # no seed has a verdict
}


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for epochs, fits in SGD_FITS.items():
        for method in ("sgd", "sam"):
            for seed, (temperature, at_bound) in enumerate(fits):
                attrs = {
                    "status": "completed",
                    "settings": {"method": method, "epochs": epochs, "seed": seed},
                    "test_ece": 0.05 if method == "sgd" else 0.03,
                    "test_ece_ts": 0.02,
                    "temperature": temperature,
                    "test_overconfidence": 0.01,
                }
                if at_bound is not None:
                    attrs["temperature_at_bound"] = at_bound
                study.add_trial(optuna.trial.create_trial(values=[0.9, 0.05], user_attrs=attrs))
    return study


def test_a_fit_on_a_bound_is_no_regime_verdict(tmp_path):
    points = [{"method": m, "epochs": e} for e in SGD_FITS for m in ("sgd", "sam")]
    space = check_space({"fixed": FIXED, "points": points, "repeats": 2}, "test")
    found = regimes(grouped(_study(), space), space)
    # epochs=3 has no SGD fit off the bounds: it is left out of the map. In epochs=2 the bound
    # fit (T = 0.05) is left out of SGD's T: 1.4, overconfident (with it, 0.725 would have read
    # as underconfident and sorted the regime first).
    assert [r.settings for r in found] == [{"epochs": 1}, {"epochs": 2}]
    assert [r.temperature() for r in found] == pytest.approx([0.75, 1.4])
    assert [r.fits_at_bound() for r in found] == [0, 1]
    assert regime_text(found[0]) == "epochs=1"
    assert regime_text(found[1]) == "epochs=2 (SGD's T on a bound in 1 of 2 seeds, not counted)"
    draw_regime_map(found, space, tmp_path / "regimes.png")
    assert (tmp_path / "regimes.png").stat().st_size > 0
