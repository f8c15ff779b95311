"""Presets, repeats, rerun and compare on real studies (local Ray, Optuna, MLflow on sqlite), run
by the CLI in-process (``study.cli.main.main`` over the Python API)."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
from sklearn.metrics import roc_auc_score

from tests.test_cli import study_in_process as run_study
from tests.test_data import write_cifar10
from tests.test_ood import write_cifar_c, write_svhn_test
from tests.test_study import DIGITS, optuna_study, write_space

pytestmark = pytest.mark.slow

LOSS_LABELS = {"ce": "", "ls": " + LS (ε=0.1)", "focal": " + Focal (γ=3)", "flsd53": " + FLSD-53"}
METHOD_LABELS = {"sgd": "SGD", "sam": "SAM (ρ=0.05)", "asam": "ASAM (ρ=0.05)"}


def _markdown_rows(stdout: str) -> dict[str, list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in cells}


def test_paper_digits_runs_every_method_and_loss_and_compare_prints_them(tmp_path):
    proc = run_study(
        "run", "paper-digits", "--name", "pd", "--set", "epochs=1", "--storage", "studies",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = optuna_study(tmp_path, "pd").trials
    assert len(trials) == 18 and all(t.user_attrs["status"] == "completed" for t in trials)

    shown = run_study("compare", "pd", "--storage", "studies", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = _markdown_rows(shown.stdout)
    expected = {METHOD_LABELS[m] + LOSS_LABELS[loss] for m in METHOD_LABELS for loss in LOSS_LABELS}
    assert set(rows) == expected | {
        "CSAM (ρ=0.05, γ=1)",
        "SGD + MC dropout (p=0.2, 10 passes)",
        "SGD + AdaFocal",
        "bSAM (ρ=0.01) [lr=0.5]",
        "SGD + MIMO (M=3, b=4)",
        "SGD + Rank-1 BNN (Gaussian, M=4)",
    }
    by_label = {r["configuration"]: r for r in _csv(tmp_path, "pd")}
    for trial in trials:
        label = next(k for k, r in by_label.items() if r["trial_numbers"] == str(trial.number))
        assert by_label[label]["trials"] == "1"  # a count (issue 17, item 7)
        assert float(by_label[label]["test_ece_mean"]) == pytest.approx(
            100 * trial.user_attrs["test_ece"], rel=1e-5
        )  # percent, as the Markdown table
        assert rows[label][2].strip("*") == f"{100 * trial.user_attrs['test_ece']:.2f}"
    best_ece = min(by_label.values(), key=lambda r: float(r["test_ece_mean"]))
    assert "test_ece" in best_ece["best"].split()
    assert rows[best_ece["configuration"]][2].startswith("**")

    latex = run_study("compare", "pd", "--storage", "studies", "--format", "latex", cwd=tmp_path)
    assert latex.stdout.startswith(r"\begin{tabular}") and r"\textbf{" in latex.stdout
    assert r"CSAM ($\rho$=0.05, $\gamma$=1)" in latex.stdout


def _csv(tmp_path: Path, name: str) -> list[dict[str, str]]:
    proc = run_study("compare", name, "--storage", "studies", "--format", "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return list(csv.DictReader(io.StringIO(proc.stdout)))


def test_repeats_run_each_configuration_with_seeds_and_rerun_reproduces_the_best(tmp_path):
    space = write_space(
        tmp_path,
        fixed={"epochs": 1, "method": "sam", "data_seed": 0},  # both seeds on the same val split
        search={"lr": {"loguniform": [0.02, 0.2]}},
        samples=2,
        repeats=2,
        sampler="random",
    )
    proc = run_study("run", str(space), "--name", "rep", "--storage", "studies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = optuna_study(tmp_path, "rep").trials
    assert len(trials) == 4
    by_lr: dict[float, list[int]] = {}
    for trial in trials:
        by_lr.setdefault(trial.params["lr"], []).append(_seed(trial))
    assert len(by_lr) == 2 and all(sorted(seeds) == [0, 1] for seeds in by_lr.values())

    rows = _csv(tmp_path, "rep")
    assert [r["seeds"] for r in rows] == ["2", "2"]
    for row in rows:
        values = [
            t.user_attrs["test_accuracy"]
            for t in trials
            if str(t.number) in row["trial_numbers"].split()
        ]
        mean = sum(values) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in values))  # ddof=1 with two values
        assert float(row["test_accuracy_mean"]) == pytest.approx(100 * mean, rel=1e-5)
        assert float(row["test_accuracy_std"]) == pytest.approx(100 * std, rel=1e-4, abs=1e-5)

    paired = run_study("compare", "rep", "--storage", "studies", "--baseline", "1", cwd=tmp_path)
    assert paired.returncode == 0, paired.stderr
    (row,) = [line for line in paired.stdout.splitlines()[-3:] if line.startswith("| ")][-1:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2"  # two seeds paired: an interval in each difference cell
    assert len(cells) == 5 and all(" [" in c and c.strip("*").endswith("]") for c in cells[2:])
    shown = run_study("compare", "rep", "--storage", "studies", "--ensembles", cwd=tmp_path)
    ensembles = {k: v for k, v in _markdown_rows(shown.stdout).items() if "ensemble x 2" in k}
    assert len(ensembles) == 2
    header = next(line for line in shown.stdout.splitlines() if line.startswith("| "))
    t_column = [c.strip() for c in header.strip("|").split("|")].index("T") - 1
    assert all(float(cells[t_column]) > 0 for cells in ensembles.values())  # val shared: a T
    evidence = pads.dataset(tmp_path / "studies" / "rep" / "evidence", partitioning="hive")
    frame = evidence.to_table(filter=pc.field("split") == "test").to_pandas()
    for row in rows:  # the ensemble's accuracy, recomputed from the Parquet evidence
        ids = [
            t.user_attrs["tune_trial_id"]
            for t in trials
            if str(t.number) in row["trial_numbers"].split()
        ]
        probs = [
            np.stack(frame[frame.trial_id == i].sort_values("sample_id").probs.to_list())
            for i in ids
        ]
        labels = frame[frame.trial_id == ids[0]].sort_values("sample_id").label.to_numpy()
        mean = np.mean(
            [p.astype(np.float64) / p.astype(np.float64).sum(1, keepdims=True) for p in probs],
            axis=0,
        )
        accuracy = f"{100 * (mean.argmax(1) == labels).mean():.2f}"
        assert ensembles[f"{row['configuration']} ensemble x 2"][1].strip("*") == accuracy
    bad = run_study("compare", "rep", "--storage", "studies", "--baseline", "x", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "names no row" in bad.stderr

    again = run_study(
        "rerun", "rep", "--top", "1", "--seeds", "2", "--storage", "studies", cwd=tmp_path
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    twice = run_study("rerun", "rep", "--top", "1", "--storage", "studies", cwd=tmp_path)
    assert twice.returncode == 2 and "--new-name" in twice.stderr  # issue 17, item 5
    reruns = optuna_study(tmp_path, "rep-rerun").trials
    best_lr = max(by_lr, key=lambda lr: _mean_score(trials, lr))
    assert {t.params["lr"] for t in reruns} == {best_lr}
    assert sorted(_seed(t) for t in reruns) == [0, 1]
    # Training is deterministic on CPU: the rerun of a seed reproduces the original trial.
    for rerun in reruns:
        seed = _seed(rerun)
        (original,) = [t for t in trials if t.params["lr"] == best_lr and _seed(t) == seed]
        assert rerun.user_attrs["test_ece"] == original.user_attrs["test_ece"]


def _seed(trial) -> int:
    """A trial's seed: set by a repeat (or a rerun's point), else the space's (0)."""
    return trial.user_attrs.get("settings", {}).get("seed", 0)


def _mean_score(trials, lr: float) -> float:
    scores = [t.values[0] - t.values[1] for t in trials if t.params["lr"] == lr]
    return sum(scores) / len(scores)


def test_rerun_of_a_missing_study_and_a_bad_preset_fail_with_one_line(tmp_path):
    proc = run_study("rerun", "nope", "--storage", "studies", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope" in proc.stderr
    space = write_space(tmp_path, fixed={"epochs": 1}, points=[{"method": "sam", "rhoo": 0.1}])
    bad = run_study("run", str(space), "--name", "bad", "--storage", "studies", cwd=tmp_path)
    assert bad.returncode == 2 and "'points.0.rhoo': unknown setting" in bad.stderr
    assert not (tmp_path / "studies" / "bad").exists()


def test_study_with_an_ood_section_reports_svhn_and_cifar10_c(tmp_path):
    data = write_cifar10(tmp_path / "cifar10", per_batch=8, n_test=20)
    svhn = write_svhn_test(tmp_path / "svhn")
    corrupted = write_cifar_c(tmp_path / "CIFAR-10-C", corruptions=("fog", "snow"), per_severity=4)
    fixed = {**DIGITS, "dataset": "cifar10", "data_root": str(data), "epochs": 1}
    fixed.update(batch_size=8, val_fraction=0.25, method="sam")
    space = write_space(
        tmp_path,
        fixed=fixed,
        points=[{"method": "sgd"}, {"method": "sam"}],
        ood={"svhn": {"root": str(svhn)}, "cifar10_c": {"root": str(corrupted)}},
        sampler="random",
    )
    proc = run_study("run", str(space), "--name", "ood", "--storage", "studies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    evidence = pads.dataset(tmp_path / "studies" / "ood" / "evidence", partitioning="hive")
    stored = evidence.to_table(columns=["trial_id", "split", "epoch", "confidence"]).to_pandas()
    for trial in optuna_study(tmp_path, "ood").trials:
        mine = stored[stored.trial_id == trial.user_attrs["tune_trial_id"]]
        mine = mine[mine.epoch == mine.epoch.max()]
        test, svhn = (mine[mine.split == s].confidence.to_numpy() for s in ("test", "ood_svhn"))
        truth = np.r_[np.ones(len(test)), np.zeros(len(svhn))]  # in-distribution is positive
        expected = roc_auc_score(truth, np.r_[test, svhn])  # from the float32 confidences
        assert trial.user_attrs["ood_svhn_auroc"] == pytest.approx(expected, abs=1e-9)
        assert 0.0 <= trial.user_attrs["cifar10_c_ece"] <= 1.0
    table = evidence.to_table(columns=["split", "corruption", "severity"])
    per_trial = {k: n // 2 for k, n in Counter(table["split"].to_pylist()).items()}
    assert per_trial["ood_svhn"] == 40 and per_trial["cifar10_c"] == 2 * 5 * 4
    c_rows = table.filter(pc.equal(table["split"], "cifar10_c"))
    assert set(c_rows["corruption"].to_pylist()) == {"fog", "snow"}

    shown = run_study("compare", "ood", "--storage", "studies", cwd=tmp_path)
    assert shown.returncode == 0 and "SVHN AUROC (%)" in shown.stdout
    assert "CIFAR-10-C acc (%)" in shown.stdout
    report = (tmp_path / "studies" / "ood" / "report" / "report.md").read_text()
    assert "SVHN AUROC" in report


def test_an_ood_section_with_missing_files_stops_the_study_before_ray(tmp_path):
    space = write_space(
        tmp_path,
        fixed={**DIGITS, "dataset": "cifar10", "data_root": str(tmp_path)},
        ood={"svhn": {"root": str(tmp_path / "nowhere")}},
    )
    proc = run_study("run", str(space), "--name", "x", "--storage", "studies", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "nowhere" in proc.stderr
    assert not (tmp_path / "studies" / "x").exists()
