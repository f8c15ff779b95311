"""Issue 27, items 1 and 2: a study resumes only where it is, and SIGTERM stops it as Ctrl-C does.

A study killed mid-run and copied elsewhere (``cp -a``) resumes in place (untracked) or is
refused in one line (tracked: its MLflow runs belong to the original), and the original's files
stay byte-identical either way; a renamed study directory is refused; a moved one (``mv``)
resumes where it is and nothing reappears where it was. SIGTERM ends the driver with exit code
130, the "interrupted ... study resume" line and a partial report, and the resume then finishes
with exactly ``samples`` trials. Real Ray, a `study` subprocess, trials
held by ``trainables/hold.py`` so the kill points do not depend on the machine's speed.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.test_cli import run_study
from tests.test_study import interrupt_second_trial, write_space

pytestmark = pytest.mark.slow

LR = {"lr": {"loguniform": [0.02, 0.2]}}


def file_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def states(root: Path, name: str) -> list[TrialState]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")
    return [t.state for t in study.get_trials(deepcopy=False)]


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


def stop_while_held(tmp_path: Path, space: Path, name: str) -> None:
    """`study run` with its second trial held after epoch 1, stopped there by SIGTERM (exit
    130, interrupted with one trial finished)."""
    err = interrupt_second_trial(tmp_path, space, name, signal.SIGTERM)
    assert "SIGTERM received" not in err and "Aborted" not in err
    assert "interrupted: 1 of 3 trials finished" in err and f"study resume {name}" in err


def test_sigterm_stops_a_study_whose_copy_then_resumes_without_touching_it_and_so_does_it_moved(
    tmp_path,
):
    """One stopped study for both (each resume costs a Ray start): its copy resumes in place,
    then the original, moved, resumes where it is."""
    path = write_space(tmp_path, fixed={"epochs": 2}, search=LR, samples=3, concurrency=1, seed=4)
    # concurrency 1: trial 1 finished, trial 2 held after epoch 1 when the driver is stopped
    # (SIGTERM: it stops its Ray, so no trial of it can write into the original afterwards)
    stop_while_held(tmp_path, path, "cp")
    original = tmp_path / "studies" / "cp"
    report = (original / "report" / "report.md").read_text()
    assert "**Partial report:** 1 of 3 trials finished" in report
    assert states(original, "cp") == [TrialState.COMPLETE, TrialState.RUNNING]
    before = file_hashes(original)
    copy = tmp_path / "other" / "cp"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)

    # Tracked, the copy would log into the original's MLflow runs and artifacts: refused.
    line = one_line(run_study("resume", "cp", "--storage", "other", cwd=tmp_path))
    assert "copied or moved from" in line and str(original) in line and "mlflow.json" in line
    assert file_hashes(original) == before

    # A renamed copy (space.yaml still says name: cp) is refused; nothing of it is written.
    renamed = tmp_path / "other" / "renamed"
    subprocess.run(["cp", "-a", str(copy), str(renamed)], check=True)
    renamed_before = file_hashes(renamed)
    line = one_line(run_study("resume", "renamed", "--storage", "other", cwd=tmp_path))
    assert "'renamed'" in line  # refused: by its Optuna database or by its space.yaml's name
    assert file_hashes(renamed) == renamed_before

    (copy / "mlflow.json").unlink()
    proc = run_study("resume", "cp", "--storage", "other", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "interrupted" not in proc.stderr
    assert file_hashes(original) == before  # not one byte of the original changed
    assert states(copy, "cp") == [TrialState.COMPLETE] * 3
    assert (copy / "report" / "report.md").is_file()
    evidence = {p.name for p in (copy / "evidence").iterdir()}
    assert len(evidence) == 3  # every trial's evidence is in the copy

    # Moved (mv): tracked, it is refused as a copy is; untracked, it resumes where it is now and
    # nothing is written where it was.
    moved = tmp_path / "moved" / "cp"
    moved.parent.mkdir()
    original.rename(moved)
    line = one_line(run_study("resume", "cp", "--storage", "moved", cwd=tmp_path))
    assert "copied or moved from" in line and str(original) in line
    (moved / "mlflow.json").unlink()
    proc = run_study("resume", "cp", "--storage", "moved", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert states(moved, "cp") == [TrialState.COMPLETE] * 3
    assert len(list((moved / "evidence").iterdir())) == 3
    assert not original.exists()  # nothing was recreated at the old place
