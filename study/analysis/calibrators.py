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

Each is a ``Calibrator`` registered in ``CALIBRATORS`` (``@register_calibrator("ts")``), as a
user's own is, from a plugin: ``compare --calibrators``, its validation and the report read the
registry. Each needs a val split of at least ``min_val_samples`` samples: ``SAMPLES_PER_PARAMETER`` (10) per
parameter it fits. Below that its result is not reported (``study.analysis.posthoc`` shows n/a and says
why): fitted on a handful of images an unregularised map interpolates them (one val image sent
ECE to 91% after vector scaling).

VS and MS are fitted here (scipy's L-BFGS on the NLL with its analytic gradient) rather than with
netcal, whose install pulls pyro, gpytorch and tensorboard and whose fit uses finite
differences; netcal and scikit-learn are the tests' oracles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from trainables.parts import Part
from trainables.registry import Registry

HB_BINS = 15
MAX_ITER = 1000  # L-BFGS iterations of VS and MS
SAMPLES_PER_PARAMETER = 10


@dataclass(frozen=True)
class Calibrated:
    """Calibrated probabilities, and how many rows kept their uncalibrated ones."""

    probs: np.ndarray
    fallback_rows: int = 0


class Calibrator(Part):
    """A post-hoc calibrator, registered by name (``@register_calibrator("ts")``): ``fit`` on a
    trial's val probabilities (N, C) and integer labels (N,), then ``transform`` any (M, C)
    probabilities of the same model (test, corrupted, shifted). A parametric map acts on
    ``log_probs(p)``, which is the logits less a per-row constant. One instance is made per
    fit. ``parameters`` counts what it fits for C classes; it is fitted only on a val split of
    at least ``min_val_samples`` (``SAMPLES_PER_PARAMETER`` per parameter, see below).
    ``title`` names it in tables' headings ("temperature scaling"), ``short`` in the report's
    columns ("TS")."""

    short: ClassVar[str] = ""

    def parameters(self, classes: int) -> int:
        """How many parameters it fits for ``classes`` classes (that the data can tell apart)."""
        raise NotImplementedError

    def min_val_samples(self, classes: int) -> int:
        """The fewest val samples it is fitted on (``min_val_samples`` explains the rule)."""
        return SAMPLES_PER_PARAMETER * self.parameters(classes)

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        """Fit on val probabilities (N, C), float64, and labels (N,), int64."""
        raise NotImplementedError

    def transform(self, probs: np.ndarray) -> Calibrated | np.ndarray:
        """The calibrated probabilities of ``probs`` (M, C): rows summing to one."""
        raise NotImplementedError


def _check_calibrator(name: str, part: Any) -> None:
    """A calibrator is a ``Calibrator`` subclass with a title that defines ``parameters``,
    ``fit`` and ``transform``."""
    if not (isinstance(part, type) and issubclass(part, Calibrator)):
        raise TypeError("register a subclass of study.analysis.calibrators.Calibrator")
    missing = [
        m for m in ("parameters", "fit", "transform") if getattr(part, m) is getattr(Calibrator, m)
    ]
    if missing:
        raise TypeError(f"it does not define {', '.join(missing)}")
    if not part.title:
        raise ValueError("it has no title (the tables' headings name it by its title)")


CALIBRATORS: Registry[type[Calibrator]] = Registry("calibrator", check=_check_calibrator)
register_calibrator = CALIBRATORS  # ``@register_calibrator("name")`` on a Calibrator subclass


class _Titles(Mapping[str, str]):
    """Every registered calibrator's title by name (read from the registry)."""

    def __getitem__(self, name: str) -> str:
        if name not in CALIBRATORS:
            raise KeyError(name)
        return CALIBRATORS.get(name).title

    def __iter__(self) -> Iterator[str]:
        return iter(CALIBRATORS.names())

    def __len__(self) -> int:
        return len(CALIBRATORS)


NAMES: Mapping[str, str] = _Titles()


def short_title(name: str) -> str:
    """A calibrator's column heading in the report (its ``short``, else its name)."""
    return CALIBRATORS.get(name).short or name


Map = Callable[[np.ndarray], Calibrated]


def parse_calibrators(text: str) -> list[str]:
    """``"ts,vs,ms"`` as a list, in the order given; a one-line ``ValueError`` names an unknown
    one and the registered ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CALIBRATORS]
    if unknown or not names:
        raise ValueError(
            f"unknown calibrator {', '.join(unknown) or repr(text)}: choose among "
            f"{','.join(CALIBRATORS.names())} (comma-separated; a plugin can register more)"
        )
    return list(dict.fromkeys(names))


def fitted_parameters(name: str, classes: int) -> int:
    """How many parameters calibrator ``name`` fits for ``classes`` classes, counting only those
    the data can tell apart (a softmax ignores what is added to every class's logit): TS 1; VS
    ``2C - 1`` (C weights, C biases less one); MS ``C^2 - 1`` (``C^2 + C``, less the ``C + 1``
    of a shift common to every row of ``[W, b]``); HB and Iso ``HB_BINS`` per class, each
    class's map estimated from all the samples (isotonic regression's steps adapt to the data:
    it is held to binning's count). An unknown name is a one-line ``InputError``."""
    return int(CALIBRATORS.get(name)().parameters(classes))


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
    return int(CALIBRATORS.get(name)().min_val_samples(classes))


def fit_calibrator(name: str, probs: np.ndarray, labels: np.ndarray) -> Map:
    """The calibrator ``name`` (registered in ``CALIBRATORS``) fitted on ``probs`` (N, C) and
    their integer ``labels`` (N,); it maps any (M, C) probabilities of the same model."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    calibrator = CALIBRATORS.get(name)()
    if probs.ndim != 2 or len(probs) != len(labels) or len(probs) == 0:
        raise ValueError(f"fit {name}: needs (N, C) probabilities and N labels, N >= 1")
    calibrator.fit(probs, labels)

    def apply(p: np.ndarray) -> Calibrated:
        out = calibrator.transform(np.asarray(p, dtype=np.float64))
        return out if isinstance(out, Calibrated) else Calibrated(np.asarray(out))

    return apply


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` floored at ``calibration.PROB_FLOOR`` (a stored float16 0 has no log)."""
    from trainables.metrics.calibration import PROB_FLOOR

    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), PROB_FLOOR))


# ----------------------------------------------------------------------------- scaling


@register_calibrator("ts")
class TemperatureScaling(Calibrator):
    """``softmax(log p / T)``, ``T`` by ``calibration.fit_temperature`` (the trials' own fit)."""

    title = "temperature scaling"
    short = "TS"
    description = "one temperature dividing the logits, fitted by LBFGS on the val NLL"
    reference = "Guo et al., On Calibration of Modern Neural Networks, ICML 2017"

    def parameters(self, classes: int) -> int:
        return 1

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        import torch

        from trainables.metrics.calibration import fit_temperature

        z = torch.from_numpy(log_probs(probs))
        self.temperature = fit_temperature(z, torch.from_numpy(labels))

    def transform(self, probs: np.ndarray) -> Calibrated:
        from scipy.special import softmax

        return Calibrated(softmax(log_probs(probs) / self.temperature, axis=1))


def _nll_and_gradient(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of ``softmax(logits)`` and its gradient with respect to the logits."""
    from scipy.special import log_softmax

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
    from scipy import optimize

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


class _Scaling(Calibrator):
    """``softmax(W log p + b)`` fitted by L-BFGS on the val NLL, from the identity."""

    diagonal: ClassVar[bool] = True

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        c = probs.shape[1]
        identity = np.ones(c) if self.diagonal else np.eye(c).ravel()
        start = np.concatenate([identity, np.zeros(c)])
        theta = _fit_linear(log_probs(probs), labels, start, self.diagonal)
        self.weights, self.bias = _unpack(theta, c, self.diagonal)

    def transform(self, probs: np.ndarray) -> Calibrated:
        from scipy.special import softmax

        return Calibrated(softmax(log_probs(probs) @ self.weights + self.bias, axis=1))


@register_calibrator("vs")
class VectorScaling(_Scaling):
    """``softmax(w * log p + b)``, ``w, b`` in R^C."""

    title = "vector scaling"
    short = "VS"
    description = "a weight and a bias per class on the log-probabilities"
    reference = "Guo et al., ICML 2017; Kull et al., NeurIPS 2019"
    diagonal = True

    def parameters(self, classes: int) -> int:
        return 2 * classes - 1


@register_calibrator("ms")
class MatrixScaling(_Scaling):
    """``softmax(W log p + b)``, ``W`` in R^{CxC}: Dirichlet calibration without ODIR."""

    title = "matrix (Dirichlet) scaling"
    short = "MS"
    description = "a full linear map and a bias on the log-probabilities"
    reference = "Kull et al., Beyond temperature scaling: Dirichlet calibration, NeurIPS 2019"
    diagonal = False

    def parameters(self, classes: int) -> int:
        return classes * classes - 1


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


@register_calibrator("hb")
class HistogramBinning(Calibrator):
    """One-vs-rest: each class's probability mapped to the frequency of that class among val
    samples in its bin (``HB_BINS`` equal-width bins; an empty bin keeps its centre)."""

    title = "histogram binning"
    short = "HB"
    description = f"one-vs-rest, {HB_BINS} equal-width bins per class, rows renormalised"
    reference = "Zadrozny & Elkan, ICML 2001"
    bins: ClassVar[int] = HB_BINS

    def parameters(self, classes: int) -> int:
        return HB_BINS

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        bins, c = self.bins, probs.shape[1]
        centres = (np.arange(bins) + 0.5) / bins
        table = np.tile(centres, (c, 1))  # (C, bins): an empty bin keeps its centre
        for k in range(c):
            index = _bin_of(probs[:, k], bins)
            counts = np.bincount(index, minlength=bins)
            hits = np.bincount(index, weights=(labels == k).astype(float), minlength=bins)
            table[k] = np.where(counts > 0, hits / np.maximum(counts, 1), centres)
        self.table = table

    def transform(self, probs: np.ndarray) -> Calibrated:
        c = self.table.shape[0]
        raw = np.stack([self.table[k][_bin_of(probs[:, k], self.bins)] for k in range(c)], axis=1)
        return _renormalised(raw, probs)


@register_calibrator("iso")
class IsotonicCalibration(Calibrator):
    """One-vs-rest isotonic regression (scikit-learn's ``IsotonicRegression``, clipped to
    [0, 1] outside the fitted range), rows renormalised."""

    title = "isotonic regression"
    short = "Iso"
    description = "one-vs-rest isotonic regression, rows renormalised"
    reference = "Zadrozny & Elkan, KDD 2002"

    def parameters(self, classes: int) -> int:
        return HB_BINS

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        self.models = [
            IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(
                probs[:, k], (labels == k).astype(float)
            )
            for k in range(probs.shape[1])
        ]

    def transform(self, probs: np.ndarray) -> Calibrated:
        raw = np.stack([m.predict(probs[:, k]) for k, m in enumerate(self.models)], axis=1)
        return _renormalised(raw, probs)
