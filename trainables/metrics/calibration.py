"""Calibration metrics on torch tensors.

Every metric works on whatever device its inputs live on (CPU or CUDA), is fully vectorised
(no Python loop over samples) and returns a 0-dim floating tensor on the input's device without
a host synchronisation. Only the functions that must return Python floats
(:func:`fit_temperature`, :func:`fit_temperature_grid`, :func:`calibration_report`) sync.

Conventions
-----------
* ``probs`` is an ``(N, C)`` tensor of class probabilities (rows of a softmax); ``logits`` is an
  ``(N, C)`` tensor of unnormalised scores; ``labels`` is an ``(N,)`` integer tensor in
  ``[0, C)``.
* The *confidence* of a sample is its max-softmax probability and its *prediction* the argmax.
* Equal-width binning uses ``n_bins`` bins with edges ``torch.linspace(0, 1, n_bins + 1)``.
  Every bin is half-open ``[a, b)`` (left edge closed, right edge open) except the last, which
  is closed on both sides, ``[a, 1]``. So a value exactly on an inner edge goes to the upper
  bin, 0 lands in bin 0 and 1 lands in the last bin. Values outside ``[0, 1]`` are clamped into
  the first / last bin.

Label range checks need the labels' values, which on an accelerator would cost a host sync; they
are therefore done only for CPU tensors (where they are free). On other devices an out-of-range
label surfaces as the backend's own indexing error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "adaptive_ece",
    "brier",
    "calibration_report",
    "classwise_ece",
    "ece",
    "fit_temperature",
    "fit_temperature_grid",
    "nll",
    "reliability_bins",
    "temperature_at_bound",
]

# Upper bound on the elements of one (grid chunk, N, C) tensor in fit_temperature_grid.
_GRID_CHUNK_ELEMS = 1 << 24
# The temperatures fit_temperature may return. A fit on a bound is no calibration verdict: a
# separable val split sends T to 0, val labels the logits do not predict send it to infinity.
TEMPERATURE_MIN = 0.05
TEMPERATURE_MAX = 20.0


# --------------------------------------------------------------------------------------------
# Argument validation (kept apart from the maths)
# --------------------------------------------------------------------------------------------


def _check_scores(scores: Tensor, name: str) -> None:
    if not isinstance(scores, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {scores.dtype}")
    if scores.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(scores.shape)}")
    if scores.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one class, got shape {tuple(scores.shape)}")


def _check_labels(labels: Tensor, scores: Tensor, name: str) -> None:
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} samples but {name} has {scores.shape[0]}")
    if labels.device != scores.device:
        raise ValueError(f"labels are on {labels.device} but {name} is on {scores.device}")
    # Range check only where it costs no host sync.
    if labels.device.type == "cpu":
        num_classes = scores.shape[1]
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")


def _check_inputs(scores: Tensor, labels: Tensor, name: str) -> None:
    _check_scores(scores, name)
    _check_labels(labels, scores, name)


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int):
        raise ValueError(f"n_bins must be an int, got {type(n_bins).__name__}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")


def _check_num_classes(num_classes: int, probs: Tensor) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes != probs.shape[1]:
        raise ValueError(
            f"num_classes={num_classes} does not match probs with {probs.shape[1]} columns"
        )


def _check_positive_float(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def _check_max_iter(max_iter: int) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")


def _as_grid(grid: Tensor | Sequence[float] | None) -> Tensor:
    """Validate a temperature grid and return it as a 1-D float64 CPU tensor."""
    if grid is None:
        return torch.linspace(TEMPERATURE_MIN, 5.0, 100, dtype=torch.float64)
    g = torch.as_tensor(grid).detach().to(device="cpu", dtype=torch.float64)
    if g.dim() != 1 or g.numel() == 0:
        raise ValueError(f"grid must be a non-empty 1-D sequence, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()) or not bool((g > 0).all()):
        raise ValueError("grid temperatures must all be finite and > 0")
    return g


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _work_dtype(t: Tensor) -> torch.dtype:
    """Accumulation dtype: the input's own if at least float32, else float32."""
    return torch.promote_types(t.dtype, torch.float32)


def _bin_edges(n_bins: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=dtype, device=device)


def _bin_index(values: Tensor, edges: Tensor) -> Tensor:
    """Equal-width bin of each value: ``[a, b)`` bins, the last one closed ``[a, 1]``.

    ``bucketize(right=True)`` returns ``i`` with ``edges[i-1] <= v < edges[i]``, i.e. bins closed
    on the left. Clamping folds ``v == 1`` (index ``n_bins``) into the last bin and anything
    below 0 into bin 0.
    """
    n_bins = edges.numel() - 1
    return (torch.bucketize(values, edges, right=True) - 1).clamp_(0, n_bins - 1)


def _bin_sums(
    values: Tensor, targets: Tensor, index: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row, per-bin sums, vectorised over rows and samples.

    ``values``, ``targets``: ``(R, N)`` floating; ``index``: ``(R, N)`` bin ids in
    ``[0, n_bins)``. Returns ``count`` (int64), ``sum_values`` and ``sum_targets``, each of
    shape ``(R, n_bins)``.
    """
    rows = values.shape[0]
    flat = (index + n_bins * torch.arange(rows, device=index.device).unsqueeze(1)).reshape(-1)
    size = rows * n_bins
    count = torch.zeros(size, dtype=torch.int64, device=values.device)
    count.scatter_add_(0, flat, torch.ones_like(flat))
    sum_values = torch.zeros(size, dtype=values.dtype, device=values.device)
    sum_values.scatter_add_(0, flat, values.reshape(-1))
    sum_targets = torch.zeros(size, dtype=values.dtype, device=values.device)
    sum_targets.scatter_add_(0, flat, targets.reshape(-1).to(values.dtype))
    shape = (rows, n_bins)
    return count.view(shape), sum_values.view(shape), sum_targets.view(shape)


def _binned_gap(sum_values: Tensor, sum_targets: Tensor, n: int) -> Tensor:
    """``sum_b (n_b / N) |mean_b(target) - mean_b(value)|`` per row, from per-bin sums.

    ``(n_b / N) |S_t / n_b - S_v / n_b| = |S_t - S_v| / N``, so empty bins contribute 0 with no
    division by zero.
    """
    return (sum_targets - sum_values).abs().sum(dim=-1) / n


def _confidence_correct(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Max-probability confidence (in the work dtype) and 0/1 correctness, both ``(N,)``."""
    conf, pred = probs.max(dim=1)
    conf = conf.to(_work_dtype(probs))
    return conf, (pred == labels).to(conf.dtype)


def _top_label_bins(
    probs: Tensor, labels: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Equal-width top-label binning shared by :func:`ece` and :func:`reliability_bins`.

    Returns ``edges`` ``(n_bins + 1,)``, ``count``, ``sum_conf``, ``sum_acc`` ``(n_bins,)``.
    """
    conf, correct = _confidence_correct(probs, labels)
    edges = _bin_edges(n_bins, conf.dtype, conf.device)
    index = _bin_index(conf, edges)
    count, sum_conf, sum_acc = _bin_sums(conf[None], correct[None], index[None], n_bins)
    return edges, count[0], sum_conf[0], sum_acc[0]


def _equal_mass_index(n: int, n_bins: int, device: torch.device) -> Tensor:
    """Bin id of each sorted position with ``torch.tensor_split(range(n), n_bins)`` semantics.

    The first ``n % n_bins`` bins hold ``n // n_bins + 1`` samples, the rest ``n // n_bins``;
    when ``n < n_bins`` the trailing bins are empty. Every position gets a bin.
    """
    q, r = divmod(n, n_bins)
    pos = torch.arange(n, device=device)
    split = r * (q + 1)  # positions below this are in the r larger bins
    big = pos // (q + 1)
    small = r + (pos - split) // max(q, 1)
    return torch.where(pos < split, big, small)


# --------------------------------------------------------------------------------------------
# Public metrics
# --------------------------------------------------------------------------------------------


class ReliabilityBins(NamedTuple):
    """Equal-width reliability-diagram bins (see :func:`reliability_bins`)."""

    edges: Tensor
    """``(n_bins + 1,)`` bin edges ``linspace(0, 1, n_bins + 1)``."""
    count: Tensor
    """``(n_bins,)`` int64 number of samples per bin."""
    confidence: Tensor
    """``(n_bins,)`` mean confidence per bin, 0 for empty bins."""
    accuracy: Tensor
    """``(n_bins,)`` accuracy per bin, 0 for empty bins."""


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Fraction of samples whose argmax equals the label.

    Args:
        probs: ``(N, C)`` probabilities or logits (the argmax is the same).
        labels: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
        0-dim floating tensor on ``probs.device``.
    """
    _check_inputs(probs, labels, "probs")
    correct = probs.argmax(dim=1) == labels
    return correct.to(_work_dtype(probs)).mean()


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Bin the max-softmax confidence into ``n_bins`` equal-width bins over ``[0, 1]``.

    Bins are ``[a, b)`` (left edge closed, right edge open) except the last, which is closed
    ``[a, 1]``: confidence 1 lands in the last bin and a confidence exactly on an inner edge goes
    to the upper bin. :func:`ece` uses the same binning.

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        n_bins: number of bins, >= 1.

    Returns:
        :class:`ReliabilityBins` of tensors on ``probs.device``: ``edges`` ``(n_bins + 1,)``,
        ``count`` ``(n_bins,)`` int64, ``confidence`` and ``accuracy`` ``(n_bins,)`` (per-bin
        means, 0 for empty bins).
    """
    _check_inputs(probs, labels, "probs")
    _check_n_bins(n_bins)
    edges, count, sum_conf, sum_acc = _top_label_bins(probs, labels, n_bins)
    denom = count.clamp(min=1).to(sum_conf.dtype)
    return ReliabilityBins(edges, count, sum_conf / denom, sum_acc / denom)


def ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """Expected calibration error (top-label, L1) with equal-width confidence bins.

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over ``n_bins`` equal-width bins of the
    max-softmax confidence. Bins are ``[a, b)`` (left edge closed, right edge open) except the
    last, which is closed ``[a, 1]``; empty bins contribute nothing. Uses the same binning as
    :func:`reliability_bins`.

    Matches ``torchmetrics`` ``MulticlassCalibrationError(norm="l1")`` except when a
    confidence is exactly 1.0: torchmetrics puts such samples in an extra bin of their own,
    here they share the last bin.

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        n_bins: number of bins, >= 1.

    Returns:
        0-dim floating tensor on ``probs.device``.
    """
    _check_inputs(probs, labels, "probs")
    _check_n_bins(n_bins)
    _, _, sum_conf, sum_acc = _top_label_bins(probs, labels, n_bins)
    return _binned_gap(sum_conf, sum_acc, probs.shape[0])


def overconfidence(probs: Tensor, labels: Tensor) -> Tensor:
    """Signed miscalibration: mean max-probability confidence minus accuracy.

    Positive for an overconfident model, negative for an underconfident one (ECE gives only the
    size; this gives the direction). 0-dim floating tensor on ``probs.device``.
    """
    _check_inputs(probs, labels, "probs")
    conf, correct = _confidence_correct(probs, labels)
    return conf.mean() - correct.mean()


def smooth_ece(probs: Tensor, labels: Tensor) -> float:
    """Smooth ECE (Błasiok & Nakkiran 2023) of the top-label confidence, by ``relplot.smECE``.

    Kernel-smoothed calibration error with its bandwidth chosen by the method's own fixed-point
    rule: no bins, and consistent where binned ECE is biased by its bin count. A host
    computation (NumPy, float64) on the max-probability confidence and 0/1 correctness.
    """
    import relplot

    _check_inputs(probs, labels, "probs")
    conf, correct = _confidence_correct(probs.detach(), labels)
    f = conf.double().cpu().numpy().clip(0.0, 1.0)
    return float(relplot.smECE(f, correct.double().cpu().numpy()))


def smooth_reliability(probs: Tensor, labels: Tensor) -> tuple[Any, Any]:
    """The smooth reliability curve behind :func:`smooth_ece` (``relplot.prepare_rel_diagram``):
    accuracy as a kernel-smoothed function of confidence, as NumPy ``(mesh, curve)`` on [0, 1],
    the curve NaN where the confidence density is under 1% of its peak (no data to speak of)."""
    import relplot

    _check_inputs(probs, labels, "probs")
    conf, correct = _confidence_correct(probs.detach(), labels)
    prepared = relplot.prepare_rel_diagram(
        conf.double().cpu().numpy().clip(0.0, 1.0),
        correct.double().cpu().numpy(),
        plot_confidence_band=False,
        report_CE_std=False,
    )
    density = prepared["density"]
    curve = prepared["mu"].copy()
    curve[density < 0.01 * density.max()] = float("nan")
    return prepared["mesh"], curve


def bootstrap_ece(
    probs: Tensor,
    labels: Tensor,
    n_resamples: int = 1000,
    n_bins: int = 15,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`ece` over the samples (resampled with replacement).

    Vectorised: each sample's bin and ``correct - confidence`` are computed once; a resample's
    per-bin sums are one ``scatter_add`` over a ``(resamples, N)`` index (done in chunks of
    resamples to bound memory). Seeded, so the interval is reproducible.

    The binned ECE is biased upwards where a bin's true gap is near 0 (a calibrated model's
    sample ECE is never 0), and the interval inherits that bias: it covers the population ECE
    well when the model is clearly miscalibrated, not when it is nearly calibrated.

    Returns:
        ``(low, high)`` as Python floats.
    """
    _check_inputs(probs, labels, "probs")
    _check_n_bins(n_bins)
    if n_resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"n_resamples must be >= 1 and 0 < level < 1 (got {n_resamples}, {level})")
    with torch.no_grad():
        conf, correct = _confidence_correct(probs.detach(), labels)
        n = conf.shape[0]
        index = _bin_index(conf, _bin_edges(n_bins, conf.dtype, conf.device))
        gap = correct - conf
        generator = torch.Generator(device=conf.device).manual_seed(seed)
        chunk = max(1, min(n_resamples, _GRID_CHUNK_ELEMS // max(n, 1)))
        values = []
        for start in range(0, n_resamples, chunk):
            rows = min(chunk, n_resamples - start)
            draw = torch.randint(0, n, (rows, n), generator=generator, device=conf.device)
            sums = torch.zeros(rows, n_bins, dtype=gap.dtype, device=gap.device)
            sums.scatter_add_(1, index[draw], gap[draw])
            values.append(sums.abs().sum(dim=1) / n)
        tail = (1.0 - level) / 2
        low, high = torch.quantile(
            torch.cat(values), torch.tensor([tail, 1 - tail], dtype=gap.dtype, device=gap.device)
        ).tolist()
    return low, high


def adaptive_ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """Adaptive (equal-mass) expected calibration error.

    Confidences are sorted (stable sort, ascending) and the sorted order is split into
    ``n_bins`` contiguous bins with ``torch.tensor_split`` semantics: the first ``N % n_bins``
    bins hold ``N // n_bins + 1`` samples, the others ``N // n_bins``. Bins are therefore
    defined by rank, not by edges: each bin is the closed interval between its smallest and
    largest member, and tied confidences may be split across neighbouring bins. No sample is
    dropped; when ``N < n_bins`` the trailing bins are empty and contribute nothing.
    ``AdaECE = sum_b (n_b / N) |acc_b - conf_b|``.

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        n_bins: number of bins, >= 1.

    Returns:
        0-dim floating tensor on ``probs.device``.
    """
    _check_inputs(probs, labels, "probs")
    _check_n_bins(n_bins)
    conf, correct = _confidence_correct(probs, labels)
    n = conf.shape[0]
    conf_sorted, order = torch.sort(conf, stable=True)
    correct_sorted = correct[order]
    index = _equal_mass_index(n, n_bins, conf.device)
    _, sum_conf, sum_acc = _bin_sums(conf_sorted[None], correct_sorted[None], index[None], n_bins)
    return _binned_gap(sum_conf[0], sum_acc[0], n)


def classwise_ece(probs: Tensor, labels: Tensor, num_classes: int, n_bins: int = 15) -> Tensor:
    """Class-wise expected calibration error, averaged over ``num_classes`` classes.

    For each class ``k``, ``p_k`` is binned into ``n_bins`` equal-width bins (``[a, b)``, left
    edge closed, except the last, closed ``[a, 1]``, as in :func:`ece`) and compared with the
    indicator ``1[y == k]``: ``CE_k = sum_b (n_b / N) |mean_b(1[y == k]) - mean_b(p_k)|``. The
    result is ``mean_k CE_k`` over all ``num_classes`` classes, so a class absent from
    ``labels`` still counts (its term is its calibration against all-zero targets, i.e.
    ``mean(p_k)``). Vectorised over classes and samples.

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        num_classes: number of classes, must equal ``C``.
        n_bins: number of bins, >= 1.

    Returns:
        0-dim floating tensor on ``probs.device``.
    """
    _check_inputs(probs, labels, "probs")
    _check_num_classes(num_classes, probs)
    _check_n_bins(n_bins)
    p = probs.to(_work_dtype(probs)).t().contiguous()  # (C, N)
    targets = F.one_hot(labels.long(), num_classes).t().to(p.dtype)  # (C, N)
    edges = _bin_edges(n_bins, p.dtype, p.device)
    index = _bin_index(p, edges)
    _, sum_p, sum_t = _bin_sums(p, targets, index, n_bins)
    return _binned_gap(sum_p, sum_t, probs.shape[0]).mean()


def nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean negative log-likelihood (cross-entropy) computed from logits.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        labels: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
        0-dim floating tensor on ``logits.device``.
    """
    _check_inputs(logits, labels, "logits")
    return F.cross_entropy(logits.to(_work_dtype(logits)), labels.long())


def brier(probs: Tensor, labels: Tensor) -> Tensor:
    """Multiclass Brier score: ``mean_i sum_k (p_ik - 1[y_i == k])^2``.

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
        0-dim floating tensor on ``probs.device`` (in ``[0, 2]`` for probabilities).
    """
    _check_inputs(probs, labels, "probs")
    p = probs.to(_work_dtype(probs))
    onehot = F.one_hot(labels.long(), p.shape[1]).to(p.dtype)
    return (p - onehot).square().sum(dim=1).mean()


# --------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------


def _fit_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# The floor of a probability before its log. Evidence stores probabilities in float16, whose
# smallest positive value is 2**-24 (~5.96e-8, a subnormal): a stored 0 was a probability below
# 2**-25. Flooring at 2**-24 changes no value float16 holds and reads each 0 as the nearest one it
# could hold: its -log p is 16.6, within 0.7 of the least the true value could be. A floor below
# what float16 represents (1e-12 once) instead charges 27.6 to every flushed probability and
# drags a refitted temperature with it; float16's smallest normal (2**-14 ~ 6.1e-5) would clip
# values that it does store (coarsely, as subnormals, but stored).
PROB_FLOOR = 2.0**-24


def log_mean_probs(passes: Sequence[Tensor]) -> Tensor:
    """The log of the mean of several passes' float32 probabilities (MC dropout, bSAM's samples):
    logits whose softmax is the average. Floored at float32's smallest normal, not at
    ``PROB_FLOOR`` (which is float16's, for stored evidence), so no float32 value is raised."""
    mean = torch.stack(list(passes)).mean(dim=0)
    return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def scale_probs(probs: Tensor, temperature: float) -> Tensor:
    """``softmax(log(probs) / T)``: the probabilities of logits divided by ``T``; ``probs`` are
    floored at ``PROB_FLOOR`` first (a stored float16 0 has no log)."""
    return (probs.clamp_min(PROB_FLOOR).log() / temperature).softmax(dim=1)


def temperature_at_bound(temperature: float) -> bool:
    """Whether a fitted temperature is on a bound of ``[TEMPERATURE_MIN, TEMPERATURE_MAX]`` (or
    beyond one, as an older unbounded fit could be, or NaN): the NLL wanted a temperature the
    bounds refuse, so ``T`` does not say how over- or underconfident the model is."""
    return not TEMPERATURE_MIN < temperature < TEMPERATURE_MAX


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 50) -> float:
    """Fit a temperature ``T`` in ``[TEMPERATURE_MIN, TEMPERATURE_MAX]`` minimising the NLL of
    ``softmax(logits / T)``.

    Optimises ``log T`` (initialised at 0, i.e. ``T = 1``) with ``torch.optim.LBFGS``
    (strong-Wolfe line search) on the logits' device, in float64 (float32 on MPS), on a
    detached copy of the logits; it works under ``torch.no_grad()`` and
    ``torch.inference_mode()``. The NLL is convex in ``1 / T``, so the bounded minimum is the
    optimiser's ``T`` clamped into the bounds; the result is the best NLL of that, ``T = 1`` and
    the two bounds (first of equals in that order): never worse than ``T = 1``, and exactly a
    bound where the NLL runs off to ``T -> 0`` (a separable split) or ``T -> infinity``
    (:func:`temperature_at_bound` tells).

    Args:
        logits: ``(N, C)`` unnormalised scores.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        max_iter: maximum LBFGS iterations, >= 1.

    Returns:
        The fitted temperature as a Python float, within the bounds.
    """
    _check_inputs(logits, labels, "logits")
    _check_max_iter(max_iter)
    dtype = _fit_dtype(logits.device)
    with torch.inference_mode(False), torch.enable_grad():
        z = logits.detach().to(dtype).clone()  # clone: a normal tensor even from inference mode
        y = labels.detach().long().clone()
        log_t = torch.zeros((), dtype=dtype, device=z.device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            fitted = log_t.exp().clamp(TEMPERATURE_MIN, TEMPERATURE_MAX)  # NaN stays NaN
            bounds = torch.tensor([1.0, TEMPERATURE_MIN, TEMPERATURE_MAX], dtype=dtype)
            candidates = torch.cat([fitted[None], bounds.to(z.device)])
            losses = torch.stack([F.cross_entropy(z / t, y) for t in candidates])
            losses = torch.where(torch.isfinite(losses), losses, math.inf)
            return float(candidates[losses.argmin()])  # argmin: the first of equal losses


def fit_temperature_grid(
    logits: Tensor, labels: Tensor, grid: Tensor | Sequence[float] | None = None
) -> float:
    """Grid-search the temperature ``T`` minimising the ECE of ``softmax(logits / T)``.

    ECE is the equal-width, 15-bin top-label ECE of :func:`ece` (bins ``[a, b)``, left edge
    closed, except the last, closed ``[a, 1]``). Since ``T > 0`` does not change the argmax,
    only the confidence ``1 / sum_j exp((z_j - z_max) / T)`` depends on ``T``; it is evaluated
    for all grid points at once (in chunks bounding memory). Ties go to the first grid point.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        grid: positive temperatures to try; default ``torch.linspace(0.05, 5.0, 100)``.

    Returns:
        The best temperature as a Python float.
    """
    _check_inputs(logits, labels, "logits")
    temps_cpu = _as_grid(grid)
    n_bins = 15
    with torch.no_grad():
        z = logits.detach().to(_fit_dtype(logits.device))
        n, c = z.shape
        shifted = z - z.max(dim=1, keepdim=True).values  # (N, C), max entry 0
        correct = (z.argmax(dim=1) == labels).to(z.dtype)  # (N,)
        temps = temps_cpu.to(device=z.device, dtype=z.dtype)
        edges = _bin_edges(n_bins, z.dtype, z.device)
        chunk = max(1, _GRID_CHUNK_ELEMS // (n * c))
        eces = []
        for start in range(0, temps.numel(), chunk):  # loop over temperature chunks only
            t = temps[start : start + chunk]
            conf = torch.exp(shifted.unsqueeze(0) / t.view(-1, 1, 1)).sum(dim=2).reciprocal()
            index = _bin_index(conf, edges)
            _, sum_conf, sum_acc = _bin_sums(conf, correct.expand_as(conf), index, n_bins)
            eces.append(_binned_gap(sum_conf, sum_acc, n))
        best = torch.cat(eces).argmin()
        return float(temps[best])


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def calibration_report(
    logits: Tensor,
    labels: Tensor,
    num_classes: int,
    n_bins: int = 15,
    temperature: float | None = None,
) -> dict[str, float]:
    """Every registered split metric (``trainables.metrics.METRICS``) of ``softmax(logits)`` as
    Python floats. The built-in keys: ``accuracy``, ``ece``, ``adaece`` (adaptive ECE),
    ``classwise_ece``, ``nll``, ``brier``, ``overconfidence`` (mean confidence minus accuracy)
    and ``smece`` (smooth ECE); with
    ``temperature`` given, also ``ece_ts`` and ``nll_ts`` (the metrics of
    ``softmax(logits / temperature)``). Binned metrics use ``n_bins`` bins; equal-width bins are
    ``[a, b)`` (left edge closed) except the last, closed ``[a, 1]``.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        num_classes: number of classes, must equal ``C``.
        n_bins: number of bins, >= 1.
        temperature: optional temperature (> 0) for the ``*_ts`` entries.

    Returns:
        Dict of metric name to Python float.
    """
    _check_inputs(logits, labels, "logits")
    _check_num_classes(num_classes, logits)
    _check_n_bins(n_bins)
    if temperature is not None:
        _check_positive_float(temperature, "temperature")
    from trainables.metrics.base import SplitOutputs, split_metrics

    with torch.no_grad():
        z = logits.detach().to(_work_dtype(logits))
        out = SplitOutputs(z, z.softmax(dim=1), labels, num_classes, n_bins, temperature)
        tensors: dict[str, Tensor] = {}
        report: dict[str, float] = {}
        for metric in split_metrics():
            if metric.needs_temperature and temperature is None:
                continue
            value = metric.from_outputs(out)
            if isinstance(value, Tensor):
                tensors[metric.name] = value.reshape(())
            else:
                report[metric.name] = float(value)
        if tensors:
            dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors.values()))
            values = torch.stack([t.to(dtype) for t in tensors.values()]).tolist()  # one sync
            report = {**dict(zip(tensors, values, strict=True)), **report}
    return report


def cross_fitted_ece_ts(logits: Tensor, labels: Tensor, n_bins: int = 15, seed: int = 0) -> float:
    """ECE after temperature scaling, cross-fitted: the samples are split in two halves (a
    permutation drawn from ``seed``), a temperature is fitted (:func:`fit_temperature`) on each
    half and the ECE (:func:`ece`, ``n_bins`` bins) of the other half measured at it; the result
    is the mean of the two, weighted by the halves' sizes. No sample is scored at a temperature
    fitted on itself, unlike fitting and scoring on one split. Needs at least 2 samples.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        n_bins: number of bins, >= 1.
        seed: the seed of the split into halves.

    Returns:
        The cross-fitted ECE as a Python float.
    """
    _check_inputs(logits, labels, "logits")
    _check_n_bins(n_bins)
    n = logits.shape[0]
    if n < 2:
        raise ValueError(f"cross-fitted ECE needs at least 2 samples (got {n})")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).to(logits.device)
    halves = (order[: n // 2], order[n // 2 :])
    total = 0.0
    for fit_on, score_on in (halves, halves[::-1]):
        temperature = fit_temperature(logits[fit_on], labels[fit_on])
        with torch.no_grad():
            z = logits[score_on].detach().to(_work_dtype(logits)) / temperature
            total += ece(z.softmax(dim=1), labels[score_on], n_bins).item() * len(score_on)
    return total / n
