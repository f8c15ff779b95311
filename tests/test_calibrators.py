"""The post-hoc calibrators of ``study.analysis.calibrators`` against netcal's and scikit-learn's on the
same random over-confident logits (netcal is a test-only dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression

from study.analysis.calibrators import CALIBRATORS, fit_calibrator, log_probs, parse_calibrators

netcal_scaling = pytest.importorskip("netcal.scaling")
netcal_binning = pytest.importorskip("netcal.binning")

C = 10


def _split(
    rng: np.random.Generator, n: int, sharpness: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident probabilities of a 10-class model whose classes are unevenly hard; none
    below 1e-6, where netcal's clipping of ``p`` before its log (float32's epsilon) and ours
    (float16's smallest value) differ."""
    labels = rng.integers(0, C, n)
    logits = np.clip(rng.normal(0.0, 1.0, (n, C)), -2.5, 2.5)
    logits[np.arange(n), labels] += rng.uniform(0.5, 2.5, C)[labels]
    probs = softmax(sharpness * logits, axis=1)
    assert probs.min() > 1e-6 or sharpness > 1.5
    return probs, labels


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-log_probs(p)[np.arange(len(y)), y].mean())


@pytest.fixture(scope="module")
def splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (*_split(rng, 1500), *_split(rng, 1000))


def test_the_scaling_calibrators_match_netcal(splits) -> None:
    pv, yv, pt, _ = splits
    references = {
        "ts": netcal_scaling.TemperatureScaling(),
        "vs": netcal_scaling.LogisticCalibration(method="mle"),
    }
    for name, reference in references.items():
        reference.fit(pv, yv, tensorboard=False)
        ours = fit_calibrator(name, pv, yv)
        got = ours(pt)
        assert got.fallback_rows == 0
        assert np.abs(got.probs - reference.transform(pt)).max() < 1e-3, name
        # netcal's fit differentiates numerically: ours is its optimum or a better one
        assert _nll(ours(pv).probs, yv) <= _nll(reference.transform(pv), yv) + 1e-9, name


def test_matrix_scaling_is_the_unpenalised_multinomial_regression_on_log_probabilities(
    splits,
) -> None:
    pv, yv, pt, _ = splits
    reference = LogisticRegression(C=np.inf, max_iter=10_000, tol=1e-8)
    expected = reference.fit(log_probs(pv), yv).predict_proba(log_probs(pt))
    got = fit_calibrator("ms", pv, yv)(pt).probs
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize(
    ("name", "reference"),
    [("hb", lambda: netcal_binning.HistogramBinning(bins=15)), ("iso", lambda: None)],
)
def test_the_binning_calibrators_match_netcal(splits, name, reference) -> None:
    pv, yv, pt, _ = splits
    model = reference() or netcal_binning.IsotonicRegression()
    expected = model.fit(pv, yv).transform(pt)
    got = fit_calibrator(name, pv, yv)(pt)
    finite = np.isfinite(expected).all(axis=1)  # netcal leaves an all-zero row NaN
    assert got.fallback_rows == int((~finite).sum())
    assert np.abs(got.probs[finite] - expected[finite]).max() < 1e-12
    assert np.allclose(got.probs.sum(axis=1), 1.0)


def test_a_row_every_one_vs_rest_map_zeroes_keeps_its_probabilities() -> None:
    # Each val row puts one class's bin at 0: the first test row lands in all three.
    pv = np.array([[0.62, 0.19, 0.19], [0.2, 0.3, 0.5], [0.3, 0.62, 0.08]])
    yv = np.array([2, 2, 0])
    pt = np.array([[0.62, 0.3, 0.08], [0.3, 0.62, 0.08]])
    got = fit_calibrator("hb", pv, yv)(pt)
    assert got.fallback_rows == 1
    assert np.allclose(got.probs, [[0.62, 0.3, 0.08], [1.0, 0.0, 0.0]])
    assert np.isnan(netcal_binning.HistogramBinning(bins=15).fit(pv, yv).transform(pt)[0]).all()


def test_each_scaling_lowers_the_test_nll_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(3)
    (pv, yv), (pt, yt) = _split(rng, 1500, sharpness=4.0), _split(rng, 1000, sharpness=4.0)
    before = _nll(pt, yt)
    for name in ("ts", "vs", "ms"):
        assert _nll(fit_calibrator(name, pv, yv)(pt).probs, yt) < before, name


def test_calibrator_names_are_checked() -> None:
    assert parse_calibrators("ts, iso,ts") == ["ts", "iso"]
    assert set(CALIBRATORS) == {"ts", "vs", "ms", "hb", "iso"}
    with pytest.raises(ValueError, match="unknown calibrator dirichlet: choose among"):
        parse_calibrators("ts,dirichlet")
