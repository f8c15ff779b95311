"""Post-hoc calibrators fitted on a trial's val probabilities and applied to any other split of the
same model (test, corrupted, shifted), without retraining.

They work on what the evidence stores, the probability vectors, so every parametric map acts on
``log p`` (floored at ``calibration.PROB_FLOOR``), as netcal's do. For a temperature that is the
same as acting on the logits (``log p`` is the logits less a per-row constant, which a softmax
ignores); for vector and matrix scaling on ``log p`` it is Kull et al.'s Dirichlet calibration
(NeurIPS 2019), its matrix form without the ODIR penalty.

- ``ts``: temperature scaling, ``softmax(log p / T)``; ``T`` by ``calibration.fit_temperature``,
  the fit the trials use.
- ``vs``: vector scaling, ``softmax(w * log p + b)``, ``w, b`` in R^C.
- ``ms``: matrix (Dirichlet) scaling, ``softmax(W log p + b)``, ``W`` in R^{CxC}, started at the
  identity. Unregularised, like sklearn's ``LogisticRegression(penalty=None)``, which the tests
  check it against.
- ``hb``: histogram binning (Zadrozny & Elkan 2001), one-vs-rest: each class's probability mapped
  to the frequency of that class among val samples in its bin (15 equal-width bins; an empty bin
  keeps its centre, as netcal's), rows renormalised.
- ``iso``: isotonic regression (Zadrozny & Elkan 2002), one-vs-rest with scikit-learn's
  ``IsotonicRegression`` (clipped to [0, 1] outside the fitted range), rows renormalised.

A one-vs-rest map can send every class of a row to 0 (netcal leaves that row NaN): such a row
keeps its uncalibrated probabilities, and ``Calibrated.fallback_rows`` counts them.

Each needs a val split of at least ``min_val_samples`` samples: ``SAMPLES_PER_PARAMETER`` (10) per
parameter it fits. Below that its result is not reported (``study.analysis.posthoc`` shows n/a and says
why): fitted on a handful of images an unregularised map interpolates them (one val image sent
ECE to 91% after vector scaling).

VS and MS are fitted here (scipy's L-BFGS on the NLL with its analytic gradient) rather than with
netcal, whose install pulls pyro, gpytorch and tensorboard and whose fit uses finite
differences; netcal and scikit-learn are the tests' oracles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize
from scipy.special import log_softmax, softmax
from sklearn.isotonic import IsotonicRegression

from trainables.metrics import calibration

CALIBRATORS = ("ts", "vs", "ms", "hb", "iso")
NAMES = {
    "ts": "temperature scaling",
    "vs": "vector scaling",
    "ms": "matrix (Dirichlet) scaling",
    "hb": "histogram binning",
    "iso": "isotonic regression",
}
HB_BINS = 15
MAX_ITER = 1000  # L-BFGS iterations of VS and MS
SAMPLES_PER_PARAMETER = 10


@dataclass(frozen=True)
class Calibrated:
    """Calibrated probabilities, and how many rows kept their uncalibrated ones."""

    probs: np.ndarray
    fallback_rows: int = 0


Calibrator = Callable[[np.ndarray], Calibrated]


def parse_calibrators(text: str) -> list[str]:
    """``"ts,vs,ms"`` as a list, in the order given; a one-line ``ValueError`` names an unknown
    one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CALIBRATORS]
    if unknown or not names:
        raise ValueError(
            f"unknown calibrator {', '.join(unknown) or repr(text)}: choose among "
            f"{','.join(CALIBRATORS)} (comma-separated)"
        )
    return list(dict.fromkeys(names))


def fitted_parameters(name: str, classes: int) -> int:
    """How many parameters calibrator ``name`` fits for ``classes`` classes, counting only those
    the data can tell apart (a softmax ignores what is added to every class's logit): TS 1; VS
    ``2C - 1`` (C weights, C biases less one); MS ``C^2 - 1`` (``C^2 + C``, less the ``C + 1``
    of a shift common to every row of ``[W, b]``); HB and Iso ``HB_BINS`` per class, each
    class's map estimated from all the samples (isotonic regression's steps adapt to the data:
    it is held to binning's count)."""
    if name not in CALIBRATORS:
        raise ValueError(f"unknown calibrator {name!r}: choose among {','.join(CALIBRATORS)}")
    return {
        "ts": 1,
        "vs": 2 * classes - 1,
        "ms": classes * classes - 1,
        "hb": HB_BINS,
        "iso": HB_BINS,
    }[name]


def min_val_samples(name: str, classes: int) -> int:
    """The fewest val samples calibrator ``name`` is fitted on: ``SAMPLES_PER_PARAMETER`` per
    fitted parameter (``fitted_parameters``), e.g. for 10 classes TS 10, VS 190, MS 990, HB and
    Iso 150.

    Why ten: an unregularised multinomial fit (VS, MS) has no finite maximum-likelihood solution
    once the samples can be separated, which happens with high probability when there are fewer
    than about two per parameter, and well before that its estimates are inflated, i.e. the map
    is over-confident on new data (Sur & Candès, PNAS 2019); ten per parameter is the usual rule
    for logistic models (Peduzzi et al., J Clin Epidemiol 1996). For the one-vs-rest binning maps
    it leaves ten samples per bin on average.
    """
    return SAMPLES_PER_PARAMETER * fitted_parameters(name, classes)


def fit_calibrator(name: str, probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """The calibrator ``name`` (one of ``CALIBRATORS``) fitted on ``probs`` (N, C) and their
    integer ``labels`` (N,); it maps any (M, C) probabilities of the same model."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(probs) == 0:
        raise ValueError(f"fit {name}: needs (N, C) probabilities and N labels, N >= 1")
    fits = {"ts": _fit_ts, "vs": _fit_vs, "ms": _fit_ms, "hb": _fit_hb, "iso": _fit_iso}
    if name not in fits:
        raise ValueError(f"unknown calibrator {name!r}: choose among {','.join(CALIBRATORS)}")
    return fits[name](probs, labels)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` floored at ``calibration.PROB_FLOOR`` (a stored float16 0 has no log)."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), calibration.PROB_FLOOR))


# ----------------------------------------------------------------------------- scaling


def _fit_ts(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    z = torch.from_numpy(log_probs(probs))
    temperature = calibration.fit_temperature(z, torch.from_numpy(labels))
    return lambda p: Calibrated(softmax(log_probs(p) / temperature, axis=1))


def _nll_and_gradient(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of ``softmax(logits)`` and its gradient with respect to the logits."""
    log_q = log_softmax(logits, axis=1)
    n = len(labels)
    grad = np.exp(log_q)
    grad[np.arange(n), labels] -= 1.0
    return float(-log_q[np.arange(n), labels].mean()), grad / n


def _fit_linear(
    features: np.ndarray, labels: np.ndarray, initial: np.ndarray, diagonal: bool
) -> np.ndarray:
    """Minimise the NLL of ``softmax(features @ W + b)`` (``W`` diagonal: vector scaling) over
    the flat parameters ``[W, b]``, from ``initial``."""
    n, c = features.shape

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = _unpack(theta, c, diagonal)
        value, grad = _nll_and_gradient(features @ weights + bias, labels)
        grad_w = features.T @ grad
        grad_w = np.diag(grad_w) if diagonal else grad_w.ravel()
        return value, np.concatenate([grad_w, grad.sum(axis=0)])

    result = optimize.minimize(
        objective,
        initial,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": MAX_ITER, "ftol": 1e-15, "gtol": 1e-9},
    )
    return result.x


def _unpack(theta: np.ndarray, c: int, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    size = c if diagonal else c * c
    weights = np.diag(theta[:c]) if diagonal else theta[:size].reshape(c, c)
    return weights, theta[size:]


def _fit_scaling(probs: np.ndarray, labels: np.ndarray, diagonal: bool) -> Calibrator:
    c = probs.shape[1]
    identity = np.ones(c) if diagonal else np.eye(c).ravel()
    theta = _fit_linear(log_probs(probs), labels, np.concatenate([identity, np.zeros(c)]), diagonal)
    weights, bias = _unpack(theta, c, diagonal)
    return lambda p: Calibrated(softmax(log_probs(p) @ weights + bias, axis=1))


def _fit_vs(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    return _fit_scaling(probs, labels, diagonal=True)


def _fit_ms(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    return _fit_scaling(probs, labels, diagonal=False)


# ----------------------------------------------------------------------------- one-vs-rest


def _renormalised(raw: np.ndarray, probs: np.ndarray) -> Calibrated:
    """Rows of ``raw`` (one-vs-rest outputs) summing to one; an all-zero row keeps ``probs``."""
    total = raw.sum(axis=1, keepdims=True)
    empty = total[:, 0] <= 0
    out = np.where(empty[:, None], probs, raw / np.where(empty[:, None], 1.0, total))
    return Calibrated(out, int(empty.sum()))


def _bin_of(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, 1]: ``[a, b)``, the last one closed."""
    return np.clip((values * bins).astype(np.int64), 0, bins - 1)


def _fit_hb(probs: np.ndarray, labels: np.ndarray, bins: int = HB_BINS) -> Calibrator:
    c = probs.shape[1]
    centres = (np.arange(bins) + 0.5) / bins
    table = np.tile(centres, (c, 1))  # (C, bins): an empty bin keeps its centre
    for k in range(c):
        index = _bin_of(probs[:, k], bins)
        counts = np.bincount(index, minlength=bins)
        hits = np.bincount(index, weights=(labels == k).astype(float), minlength=bins)
        table[k] = np.where(counts > 0, hits / np.maximum(counts, 1), centres)

    def apply(p: np.ndarray) -> Calibrated:
        p = np.asarray(p, dtype=np.float64)
        raw = np.stack([table[k][_bin_of(p[:, k], bins)] for k in range(c)], axis=1)
        return _renormalised(raw, p)

    return apply


def _fit_iso(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    c = probs.shape[1]
    models = [
        IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(
            probs[:, k], (labels == k).astype(float)
        )
        for k in range(c)
    ]

    def apply(p: np.ndarray) -> Calibrated:
        p = np.asarray(p, dtype=np.float64)
        raw = np.stack([models[k].predict(p[:, k]) for k in range(c)], axis=1)
        return _renormalised(raw, p)

    return apply
