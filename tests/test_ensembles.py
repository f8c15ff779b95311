"""Deep ensembles from stored probabilities (`study compare --ensembles`), against a hand
computation in NumPy on the Parquet evidence as written; no Ray."""

from __future__ import annotations

import numpy as np
import optuna
import pyarrow.dataset as pads
import pytest
import scipy.stats
import torch
from optuna.distributions import FloatDistribution

from search_spaces.schema import check_space
from study.compare import comparison_tables, render
from study.ensembles import Ensemble, ensembles, with_ensembles
from study.trials import SETTINGS_ATTR, STATUS_ATTR, TRIAL_ID_ATTR
from trainables.evidence import evidence_table, write_evidence

SPACE = check_space(
    {
        "fixed": {"dataset": "digits", "train_subset": None, "epochs": 1},
        "search": {"lr": {"loguniform": [0.01, 0.1]}},
        "samples": 2,
        "repeats": 2,
    },
    "test",
)
N_TEST, N_VAL, N_SVHN, CLASSES = 300, 120, 200, 10


def _logits(generator: torch.Generator, n: int, labels: torch.Tensor, sharp: float) -> torch.Tensor:
    logits = torch.randn(n, CLASSES, generator=generator)
    logits[torch.arange(n), labels] += sharp  # mostly right, overconfident for large ``sharp``
    return logits * sharp


def _study(root: str) -> optuna.Study:
    """Two configurations (lr) x two seeds, each trial with val, test and SVHN evidence."""
    g = torch.Generator().manual_seed(0)
    labels = {
        s: torch.randint(0, CLASSES, (n,), generator=g)
        for s, n in (("test", N_TEST), ("val", N_VAL))
    }
    study = optuna.create_study(directions=["maximize", "minimize"])
    for lr, sharp in ((0.01, 1.5), (0.1, 3.0)):
        for seed in (0, 1):
            trial_id = f"t{lr}-{seed}"
            for split, n in (("test", N_TEST), ("val", N_VAL)):
                table = evidence_table(
                    _logits(g, n, labels[split], sharp), labels[split], study="e", epoch=1,
                    temperature=1.0,
                )  # fmt: skip
                write_evidence(table, root, trial_id, split, 1)
            svhn = evidence_table(
                torch.randn(N_SVHN, CLASSES, generator=g), torch.zeros(N_SVHN, dtype=torch.long),
                study="e", epoch=1, temperature=1.0,
            )  # fmt: skip
            write_evidence(svhn, root, trial_id, "ood_svhn", 1)
            study.add_trial(
                optuna.trial.create_trial(
                    params={"lr": lr},
                    distributions={"lr": FloatDistribution(0.01, 0.1, log=True)},
                    values=[0.9, 0.05],
                    user_attrs={
                        STATUS_ATTR: "completed",
                        SETTINGS_ATTR: {"seed": seed},
                        TRIAL_ID_ATTR: trial_id,
                        "test_ece": 0.05,
                        "ood_svhn_auroc": 0.5,
                    },
                )
            )
    return study


def _stored(root: str, trial_id: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A trial's stored probabilities (float16 -> float64, rows renormalised) and labels."""
    table = pads.dataset(f"{root}/trial_id={trial_id}/split={split}").to_table()
    frame = table.to_pandas().sort_values("sample_id")
    probs = np.stack(frame["probs"].to_numpy()).astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True), frame["label"].to_numpy()


def _ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return total / len(labels)


def _nll_at(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = torch.from_numpy(np.log(np.maximum(probs, 1e-12)) / temperature).softmax(dim=1).numpy()
    return float(-np.log(scaled[np.arange(len(labels)), labels]).mean())


def test_each_configuration_with_seeds_is_one_ensemble_recomputed_by_hand(tmp_path):
    root = str(tmp_path / "evidence")
    study = _study(root)
    tables = comparison_tables(study, SPACE)
    found = ensembles(tables[0].confs, root)
    assert [e.label for e in found] == [f"{c.label} ensemble x 2" for c in tables[0].confs]
    for conf, ensemble in zip(tables[0].confs, found, strict=True):
        ids = [t.user_attrs[TRIAL_ID_ATTR] for t in conf.trials]
        test = [_stored(root, i, "test") for i in ids]
        probs, labels = np.mean([p for p, _ in test], axis=0), test[0][1]
        m = ensemble.metrics
        assert m["test_accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
        assert m["test_ece"] == pytest.approx(_ece(probs, labels), abs=1e-9)
        nll = -np.log(probs[np.arange(len(labels)), labels]).mean()
        assert m["test_nll"] == pytest.approx(nll, rel=1e-9)
        brier = ((probs - np.eye(CLASSES)[labels]) ** 2).sum(axis=1).mean()
        assert m["test_brier"] == pytest.approx(brier, rel=1e-9)
        # one temperature, fitted on the ensemble's val probabilities: it minimises their NLL
        val = [_stored(root, i, "val") for i in ids]
        val_probs, val_labels = np.mean([p for p, _ in val], axis=0), val[0][1]

        t = m["temperature"]
        nlls = [_nll_at(val_probs, val_labels, t * f) for f in (0.95, 1.0, 1.05)]
        assert nlls[1] <= min(nlls[0], nlls[2])
        scaled = torch.from_numpy(np.log(np.maximum(probs, 1e-12)) / t).softmax(dim=1).numpy()
        assert m["test_ece_ts"] == pytest.approx(_ece(scaled, labels), abs=1e-6)
        svhn = np.mean([_stored(root, i, "ood_svhn")[0] for i in ids], axis=0)
        expected = scipy.stats.mannwhitneyu(probs.max(1), svhn.max(1)).statistic
        assert m["ood_svhn_auroc"] == pytest.approx(expected / (len(probs) * len(svhn)))


def test_compare_shows_ensemble_rows_after_the_configurations(tmp_path):
    root = str(tmp_path / "evidence")
    tables = with_ensembles(comparison_tables(_study(root), SPACE), root)
    assert len(tables) == 2  # calibration, and the OOD table (SVHN AUROC)
    confs = tables[0].confs
    assert [type(c) for c in confs] == [type(confs[0])] * 2 + [Ensemble] * 2
    text = render(tables[0], "markdown")
    row = next(line for line in text.splitlines() if "ensemble x 2" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2" and "±" not in row  # K seeds, one value per metric
    ood = render(tables[1], "csv").splitlines()
    assert ood[0].startswith("configuration,seeds,trials,trial_numbers,ood_svhn_auroc_mean")
    assert sum("ensemble x 2" in line for line in ood) == 2


def _two_seeds(root: str, same_test: bool, same_val: bool) -> optuna.Study:
    """One configuration, two seeds, whose test (and val) samples are shared or not."""
    g = torch.Generator().manual_seed(3)
    study = optuna.create_study(directions=["maximize", "minimize"])
    base = {s: torch.randint(0, CLASSES, (n,), generator=g) for s, n in (("test", 50), ("val", 40))}
    for seed in (0, 1):
        for split, same in (("test", same_test), ("val", same_val)):
            labels = base[split] if same or seed == 0 else (base[split] + 1) % CLASSES
            table = evidence_table(
                torch.randn(len(labels), CLASSES, generator=g), labels, study="e", epoch=1,
                temperature=1.0,
            )  # fmt: skip
            write_evidence(table, root, f"s{seed}", split, 1)
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.05},
                distributions={"lr": FloatDistribution(0.01, 0.1, log=True)},
                values=[0.9, 0.05],
                user_attrs={
                    STATUS_ATTR: "completed",
                    SETTINGS_ATTR: {"seed": seed},
                    TRIAL_ID_ATTR: f"s{seed}",
                },  # fmt: skip
            )
        )
    return study


def test_seeds_tested_on_different_samples_give_no_ensemble_and_say_why(tmp_path):
    root = str(tmp_path / "evidence")
    confs = comparison_tables(_two_seeds(root, same_test=False, same_val=True), SPACE)[0].confs
    skipped: list[str] = []
    assert ensembles(confs, root, skipped) == []
    (reason,) = skipped
    assert "tested on different samples" in reason and "test_subset" in reason
    assert "set data_seed" in reason


def test_a_val_split_drawn_per_seed_gives_no_temperature(tmp_path):
    root = str(tmp_path / "evidence")
    confs = comparison_tables(_two_seeds(root, same_test=True, same_val=False), SPACE)[0].confs
    (ensemble,) = ensembles(confs, root)
    assert np.isnan(ensemble.metrics["temperature"]) and np.isnan(ensemble.metrics["test_ece_ts"])
    assert 0 <= ensemble.metrics["test_ece"] <= 1
