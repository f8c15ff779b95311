"""`study compare --calibrators`: every trial recalibrated from its stored evidence, checked
against a hand computation in NumPy on the Parquet files as written; no Ray."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pyarrow.dataset as pads
import pytest
import scipy.stats
import torch
from optuna.distributions import FloatDistribution

from search_spaces.schema import check_space
from study.analysis.calibrators import fit_calibrator
from study.analysis.compare import Comparison, comparison_tables, paired_table, render_paired
from study.analysis.posthoc import calibrated_tables
from study.api.arguments import InputError, calibrators_arg
from study.storage.records import SETTINGS_ATTR, STATUS_ATTR, TRIAL_ID_ATTR
from trainables.evaluation.evidence import evidence_table, write_evidence

SPACE = check_space(
    {
        "fixed": {"dataset": "digits", "train_subset": None, "epochs": 1},
        "search": {"lr": {"loguniform": [0.01, 0.1]}},
        "samples": 2,
        "repeats": 3,
    },
    "test",
)
N_TEST, N_VAL, N_SHIFT, CLASSES = 400, 300, 100, 5  # 300 val: enough for every calibrator
SHIFTS = [("fog", 1), ("fog", 3), ("blur", 1), ("blur", 3)]


def _logits(g: torch.Generator, labels: torch.Tensor, sharp: float) -> torch.Tensor:
    logits = torch.randn(len(labels), CLASSES, generator=g)
    logits[torch.arange(len(labels)), labels] += 1.5
    return logits * sharp  # overconfident for large ``sharp``


def _study(root: str, n_val: dict[str, int] | None = None) -> optuna.Study:
    """Two configurations (lr) x three seeds with val (``N_VAL`` samples, or ``n_val[trial
    id]``), test and a corruption split."""
    g = torch.Generator().manual_seed(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for lr, sharp in ((0.01, 1.2), (0.1, 2.5)):
        for seed in range(3):
            trial_id = f"t{lr}-{seed}"
            val = (n_val or {}).get(trial_id, N_VAL)
            for split, n in (("test", N_TEST), ("val", val)):
                labels = torch.randint(0, CLASSES, (n,), generator=g)
                table = evidence_table(
                    _logits(g, labels, sharp), labels, study="p", epoch=1, temperature=1.0
                )
                write_evidence(table, root, trial_id, split, 1)
            labels = torch.randint(0, CLASSES, (N_SHIFT * len(SHIFTS),), generator=g)
            names = np.array([c for c, _ in SHIFTS for _ in range(N_SHIFT)], dtype=object)
            shifted = evidence_table(
                _logits(g, labels, sharp) * 0.5, labels, study="p", epoch=1, temperature=1.0,
                sample_ids=np.tile(np.arange(N_SHIFT), len(SHIFTS)), corruption=names,
                severity=np.repeat(np.array([s for _, s in SHIFTS], dtype=np.int8), N_SHIFT),
            )  # fmt: skip
            write_evidence(shifted, root, trial_id, "cifar10_c", 1)
            study.add_trial(
                optuna.trial.create_trial(
                    params={"lr": lr},
                    distributions={"lr": FloatDistribution(0.01, 0.1, log=True)},
                    values=[0.9, 0.05],
                    user_attrs={
                        STATUS_ATTR: "completed",
                        SETTINGS_ATTR: {"seed": seed},
                        TRIAL_ID_ATTR: trial_id,
                    },
                )
            )
    return study


def _stored(root: str, trial_id: str, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A trial's float16 vectors renormalised, labels and rows, read with pyarrow alone."""
    frame = pads.dataset(f"{root}/trial_id={trial_id}/split={split}").to_table().to_pandas()
    frame = frame.sort_values(["corruption", "severity", "sample_id"], na_position="first")
    probs = np.stack(frame.probs.to_list()).astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True), frame.label.to_numpy(), frame


def _ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [
        abs(confidence[index == b].mean() - correct[index == b].mean()) * (index == b).sum()
        for b in range(bins)
        if (index == b).any()
    ]
    return float(np.sum(gaps) / len(labels))


@pytest.fixture(scope="module")
def recalibrated(tmp_path_factory) -> tuple[str, dict]:
    root = str(tmp_path_factory.mktemp("posthoc") / "p" / "evidence")  # study p's
    confs = comparison_tables(_study(root), SPACE)[0].confs
    notes: list[str] = []
    tables = dict(calibrated_tables(confs, root, ["ts", "vs", "ms", "hb", "iso"], notes))
    assert notes == [] and list(tables) == ["none", "ts", "vs", "ms", "hb", "iso"]
    return root, tables


@pytest.mark.parametrize("name", ["ts", "vs", "ms", "hb", "iso"])
def test_each_calibrator_is_fitted_on_the_trials_val_and_scored_on_its_test_and_shifted_rows(
    recalibrated, name
):
    root, tables = recalibrated
    conf = tables[name].confs[1]
    trial = conf.trials[2]
    pv, yv, _ = _stored(root, trial.user_attrs[TRIAL_ID_ATTR], "val")
    pt, yt, _ = _stored(root, trial.user_attrs[TRIAL_ID_ATTR], "test")
    calibrator = fit_calibrator(name, pv, yv)
    after = calibrator(pt).probs
    assert conf.value(trial, f"test_ece@{name}") == pytest.approx(_ece(after, yt), abs=1e-6)
    accuracy = float((after.argmax(axis=1) == yt).mean())
    assert conf.value(trial, f"test_accuracy@{name}") == pytest.approx(accuracy, abs=1e-9)
    assert conf.value(trial, "test_ece@none") == pytest.approx(_ece(pt, yt), abs=1e-6)
    ps, ys, rows = _stored(root, trial.user_attrs[TRIAL_ID_ATTR], "cifar10_c")
    shifted = calibrator(ps).probs
    cells = {
        key: _ece(shifted[(rows.corruption == key[0]).to_numpy() & (rows.severity == key[1]).to_numpy()],
                  ys[(rows.corruption == key[0]).to_numpy() & (rows.severity == key[1]).to_numpy()])
        for key in SHIFTS
    }  # fmt: skip
    assert conf.value(trial, f"cifar10_c_ece@{name}") == pytest.approx(
        np.mean(list(cells.values())), abs=1e-6
    )
    assert conf.value(trial, f"cifar10_c_s3_ece@{name}") == pytest.approx(
        np.mean([cells["fog", 3], cells["blur", 3]]), abs=1e-6
    )


def test_differences_are_paired_by_seed_after_the_same_calibrator(recalibrated):
    _, tables = recalibrated
    table = tables["iso"]
    paired = paired_table(table.confs, 0, SPACE, table.columns)
    ((conf, diffs),) = paired.rows
    base = table.confs[0]
    diff = [
        conf.value(conf.trials[s], "test_ece@iso") - base.value(base.trials[s], "test_ece@iso")
        for s in range(3)
    ]
    half = scipy.stats.t.ppf(0.975, 2) * np.std(diff, ddof=1) / np.sqrt(3)
    got = diffs["test_ece@iso"]
    assert got.n == 3 and got.mean == pytest.approx(np.mean(diff))
    assert (got.low, got.high) == pytest.approx((np.mean(diff) - half, np.mean(diff) + half))
    text = Comparison([table], calibrated=list(tables.items()),
                      calibrated_paired=[("iso", paired)], paired=paired).render("markdown")  # fmt: skip
    assert "**After isotonic regression, fitted on each trial's val evidence**" in text
    assert "CIFAR-10-C ECE" in text
    nll = diffs["test_nll@iso"].mean
    assert "| NLL |" in text and "NLL (pp)" not in text  # nats, not percentage points
    assert f"{nll:+.4f}" in render_paired(paired, "markdown")
    csv = Comparison([table], calibrated=list(tables.items())).render("csv").splitlines()[0]
    assert "test_nll@ts_mean" in csv and "cifar10_c_ece@iso_std" in csv
    assert "cifar10_c_s3_ece@ts_mean" in csv and "s3 ECE" not in text  # by severity: CSV only


def test_a_trial_without_val_evidence_is_left_out_and_named(tmp_path):
    root = str(tmp_path / "p" / "evidence")
    study = _study(root)
    confs = comparison_tables(study, SPACE)[0].confs
    lost = confs[0].trials[1]
    for path in (
        tmp_path / "p" / "evidence" / f"trial_id={lost.user_attrs[TRIAL_ID_ATTR]}" / "split=val"
    ).iterdir():
        path.unlink()
    notes: list[str] = []
    tables = dict(calibrated_tables(confs, root, ["ts"], notes))
    assert any(f"trial {lost.number}:" in n and "left out" in n for n in notes)
    assert tables["ts"].confs[0].value(lost, "test_ece@ts") is None
    assert len(tables["ts"].confs[0].values("test_ece@ts")) == 2


def test_a_calibrator_fitted_on_too_few_val_samples_is_na_with_a_note(tmp_path):
    """Issue 34, item 10: calibrators fitted on a one-image val split were reported without a
    note (ECE 91% after vector scaling)."""
    root = str(tmp_path / "p" / "evidence")
    small = {"t0.1-0": 1, "t0.1-1": 120}  # 120: enough for TS and VS, not for MS, HB or Iso
    confs = comparison_tables(_study(root, small), SPACE)[0].confs
    one, some, full = confs[1].trials
    notes: list[str] = []
    tables = dict(calibrated_tables(confs, root, ["ts", "vs", "ms", "hb", "iso"], notes))
    enough = {"none", "ts", "vs"}  # for trial ``some``
    one_, some_ = f"trial {one.number} (1 val sample)", f"trial {some.number} (120 val samples)"
    assert notes == [
        f"temperature scaling needs at least 10 val samples (10 per parameter it fits), so it "
        f"is n/a for {one_}",
        f"vector scaling needs at least 90 val samples (10 per parameter it fits), so it is n/a "
        f"for {one_}",
        f"matrix (Dirichlet) scaling needs at least 240 val samples (10 per parameter it fits), "
        f"so it is n/a for {one_}, {some_}",
        f"histogram binning needs at least 150 val samples (10 per parameter it fits), so it is "
        f"n/a for {one_}, {some_}",
        f"isotonic regression needs at least 150 val samples (10 per parameter it fits), so it "
        f"is n/a for {one_}, {some_}",
    ]
    for name, table in tables.items():
        row = table.confs[1]
        assert row.value(one, "test_ece@none") is not None  # before calibration: as stored
        assert (row.value(one, f"test_ece@{name}") is None) == (name != "none"), name
        assert (row.value(some, f"test_ece@{name}") is None) == (name not in enough), name
        assert row.value(full, f"test_ece@{name}") is not None, name
        assert (row.value(one, f"cifar10_c_ece@{name}") is None) == (name != "none"), name
    assert len(tables["ms"].confs[1].values("test_ece@ms")) == 1  # the mean: the full one only


def test_unknown_calibrators_are_refused_in_one_line():
    assert calibrators_arg(["ts", "hb"]) == ["ts", "hb"]
    assert calibrators_arg(None) == []
    with pytest.raises(InputError, match=r"unknown calibrator platt: choose among ts,vs,ms,hb,iso"):
        calibrators_arg("ts,platt")


def test_the_report_section_pairs_after_each_calibrator_and_draws_ece_against_severity(
    tmp_path,
):
    from study.report.sections.posthoc import posthoc_part, severity_curve

    root = str(tmp_path / "p" / "evidence")
    study = _study(root)
    figure = tmp_path / "shift.png"
    assert posthoc_part(study, SPACE, root, None) is None  # no baseline row
    section = posthoc_part(study, SPACE, root, 0)
    assert section is not None
    text, data = section.text, section.data
    section.figures["shift.png"](figure)
    assert text.startswith("## Post-hoc calibration")
    assert "Test smooth ECE after each calibrator:" in text and "| Iso" in text
    assert "*after the same calibrator*" in text and "CIFAR-10-C: ECE averaged" in text
    assert figure.stat().st_size > 10_000 and "![](shift.png)" in text
    # the numbers are the calibrated tables'
    confs = comparison_tables(study, SPACE)[0].confs
    tables = dict(calibrated_tables(confs, root, ["ts", "iso"], []))
    conf = tables["iso"].confs[1]
    mean, _ = conf.mean_std("test_ece@iso")
    assert data["posthoc"]["ece"][conf.label]["test_ece@iso"][0] == pytest.approx(mean)
    paired = data["posthoc"]["paired_ece"][conf.label]["test_ece@ts"]
    base = tables["ts"].confs[0]
    diffs = [conf.value(conf.trials[s], "test_ece@ts") - base.value(base.trials[s], "test_ece@ts")
             for s in range(3)]  # fmt: skip
    assert paired["mean"] == pytest.approx(np.mean(diffs))
    curve = severity_curve(conf, "cifar10_c", "none")
    assert curve[0] == pytest.approx(conf.mean_std("test_ece@none")[0])
    assert np.isnan(curve[2])  # severity 2 was not stored; 1 and 3 were
    assert curve[3] == pytest.approx(data["posthoc"]["cifar10_c"][conf.label]["s3@none"])
