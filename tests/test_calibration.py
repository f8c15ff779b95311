"""Tests for trainables.metrics.calibration: hand-worked cases, torchmetrics parity, temperature fits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from trainables.metrics import calibration as cal
from trainables.metrics.calibration import (
    accuracy,
    adaptive_ece,
    bootstrap_ece,
    brier,
    calibration_report,
    classwise_ece,
    ece,
    fit_temperature,
    fit_temperature_grid,
    nll,
    reliability_bins,
    smooth_ece,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def _y(values):
    return torch.tensor(values, dtype=torch.long)


def _random_probs(n, c, seed, scale=3.0, dtype=torch.float64):
    """Random probs with labels drawn from them: nearly calibrated, so per-bin gaps have mixed
    signs and a binning mistake changes the ECE (with uniform random labels every bin is
    overconfident and ECE collapses to |mean acc - mean conf| whatever the binning)."""
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(n, c, generator=g, dtype=dtype) * scale).softmax(dim=1)
    labels = torch.multinomial(probs.double(), 1, generator=g).squeeze(1)
    return probs, labels


def _planted(n=20000, c=10, temperature=2.5, seed=0):
    """Logits z and labels drawn from softmax(z / temperature): z is overconfident."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 4.0
    labels = torch.multinomial((z / temperature).softmax(dim=1), 1, generator=g).squeeze(1)
    return z, labels


# --------------------------------------------------------------------------------------------
# ECE vs torchmetrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "n_bins", "seed", "scale"),
    [
        (1000, 10, 15, 0, 3.0),
        (517, 3, 7, 1, 1.0),
        (64, 100, 20, 2, 5.0),
        (2000, 2, 1, 3, 2.0),
        (13, 5, 30, 4, 3.0),
        (4096, 7, 15, 5, 0.5),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_matches_torchmetrics(n, c, n_bins, seed, scale, dtype):
    probs, labels = _random_probs(n, c, seed, scale, dtype)
    ref = MulticlassCalibrationError(num_classes=c, n_bins=n_bins, norm="l1")(probs, labels)
    got = ece(probs, labels, n_bins)
    assert got.dtype == dtype
    assert abs(got.item() - ref.item()) < 1e-6


def test_ece_confidence_one_shares_last_bin_unlike_torchmetrics():
    # n_bins=4 -> edges 0, .25, .5, .75, 1 (exact in binary).
    # sample 0: conf 1.0, predicts 0, label 1 -> wrong; sample 1: conf .875, correct.
    # Here both share the closed last bin [.75, 1]: acc .5, conf .9375 -> ECE = .4375.
    # torchmetrics bucketizes conf == 1 into an extra bin of its own:
    #   .5 * |1 - .875| + .5 * |0 - 1| = .0625 + .5 = .5625.
    probs = _t([[1.0, 0.0], [0.875, 0.125]])
    labels = _y([1, 0])
    bins = reliability_bins(probs, labels, n_bins=4)
    assert bins.count.tolist() == [0, 0, 0, 2]
    assert ece(probs, labels, n_bins=4).item() == pytest.approx(0.4375, abs=1e-12)
    tm = MulticlassCalibrationError(num_classes=2, n_bins=4, norm="l1")(probs, labels)
    assert tm.item() == pytest.approx(0.5625, abs=1e-6)


# --------------------------------------------------------------------------------------------
# ECE / reliability bins: hand-worked cases
# --------------------------------------------------------------------------------------------


def test_bin_index_edges():
    # Bins [0,.25) [.25,.5) [.5,.75) [.75,1]: 0 -> bin 0, inner edges -> upper bin, 1 -> last.
    edges = torch.linspace(0, 1, 5, dtype=torch.float64)
    values = _t([0.0, 0.1, 0.25, 0.5, 0.75, 0.999, 1.0])
    assert cal._bin_index(values, edges).tolist() == [0, 0, 1, 2, 3, 3, 3]


def test_ece_inner_edge_goes_to_upper_bin():
    # conf .75 (correct) sits exactly on the edge between bins 2 and 3 -> bin 3 [.75, 1],
    # shared with conf .875 (wrong): acc .5, conf .8125 -> ECE = .3125.
    # (Had .75 gone to bin 2: .5 * .25 + .5 * .875 = .5625.)
    probs = _t([[0.75, 0.25], [0.125, 0.875]])
    labels = _y([0, 0])
    assert reliability_bins(probs, labels, n_bins=4).count.tolist() == [0, 0, 0, 2]
    assert ece(probs, labels, n_bins=4).item() == pytest.approx(0.3125, abs=1e-12)
    # conf exactly .5 goes to bin 2 [.5, .75), not bin 1.
    half = _t([[0.5, 0.5]])
    assert reliability_bins(half, _y([0]), n_bins=4).count.tolist() == [0, 0, 1, 0]


def test_ece_empty_bins_contribute_nothing():
    # Both samples conf .875, one right, one wrong: the single occupied bin has acc .5 and
    # conf .875 -> ECE = .375 whatever the number of (otherwise empty) bins.
    probs = _t([[0.875, 0.125], [0.875, 0.125]])
    labels = _y([0, 1])
    for n_bins in (1, 4, 15, 100):
        assert ece(probs, labels, n_bins).item() == pytest.approx(0.375, abs=1e-12)


def test_ece_perfectly_calibrated_is_zero():
    # Four samples at conf .75 with 3 of 4 right; two at conf .5 (argmax 0) with 1 of 2 right.
    probs = _t([[0.75, 0.25]] * 3 + [[0.25, 0.75]] + [[0.5, 0.5]] * 2)
    labels = _y([0, 0, 0, 0, 0, 1])
    # Sample 3 predicts class 1 with conf .75 but its label is 0 -> the 1-of-4 wrong one.
    assert accuracy(probs[:4], labels[:4]).item() == pytest.approx(0.75)
    assert ece(probs, labels, n_bins=4).item() == pytest.approx(0.0, abs=1e-12)


def test_ece_confident_and_wrong():
    # Two samples at conf .9 and two at .6 (3 classes), all wrong; n_bins=4 puts them in bins
    # 3 and 2: ECE = .5 * |0 - .9| + .5 * |0 - .6| = .45 + .3 = .75.
    probs = _t([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])
    labels = _y([1, 2, 2, 0])
    assert accuracy(probs, labels).item() == 0.0
    assert ece(probs, labels, n_bins=4).item() == pytest.approx(0.75, abs=1e-12)
    assert reliability_bins(probs, labels, n_bins=4).count.tolist() == [0, 0, 2, 2]


@pytest.mark.parametrize(("n", "c", "n_bins", "seed"), [(1000, 10, 15, 0), (37, 4, 10, 1)])
def test_reliability_bins_consistent_with_ece(n, c, n_bins, seed):
    probs, labels = _random_probs(n, c, seed)
    bins = reliability_bins(probs, labels, n_bins)
    assert bins.edges.shape == (n_bins + 1,)
    assert bins.edges[0].item() == 0.0 and bins.edges[-1].item() == 1.0
    assert bins.count.dtype == torch.int64 and bins.count.shape == (n_bins,)
    assert int(bins.count.sum()) == n
    empty = bins.count == 0
    assert torch.all(bins.confidence[empty] == 0) and torch.all(bins.accuracy[empty] == 0)
    # Occupied bins' mean confidences lie within their edges.
    lo, hi = bins.edges[:-1], bins.edges[1:]
    occ = ~empty
    assert torch.all(bins.confidence[occ] >= lo[occ]) and torch.all(bins.confidence[occ] <= hi[occ])
    weight = bins.count.double() / n
    recomputed = (weight * (bins.accuracy - bins.confidence).abs()).sum()
    assert recomputed.item() == pytest.approx(ece(probs, labels, n_bins).item(), abs=1e-12)
    assert (weight * bins.accuracy).sum().item() == pytest.approx(
        accuracy(probs, labels).item(), abs=1e-12
    )


# --------------------------------------------------------------------------------------------
# Adaptive ECE
# --------------------------------------------------------------------------------------------


def _adaptive_ece_reference(probs, labels, n_bins):
    """Loop-based reference with torch.tensor_split over the sorted order."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    order = torch.sort(conf, stable=True).indices
    total = 0.0
    for idx in torch.tensor_split(order, n_bins):
        if idx.numel():
            total += (
                idx.numel()
                / len(conf)
                * abs(correct[idx].mean().item() - conf[idx].double().mean().item())
            )
    return total


def test_adaptive_ece_hand_worked():
    # Sorted confidences .6 .7 | .8 .9 with correctness 1 0 | 1 1 (given shuffled), 2 bins:
    # bin 0: acc .5, conf .65 -> .5 * .15; bin 1: acc 1, conf .85 -> .5 * .15; total .15.
    # Equal-width ECE with 2 bins puts everything in [.5, 1]: acc .75, conf .75 -> 0.
    probs = _t([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7]])
    labels = _y([1, 0, 0, 0])  # .8 right, .6 right, .9 right, .7 wrong (predicts 1, label 0)
    assert adaptive_ece(probs, labels, n_bins=2).item() == pytest.approx(0.15, abs=1e-12)
    assert ece(probs, labels, n_bins=2).item() == pytest.approx(0.0, abs=1e-12)


def test_equal_mass_index_matches_tensor_split():
    for n, b in [(10, 3), (3, 10), (15, 15), (16, 15), (1, 1), (1, 4), (100, 7)]:
        idx = cal._equal_mass_index(n, b, torch.device("cpu"))
        sizes = torch.bincount(idx, minlength=b)
        expected = [len(s) for s in torch.tensor_split(torch.arange(n), b)]
        assert sizes.tolist() == expected
        assert int(sizes.sum()) == n
        assert torch.all(idx[1:] >= idx[:-1])  # contiguous in the sorted order


@pytest.mark.parametrize(("n", "n_bins"), [(10, 3), (3, 10), (1, 15), (101, 15)])
def test_adaptive_ece_keeps_every_sample(n, n_bins):
    # All predictions wrong: every bin's gap is its total confidence, so AdaECE equals the mean
    # confidence over all N samples only if no sample is dropped.
    g = torch.Generator().manual_seed(n)
    probs = (torch.randn(n, 4, generator=g, dtype=torch.float64) * 2).softmax(dim=1)
    labels = (probs.argmax(dim=1) + 1) % 4
    mean_conf = probs.max(dim=1).values.mean().item()
    assert adaptive_ece(probs, labels, n_bins).item() == pytest.approx(mean_conf, abs=1e-12)


def test_adaptive_ece_fewer_samples_than_bins():
    # N=3 < 10 bins: each sample is its own bin -> mean |correct - conf|.
    probs = _t([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    labels = _y([0, 0, 0])  # right (.9), wrong (.7), right (.6)
    expected = (0.1 + 0.7 + 0.4) / 3
    assert adaptive_ece(probs, labels, n_bins=10).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "n_bins", "seed"), [(1000, 10, 15, 0), (103, 3, 8, 1)])
def test_adaptive_ece_matches_loop_reference(n, c, n_bins, seed):
    probs, labels = _random_probs(n, c, seed)
    ref = _adaptive_ece_reference(probs, labels, n_bins)
    assert adaptive_ece(probs, labels, n_bins).item() == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Class-wise ECE
# --------------------------------------------------------------------------------------------


def test_classwise_ece_hand_worked_with_absent_class():
    # 3 classes, labels only 0 and 1; n_bins=2 -> bins [0, .5) and [.5, 1].
    # class 0: p = (.7, .2), t = (1, 0): .5|1-.7| + .5|0-.2| = .15 + .10 = .25
    # class 1: p = (.2, .6), t = (0, 1): .5|0-.2| + .5|1-.6| = .10 + .20 = .30
    # class 2 (absent): p = (.1, .2), t = (0, 0), both in bin 0: 1 * |0 - .15| = .15
    # mean over the 3 classes: .70 / 3. Dropping the absent class would give .55 / 2 = .275.
    probs = _t([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2]])
    labels = _y([0, 1])
    got = classwise_ece(probs, labels, num_classes=3, n_bins=2).item()
    assert got == pytest.approx(0.70 / 3, abs=1e-12)
    assert got != pytest.approx(0.275, abs=1e-6)


def test_classwise_ece_edges_and_reference():
    # p_k exactly 0 is in bin 0, exactly .5 in the upper bin, 1 in the last bin.
    # class 0: p = (1, .5, 0), t = (1, 0, 0): bins [.5,1]: {1, .5} t {1, 0} -> (2/3)|.5-.75|,
    #   bin [0,.5): {0} t {0} -> 0 => 1/6.
    # class 1: p = (0, .5, 1), t = (0, 1, 1): bin 0 {0}/{0} -> 0; bin 1 {.5,1}/{1,1} ->
    #   (2/3)|1 - .75| = 1/6. mean = 1/6.
    probs = _t([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    labels = _y([0, 1, 1])
    assert classwise_ece(probs, labels, 2, n_bins=2).item() == pytest.approx(1 / 6, abs=1e-12)


def test_classwise_ece_matches_loop_reference():
    probs, labels = _random_probs(500, 6, seed=7)
    n_bins = 10
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    terms = []
    for k in range(6):
        pk, tk = probs[:, k], (labels == k).double()
        total = 0.0
        for b in range(n_bins):
            upper = pk <= edges[b + 1] if b == n_bins - 1 else pk < edges[b + 1]
            m = (pk >= edges[b]) & upper
            if m.any():
                total += m.sum().item() / len(pk) * abs(tk[m].mean().item() - pk[m].mean().item())
        terms.append(total)
    ref = sum(terms) / len(terms)
    assert classwise_ece(probs, labels, 6, n_bins).item() == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------------------
# NLL, Brier, accuracy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nll_matches_cross_entropy(dtype):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(300, 8, generator=g, dtype=dtype) * 3
    labels = torch.randint(0, 8, (300,), generator=g)
    ref = F.cross_entropy(logits, labels)
    assert nll(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)


def test_brier_hand_worked():
    # (.3^2 + .2^2 + .1^2) = .14 ; (.2^2 + .6^2 + .8^2) = .04 + .36 + .64 = 1.04 ; mean .59
    probs = _t([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2]])
    labels = _y([0, 2])
    assert brier(probs, labels).item() == pytest.approx(0.59, abs=1e-12)
    # Perfect one-hot predictions score 0; confidently wrong one-hot scores 2.
    eye = torch.eye(3, dtype=torch.float64)
    assert brier(eye, _y([0, 1, 2])).item() == 0.0
    assert brier(eye, _y([1, 2, 0])).item() == 2.0


def test_accuracy_hand_worked():
    logits = _t([[1.0, 2.0], [3.0, 0.0], [0.0, 5.0]])
    labels = _y([1, 0, 0])  # right, right, wrong
    assert accuracy(logits, labels).item() == pytest.approx(2 / 3)
    assert accuracy(logits.softmax(dim=1), labels).item() == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------


def test_fit_temperature_recovers_planted_temperature():
    z, labels = _planted(temperature=2.5)
    t = fit_temperature(z, labels)
    assert isinstance(t, float)
    assert t == pytest.approx(2.5, rel=0.05)
    assert nll(z / t, labels).item() < nll(z, labels).item()


def test_fit_temperature_underconfident_and_no_grad():
    # Planted T = 0.5 (logits underconfident); also callable under no_grad / inference_mode
    # and from float32 logits.
    z, labels = _planted(n=8000, temperature=0.5, seed=1)
    with torch.no_grad():
        t1 = fit_temperature(z.float(), labels)
    with torch.inference_mode():
        z_inf, y_inf = z.clone(), labels.clone()
        t2 = fit_temperature(z_inf, y_inf)
    assert t1 == pytest.approx(0.5, rel=0.05)
    assert t2 == pytest.approx(t1, rel=1e-3)


def _separable(n=500, c=5, seed=0):
    """Logits whose argmax is every sample's label, by a margin of at least 0.5."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    onehot = F.one_hot(labels, c).bool()
    return torch.where(onehot, z.max(dim=1, keepdim=True).values + 0.5, z), labels


def test_fit_temperature_on_a_separable_split_stops_at_the_lower_bound():
    # The NLL falls all the way to T -> 0: unbounded, the fit ran to T = 0.034 (and the regime
    # map read that as a very underconfident model).
    z, labels = _separable()
    assert bool((z.argmax(dim=1) == labels).all())
    t = fit_temperature(z, labels)
    assert t == cal.TEMPERATURE_MIN == 0.05
    assert cal.temperature_at_bound(t)
    assert nll(z / t, labels).item() <= nll(z, labels).item()


def test_fit_temperature_on_labels_the_logits_rank_last_stops_at_the_upper_bound():
    # The best prediction is uniform, T -> infinity: unbounded, the fit ran to T = 1.4e7.
    z, _ = _separable()
    labels = z.argmin(dim=1)
    t = fit_temperature(z, labels)
    assert t == cal.TEMPERATURE_MAX == 20.0
    assert cal.temperature_at_bound(t)
    assert nll(z / t, labels).item() <= nll(z, labels).item()


def test_a_temperature_inside_the_bounds_is_not_flagged():
    z, labels = _planted(n=8000, temperature=2.5, seed=3)
    t = fit_temperature(z, labels)
    assert cal.TEMPERATURE_MIN < t < cal.TEMPERATURE_MAX
    assert not cal.temperature_at_bound(t)
    assert cal.temperature_at_bound(0.01) and cal.temperature_at_bound(1e4)  # older, unbounded fits


def test_fit_temperature_grid_lowers_ece():
    z, labels = _planted(n=8000, temperature=2.5, seed=2)
    grid = torch.linspace(0.5, 5.0, 46)
    t = fit_temperature_grid(z, labels, grid)
    assert isinstance(t, float)
    assert any(abs(t - g) < 1e-6 for g in grid.tolist())
    ece_t = ece((z / t).softmax(dim=1), labels).item()
    ece_1 = ece(z.softmax(dim=1), labels).item()
    assert ece_t < ece_1 / 3
    assert 1.5 < t < 4.0
    # It really is the grid minimiser of ece().
    best = min(ece((z / g).softmax(dim=1), labels).item() for g in grid.tolist())
    assert ece_t <= best + 1e-9
    # Default grid works too, and a list grid is accepted.
    assert 1.5 < fit_temperature_grid(z, labels) < 4.0
    assert fit_temperature_grid(z, labels, [1.0, 2.5]) == pytest.approx(2.5)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def test_calibration_report():
    z, labels = _planted(n=2000, c=5, temperature=2.0, seed=4)
    rep = calibration_report(z, labels, num_classes=5, n_bins=10)
    assert set(rep) == {
        "accuracy",
        "ece",
        "adaece",
        "classwise_ece",
        "nll",
        "brier",
        "overconfidence",
        "smece",
    }
    assert all(isinstance(v, float) for v in rep.values())
    p = z.softmax(dim=1)
    assert rep["ece"] == pytest.approx(ece(p, labels, 10).item(), abs=1e-12)
    assert rep["adaece"] == pytest.approx(adaptive_ece(p, labels, 10).item(), abs=1e-12)
    assert rep["classwise_ece"] == pytest.approx(classwise_ece(p, labels, 5, 10).item(), abs=1e-12)
    assert rep["nll"] == pytest.approx(nll(z, labels).item(), abs=1e-12)
    assert rep["brier"] == pytest.approx(brier(p, labels).item(), abs=1e-12)
    assert rep["accuracy"] == pytest.approx(accuracy(z, labels).item(), abs=1e-12)
    conf = p.max(dim=1).values
    assert rep["overconfidence"] == pytest.approx(conf.mean().item() - rep["accuracy"], abs=1e-12)
    assert rep["overconfidence"] > 0.05  # the planted logits are overconfident (T = 2)
    assert rep["smece"] == pytest.approx(smooth_ece(p, labels), abs=1e-12)

    rep_ts = calibration_report(z, labels, num_classes=5, n_bins=10, temperature=2.0)
    assert rep_ts["ece_ts"] == pytest.approx(ece((z / 2).softmax(dim=1), labels, 10).item())
    assert rep_ts["nll_ts"] == pytest.approx(nll(z / 2, labels).item())
    assert rep_ts["nll_ts"] < rep_ts["nll"]
    rep_one = calibration_report(z, labels, num_classes=5, n_bins=10, temperature=1.0)
    assert rep_one["ece_ts"] == pytest.approx(rep_one["ece"], abs=1e-12)


# --------------------------------------------------------------------------------------------
# Smooth ECE and the bootstrap interval of ECE
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "c", "seed", "scale"), [(300, 3, 0, 1.0), (2000, 10, 1, 4.0)])
def test_smooth_ece_equals_relplot_on_random_inputs(n, c, seed, scale):
    import numpy as np
    import relplot

    probs, labels = _random_probs(n, c, seed, scale=scale)
    g = torch.Generator().manual_seed(seed + 100)  # shuffle labels: clearly miscalibrated too
    labels = torch.where(
        torch.rand(n, generator=g) < 0.3, torch.randint(0, c, (n,), generator=g), labels
    )
    p = probs.numpy()
    f, y = p.max(axis=1), (p.argmax(axis=1) == labels.numpy()).astype(np.float64)
    assert smooth_ece(probs, labels) == pytest.approx(relplot.smECE(f, y), abs=1e-12)
    assert smooth_ece(probs.float(), labels) == pytest.approx(relplot.smECE(f, y), abs=1e-6)


def _overconfident_by(
    gap: float, n: int, c: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A model whose top-label confidence is uniform on [0.4, 1] and whose accuracy at
    confidence x is x - gap: every bin's gap is -gap, so the population ECE is exactly ``gap``."""
    conf = 0.4 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    probs = ((1 - conf) / (c - 1))[:, None].repeat(1, c)
    probs[:, 0] = conf
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf - gap
    wrong = torch.randint(1, c, (n,), generator=g)
    return probs, torch.where(correct, torch.zeros_like(wrong), wrong)


def test_bootstrap_interval_of_ece_covers_the_true_ece_about_95_percent_of_the_time():
    g = torch.Generator().manual_seed(7)
    draws, covered = 200, 0
    for k in range(draws):
        probs, labels = _overconfident_by(0.08, 4000, 10, g)
        low, high = bootstrap_ece(probs, labels, n_resamples=1000, seed=k)
        assert low <= ece(probs, labels).item() <= high
        covered += low <= 0.08 <= high
    assert 0.90 <= covered / draws <= 0.99


def test_bootstrap_interval_is_seeded_and_narrows_with_more_samples():
    g = torch.Generator().manual_seed(3)
    small = _overconfident_by(0.1, 500, 5, g)
    large = _overconfident_by(0.1, 8000, 5, g)
    assert bootstrap_ece(*small, seed=1) == bootstrap_ece(*small, seed=1)
    width = [high - low for low, high in (bootstrap_ece(*small), bootstrap_ece(*large))]
    assert width[1] < width[0] / 2


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------

_P = _t([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
_Y = _y([0, 1, 1])

BINNED = [
    lambda p, y, **kw: ece(p, y, **kw),
    lambda p, y, **kw: adaptive_ece(p, y, **kw),
    lambda p, y, **kw: classwise_ece(p, y, p.shape[-1], **kw),
    lambda p, y, **kw: reliability_bins(p, y, **kw),
]
ALL = [*BINNED, accuracy, nll, brier, fit_temperature, fit_temperature_grid]


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (_P, _y([0, 1]), "samples"),  # mismatched lengths
        (_P[0], _Y[:1], "2-D"),  # 1-D probs
        (_P[None], _Y, "2-D"),  # 3-D probs
        (_P, _Y[None], "1-D"),  # 2-D labels
        (_P, _Y.double(), "integer"),  # float labels
        (_P, _y([0, 2, 1]), r"\[0, 2\)"),  # label out of range
        (_P, _y([0, -1, 1]), r"\[0, 2\)"),  # negative label
        (torch.empty(0, 2), torch.empty(0, dtype=torch.long), "at least one"),
        (_P.long(), _Y, "floating"),
    ],
)
def test_bad_inputs_raise(fn, probs, labels, match):
    with pytest.raises(ValueError, match=match):
        fn(probs, labels)


@pytest.mark.parametrize("fn", BINNED)
@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_n_bins_raise(fn, n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        fn(_P, _Y, n_bins=n_bins)


def test_other_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        classwise_ece(_P, _Y, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        calibration_report(_P, _Y, num_classes=5)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_report(_P, _Y, num_classes=2, n_bins=0)
    for bad_t in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            calibration_report(_P, _Y, num_classes=2, temperature=bad_t)
    for bad_grid in ([], [1.0, 0.0], [[1.0, 2.0]], [1.0, math.nan]):
        with pytest.raises(ValueError, match="grid"):
            fit_temperature_grid(_P, _Y, bad_grid)
    with pytest.raises(ValueError, match="max_iter"):
        fit_temperature(_P, _Y, max_iter=0)
    with pytest.raises(ValueError, match="Tensor"):
        ece(_P.tolist(), _Y)


# --------------------------------------------------------------------------------------------
# dtypes and devices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_and_device(device):
    probs64, labels = _random_probs(400, 6, seed=11)
    labels = labels.to(device)
    results = {}
    for dtype in (torch.float32, torch.float64):
        probs = probs64.to(device=device, dtype=dtype)
        logits = probs.log()
        outs = {
            "accuracy": accuracy(probs, labels),
            "ece": ece(probs, labels),
            "adaece": adaptive_ece(probs, labels),
            "classwise_ece": classwise_ece(probs, labels, 6),
            "nll": nll(logits, labels),
            "brier": brier(probs, labels),
        }
        for name, out in outs.items():
            assert out.dim() == 0, name
            assert out.dtype == dtype, name
            assert out.device == probs.device, name
        bins = reliability_bins(probs, labels)
        for field in bins:
            assert field.device == probs.device
        results[dtype] = {k: v.item() for k, v in outs.items()}
    for name, v64 in results[torch.float64].items():
        assert results[torch.float32][name] == pytest.approx(v64, abs=1e-5), name


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_accumulates_in_float32(device, half):
    # 20000 samples: a half-precision sum stalls long before (bf16 adds nothing to 256 + 0.9,
    # float16 nothing to 2048 + 1), so every metric below would be far off the float64 one.
    probs, labels = _random_probs(20000, 4, seed=12)
    probs, labels = probs.to(device=device, dtype=half), labels.to(device)
    exact = probs.double()  # the same (rounded) inputs, accumulated in float64
    metrics = {
        "ece": (ece, ()),
        "adaptive_ece": (adaptive_ece, ()),
        "classwise_ece": (classwise_ece, (4,)),
        "brier": (brier, ()),
        "overconfidence": (cal.overconfidence, ()),
        "accuracy": (accuracy, ()),
    }
    for name, (fn, args) in metrics.items():
        out = fn(probs, labels, *args)
        assert out.dtype == torch.float32 and out.device.type == device, name
        expected = fn(exact, labels, *args).item()
        assert out.item() == pytest.approx(expected, abs=1e-5), name
    out = nll(probs.log(), labels)
    assert out.item() == pytest.approx(nll(probs.log().double(), labels).item(), rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_metrics_do_not_sync():
    probs, labels = _random_probs(1000, 10, seed=13)
    probs, labels = probs.cuda(), labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ece(probs, labels)
        adaptive_ece(probs, labels)
        classwise_ece(probs, labels, 10)
        reliability_bins(probs, labels)
        accuracy(probs, labels)
        nll(probs.log(), labels)
        brier(probs, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
