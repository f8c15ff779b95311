"""Deep ensembles from stored probabilities (`study compare --ensembles`), against a hand
computation in NumPy on the Parquet evidence as written; no Ray."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
import pyarrow.dataset as pads
import pytest
import scipy.stats
import torch
from optuna.distributions import FloatDistribution

from search_spaces.schema import check_space
from study.analysis.compare import comparison_tables, render
from study.analysis.ensembles import Ensemble, ensembles, with_ensembles
from study.storage.records import SETTINGS_ATTR, STATUS_ATTR, TRIAL_ID_ATTR
from trainables.evaluation.evidence import evidence_table, write_evidence

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
FLOOR = 2.0**-24  # a stored float16 0 is read as float16's smallest positive value


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


def _frame(root: str, trial_id: str, split: str) -> pd.DataFrame:
    """A trial's stored rows of ``split``, read with pyarrow and pandas alone."""
    table = pads.dataset(f"{root}/trial_id={trial_id}/split={split}").to_table()
    return table.to_pandas().sort_values("sample_id")


@dataclass(frozen=True)
class HandEnsemble:
    """Members' stored rows averaged in NumPy, by the rule ``study.storage.evidence`` states: the float16
    vectors renormalised and averaged; where every member predicts the same class, that class;
    the mean of their float32 ``true_prob``."""

    probs: np.ndarray
    labels: np.ndarray
    pred: np.ndarray
    confidence: np.ndarray
    true_prob: np.ndarray

    @classmethod
    def of(cls, frames: list[pd.DataFrame]) -> HandEnsemble:
        vectors = [np.stack(f.probs.to_list()).astype(np.float64) for f in frames]
        probs = np.mean([v / v.sum(axis=1, keepdims=True) for v in vectors], axis=0)
        preds = np.stack([f.pred.to_numpy() for f in frames])
        agree = (preds == preds[0]).all(axis=0)
        return cls(
            probs=probs,
            labels=frames[0].label.to_numpy(),
            pred=np.where(agree, preds[0], probs.argmax(axis=1)),
            confidence=probs.max(axis=1),
            true_prob=np.mean([f.true_prob.to_numpy(np.float64) for f in frames], axis=0),
        )

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.labels


def _hand(root: str, trial_ids: list[str], split: str) -> HandEnsemble:
    return HandEnsemble.of([_frame(root, i, split) for i in trial_ids])


def numpy_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Equal-width top-label ECE in NumPy, [a, b) bins with the last one closed."""
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return total / len(correct)


def _scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    return torch.from_numpy(np.log(np.maximum(probs, FLOOR)) / temperature).softmax(dim=1).numpy()


def _nll_at(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = _scaled(probs, temperature)
    return float(-np.log(scaled[np.arange(len(labels)), labels]).mean())


def test_each_configuration_with_seeds_is_one_ensemble_recomputed_by_hand(tmp_path):
    root = str(tmp_path / "e" / "evidence")  # study e's: its rows name it
    study = _study(root)
    tables = comparison_tables(study, SPACE)
    found = ensembles(tables[0].confs, root)
    assert [e.label for e in found] == [f"{c.label} ensemble x 2" for c in tables[0].confs]
    for conf, ensemble in zip(tables[0].confs, found, strict=True):
        ids = [t.user_attrs[TRIAL_ID_ATTR] for t in conf.trials]
        test = _hand(root, ids, "test")
        m = ensemble.metrics
        assert m["test_accuracy"] == pytest.approx(test.correct.mean())
        assert m["test_ece"] == pytest.approx(numpy_ece(test.confidence, test.correct), abs=1e-9)
        assert m["test_nll"] == pytest.approx(-np.log(test.true_prob).mean(), rel=1e-9)
        brier = ((test.probs - np.eye(CLASSES)[test.labels]) ** 2).sum(axis=1).mean()
        assert m["test_brier"] == pytest.approx(brier, rel=1e-9)
        # one temperature, fitted on the ensemble's val probabilities: it minimises their NLL
        val = _hand(root, ids, "val")
        t = m["temperature"]
        nlls = [_nll_at(val.probs, val.labels, t * f) for f in (0.95, 1.0, 1.05)]
        assert nlls[1] <= min(nlls[0], nlls[2])
        scaled = _scaled(test.probs, t).max(axis=1)
        assert m["test_ece_ts"] == pytest.approx(numpy_ece(scaled, test.correct), abs=1e-6)
        svhn = _hand(root, ids, "ood_svhn")
        expected = scipy.stats.mannwhitneyu(test.confidence, svhn.confidence).statistic
        assert m["ood_svhn_auroc"] == pytest.approx(
            expected / (len(test.labels) * len(svhn.labels))
        )


def test_compare_shows_ensemble_rows_after_the_configurations(tmp_path):
    root = str(tmp_path / "e" / "evidence")
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


def _two_seeds(root: str, same_test: bool, same_val: bool, flushed: bool = False) -> optuna.Study:
    """One configuration, two seeds, whose test (and val) samples are shared or not; with
    ``flushed``, most labels have a probability float16 stores as 0 (about 1e-8)."""
    g = torch.Generator().manual_seed(3)
    study = optuna.create_study(directions=["maximize", "minimize"])
    base = {s: torch.randint(0, CLASSES, (n,), generator=g) for s, n in (("test", 50), ("val", 40))}
    for seed in (0, 1):
        for split, same in (("test", same_test), ("val", same_val)):
            labels = base[split] if same or seed == 0 else (base[split] + 1) % CLASSES
            logits = torch.randn(len(labels), CLASSES, generator=g)
            if flushed:
                logits[torch.arange(len(labels)), labels] -= 18.0
            table = evidence_table(logits, labels, study="e", epoch=1, temperature=1.0)
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
    root = str(tmp_path / "e" / "evidence")
    confs = comparison_tables(_two_seeds(root, same_test=False, same_val=True), SPACE)[0].confs
    skipped: list[str] = []
    assert ensembles(confs, root, skipped) == []
    (reason,) = skipped
    assert "tested on different samples" in reason and "test_subset" in reason
    assert "set data_seed" in reason


def test_a_val_split_drawn_per_seed_gives_no_temperature(tmp_path):
    root = str(tmp_path / "e" / "evidence")
    confs = comparison_tables(_two_seeds(root, same_test=True, same_val=False), SPACE)[0].confs
    (ensemble,) = ensembles(confs, root)
    assert np.isnan(ensemble.metrics["temperature"]) and np.isnan(ensemble.metrics["test_ece_ts"])
    assert 0 <= ensemble.metrics["test_ece"] <= 1


def test_an_ensemble_nll_is_not_charged_27_6_for_each_probability_float16_flushed(tmp_path):
    root = str(tmp_path / "e" / "evidence")
    study = _two_seeds(root, same_test=True, same_val=True, flushed=True)
    frame = _frame(root, "s0", "test")
    flushed = np.array([p[y] == 0 for p, y in zip(frame.probs, frame.label)])
    assert flushed.mean() > 0.5  # the label's probability was stored as 0 in float16
    (ensemble,) = ensembles(comparison_tables(study, SPACE)[0].confs, root)
    expected = -np.log(_hand(root, ["s0", "s1"], "test").true_prob).mean()
    assert 15 < expected < 25
    assert ensemble.metrics["test_nll"] == pytest.approx(expected, rel=1e-9)
