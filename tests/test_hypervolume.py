"""study/hypervolume.py against hand values and pymoo's public hypervolume (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest
from pymoo.indicators.hv import HV

from study.analysis.hypervolume import hypervolume, reference_point


def test_hand_values():
    assert hypervolume([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]], [4.0, 4.0]) == 6.0
    assert hypervolume([[1.0, 1.0], [2.0, 2.0]], [3.0, 3.0]) == 4.0  # a dominated point adds 0
    assert hypervolume([[5.0, 0.0]], [4.0, 4.0]) == 0.0  # beyond the reference
    assert hypervolume([[1.0, 1.0, 1.0]], [2.0, 3.0, 4.0]) == 6.0
    assert hypervolume([[0.5]], [2.0]) == 1.5
    assert hypervolume(np.empty((0, 2)), [1.0, 1.0]) == 0.0


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_random_fronts_match_pymoo(dims, seed):
    rng = np.random.default_rng(seed)
    points = rng.random((int(rng.integers(1, 40)), dims))
    points[rng.random(len(points)) < 0.2] = 0.5  # ties and duplicates
    reference = np.full(dims, 1.1)
    assert hypervolume(points, reference) == pytest.approx(HV(ref_point=reference)(points))


def test_the_reference_point_is_each_metrics_worst_value():
    assert reference_point(["val_accuracy", "val_ece"]) == [0.0, 1.0]
    assert reference_point(["val_accuracy", "train_seconds"], {"train_seconds": 600.0}) == [
        0.0,
        600.0,
    ]
    with pytest.raises(ValueError, match="train_seconds"):
        reference_point(["val_accuracy", "train_seconds"])
