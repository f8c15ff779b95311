"""`study train` as a user runs it: a real subprocess, its table, and one-line errors with exit 2."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.settings import parse_set
from tests.conftest import FAST_TIER_ENV
from trainables.config import ConfigError

DIGITS = ["--set", "dataset=digits", "--set", "train_subset=null", "--set", "device=cpu"]


def run_study(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``study ARGS`` in a subprocess (in ``cwd``, with ``env``), its output captured."""
    if os.environ.get(FAST_TIER_ENV):
        pytest.fail("this test runs `study` in a subprocess: mark it slow")
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def study_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``study ARGS`` run by ``study.cli.main`` in this process, in ``cwd``, its output captured:
    the CLI over the Python API, without a new interpreter (a study stops the local Ray it
    started before it returns)."""
    from study import cli

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["study", *args], code, out.getvalue(), err.getvalue())


@pytest.mark.slow  # a `study` subprocess
def test_study_train_prints_epoch_table_and_test_line(tmp_path):
    proc = run_study("train", *DIGITS, "--set", "epochs=2", "--set", "method=csam", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # issue 17, item 12: no library notices (a new MLflow store's INFO)
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "train_loss"])
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in rows] == ["1", "2"]
    test_line = next(line for line in lines if line.startswith("test:"))
    for word in (
        "accuracy",
        "ece",
        "adaece",
        "smece",
        "overconfidence",
        "nll",
        "brier",
        "ece_ts",
    ):
        assert f" {word} " in test_line


@pytest.mark.slow  # a `study` subprocess
def test_study_train_takes_fixed_settings_from_a_space_file(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(
        "fixed:\n  dataset: digits\n  train_subset: null\n  epochs: 1\n  device: cpu\n"
    )
    proc = run_study("train", "--space", str(space), "--set", "method=sgd", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sgd on digits" in proc.stdout and "1 epochs" in proc.stdout


@pytest.mark.slow  # a `study` subprocess
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "model=resnet9000"], "resnet9000"),
        (["--set", "dataset=imagenet22k"], "imagenet22k"),
        (["--set", "method=adam-sam"], "method"),
        (["--set", "loss=hinge"], "loss"),
        (["--set", "rho=-0.1"], "rho"),
        (["--set", "gamma=2.5"], "gamma"),
        (["--set", "dataset=cifar10", "--set", "data_root=/nonexistent/cifar"], "/nonexistent"),
        (["--set", "rho"], "key=value"),
        (["--set", "epochs=[1"], "epochs"),
        (["--set", "colour=blue"], "unknown key 'colour'"),
        (["--set", "epochs=ten"], "epochs"),
        (["--space", "no-such-space"], "no-such-space"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, args, expected):
    proc = run_study("train", *DIGITS, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_set_values_are_parsed_never_evaluated():
    assert parse_set("rho=0.1") == ("rho", 0.1)
    assert parse_set("train_subset=null") == ("train_subset", None)
    assert parse_set("augment=false") == ("augment", False)
    assert parse_set("model=__import__('os').system('true')") == (
        "model",
        "__import__('os').system('true')",
    )
    with pytest.raises(ConfigError):
        parse_set("=3")


@pytest.mark.parametrize(
    "sets",
    [["loss=adafocal"], ["dropout=0.2", "mc_samples=3"], ["method=bsam", "bsam_samples=2"]],
    ids=["adafocal", "mc_dropout", "bsam"],
)
def test_the_baselines_train_through_study_train(sets, tmp_path, monkeypatch, capsys):
    from study.cli import main

    monkeypatch.chdir(tmp_path)  # its MLflow store
    argv = ["train", *DIGITS, "--set", "epochs=2"]
    for setting in sets:
        argv += ["--set", setting]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test: accuracy" in out and out.count("\n") >= 4
