"""``study.storage.evidence``, the one reader of stored evidence: each metric from its exact float32 column,
the float16 vectors only where they are needed, and a floor float16 can hold; no Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from study.storage.evidence import (
    NO_PROBS,
    PROB_FLOOR,
    NoProbabilities,
    mean_split,
    probs_metrics,
    read_split,
    read_splits,
    same_samples,
    split_metrics,
)
from trainables.evaluation.evidence import MAX_PROBS_CLASSES, evidence_table, write_evidence
from trainables.metrics import calibration


def _write(root: str, trial_id: str, classes: int, scale: float = 4.0) -> dict[str, float]:
    """Two epochs of one trial's test evidence; the metrics the trial logs for the last."""
    logits = scale * torch.randn(300, classes, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, classes, (300,), generator=torch.Generator().manual_seed(1))
    for epoch in (1, 2):  # the last epoch is the one read
        table = evidence_table(logits * epoch, labels, study="s", epoch=epoch, temperature=1.7)
        write_evidence(table, root, trial_id, "test", epoch)
    return calibration.calibration_report(2 * logits, labels, classes, temperature=1.7)


def test_the_probability_floor_is_the_smallest_value_float16_holds():
    assert np.float16(PROB_FLOOR) == PROB_FLOOR > 0  # representable: no stored value is clipped
    assert np.float16(PROB_FLOOR / 2) == 0  # nothing smaller is
    assert calibration.PROB_FLOOR == PROB_FLOOR


@pytest.mark.parametrize("classes", [10, MAX_PROBS_CLASSES + 50])
def test_metrics_of_a_stored_split_are_the_trials_own_with_or_without_vectors(tmp_path, classes):
    root = str(tmp_path / "evidence")
    logged = _write(root, "t", classes)
    split = read_split(root, "t", "test")
    assert split is not None and split.temperature == pytest.approx(1.7)
    assert (split.probs is None) == (classes > MAX_PROBS_CLASSES)
    found = split_metrics(split)
    assert found["accuracy"] == logged["accuracy"]  # the float32 `correct`: exact
    for key in ("ece", "adaece", "smece", "overconfidence", "ece_ts"):
        assert found[key] == pytest.approx(logged[key], abs=1e-6), key
    assert found["nll"] == pytest.approx(logged["nll"], rel=1e-6)
    if split.probs is None:
        assert math.isnan(found["brier"]) and math.isnan(found["classwise_ece"])
        with pytest.raises(NoProbabilities, match=NO_PROBS):
            mean_split([split, split])
    else:  # from the float16 vectors
        assert found["brier"] == pytest.approx(logged["brier"], abs=2e-3)
        assert found["classwise_ece"] == pytest.approx(logged["classwise_ece"], abs=2e-3)


def test_probs_metrics_and_the_mean_of_identical_members(tmp_path):
    root = str(tmp_path / "evidence")
    logged = _write(root, "a", 10, scale=1.5)  # no probability below what float16 holds
    _write(root, "b", 10, scale=1.5)  # the same logits: the ensemble is the member
    splits = read_splits(root, ["a", "b", "missing"], "test")
    assert sorted(splits) == ["a", "b"] and same_samples(list(splits.values()))
    assert not same_samples([splits["a"], None])
    mean = mean_split(list(splits.values()))
    torch.testing.assert_close(mean.probs, splits["a"].probs)
    found = probs_metrics(splits["a"].probs, splits["a"].labels, temperature=1.7)
    for key in ("accuracy", "ece", "brier", "ece_ts"):
        assert found[key] == pytest.approx(logged[key], abs=2e-3), key  # float16 vectors
    assert found["nll"] == pytest.approx(logged["nll"], rel=2e-3)
    assert split_metrics(mean, ["nll"])["nll"] == pytest.approx(logged["nll"], rel=1e-6)
