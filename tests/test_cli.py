"""`study train` as a user runs it: a real subprocess, its table, and one-line errors with exit 2."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.cli.settings import parse_set
from tests.conftest import FAST_TIER_ENV
from trainables.errors import InputError

DIGITS = ["--set", "dataset=digits", "--set", "train_subset=null", "--set", "device=cpu"]


def run_study(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``study ARGS`` in a subprocess (in ``cwd``, with ``env``), its output captured. One
    still running after ``timeout`` seconds fails the test with every thread's stack (``study``
    prints them on SIGUSR2)."""
    if os.environ.get(FAST_TIER_ENV):
        pytest.fail("this test runs `study` in a subprocess: mark it slow")
    with subprocess.Popen(
        [sys.executable, "-m", "study", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR2)
            time.sleep(5)
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(
                f"`study {' '.join(args)}` still running after {timeout} s; its output, then "
                f"its threads' stacks:\n{out[-3000:]}\n{err[-12000:]}"
            )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def study_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``study ARGS`` run by ``study.cli.main.main`` in this process, in ``cwd``, its output captured:
    the CLI over the Python API, without a new interpreter (a study stops the local Ray it
    started before it returns)."""
    import importlib

    cli = importlib.import_module("study.cli.main")  # the package's ``main`` is the function

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
def test_sigusr2_prints_every_threads_stack_and_the_command_goes_on(tmp_path):
    """`kill -USR2` on a `study` that seems stuck prints where each thread is, on stderr, and
    the command carries on (here: to its normal end)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "train", *DIGITS, "--set", "epochs=4"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    while "epoch" not in proc.stdout.readline():  # the table's header: training has begun
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Current thread" in err and 'File "' in err, err[-3000:]
    assert "\ntest:" in out  # the run's test line: it went on to its end


@pytest.mark.slow  # a `study` subprocess
def test_study_train_takes_fixed_settings_from_a_space_file(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(
        "fixed:\n  dataset: digits\n  train_subset: null\n  epochs: 1\n  device: cpu\n"
    )
    proc = run_study("train", "--space", str(space), "--set", "method=sgd", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sgd on digits" in proc.stdout and ", 1 epoch," in proc.stdout


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
    with pytest.raises(InputError):
        parse_set("=3")


def _train(tmp_path: Path, *args: str) -> tuple[dict[str, float], dict[str, str], str]:
    """``study train ARGS`` in this process, its MLflow store in ``tmp_path``: the test line's
    numbers, the MLflow run's params and everything printed."""
    from mlflow.tracking import MlflowClient

    from study.cli.main import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", *args, "--tracking-uri", uri]) == 0
    text = out.getvalue()
    test_line = next(line for line in text.splitlines() if line.startswith("test:"))
    words = test_line.removeprefix("test:").split()
    numbers = {k: float(v) for k, v in zip(words[:-2:2], words[1:-2:2])}
    run_id = text.rsplit("mlflow run ", 1)[1].split()[0]
    run = MlflowClient(uri).get_run(run_id)
    # the artifacts beside the store, not in the working directory's mlruns
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").resolve().as_uri())
    return numbers, run.data.params, text


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """The test line of the plain run the baselines are compared with."""
    numbers, params, _ = _train(tmp_path_factory.mktemp("ce"), *DIGITS, "--set", "epochs=2")
    assert params["loss"] == "ce" and params["method"] == "sam"
    return numbers


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["loss=adafocal"], {"loss": "adafocal"}),
        (["dropout=0.2", "mc_samples=3"], {"dropout": "0.2", "mc_samples": "3"}),
        (["method=bsam", "bsam_samples=2"], {"method": "bsam", "bsam_samples": "2"}),
        (["mimo=3"], {"mimo": "3"}),
        (["rank1=4"], {"rank1": "4"}),
    ],
    ids=["adafocal", "mc_dropout", "bsam", "mimo", "rank1"],
)
def test_the_baselines_train_through_study_train(sets, expected, tmp_path, ce_run):
    """Each baseline's setting reaches the run (its MLflow params, the header) and changes the
    result: a train that ignored ``loss=adafocal`` would match the plain run."""
    argv = [*DIGITS, "--set", "epochs=2"]
    for setting in sets:
        argv += ["--set", setting]
    numbers, params, out = _train(tmp_path, *argv)
    assert {k: params[k] for k in expected} == expected
    assert f"loss {params['loss']}," in out and f"study train: {params['method']} on " in out
    assert set(numbers) == set(ce_run) and numbers != ce_run


@pytest.mark.slow  # trains twice (seconds) and reads a real SVHN-shaped .mat
def test_study_train_takes_a_spaces_top_level_ood_section(tmp_path):
    """Issue 22, item 2: ``study train --space`` read the raw ``fixed:`` and dropped ``ood:``."""
    import numpy as np
    import scipy.io

    from study.api.train import train_config
    from trainables.config import OodSettings, SvhnSettings

    svhn = tmp_path / "svhn"
    svhn.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, 32, 3, 40), dtype=np.uint8)
    scipy.io.savemat(svhn / "test_32x32.mat", {"X": images, "y": rng.integers(1, 11, (40, 1))})
    space = tmp_path / "ood.yaml"
    space.write_text(
        "fixed:\n  dataset: synthetic\n  synthetic_size: 64\n  model: cnn\n  epochs: 1\n"
        "  batch_size: 32\n  device: cpu\n  train_subset: null\n"
        f"ood:\n  svhn:\n    root: {svhn}\n"
    )
    assert train_config(space).ood == OodSettings(svhn=SvhnSettings(root=str(svhn)))
    numbers, params, out = _train(tmp_path, "--space", str(space))
    assert params["ood.svhn.root"] == str(svhn)
    (ood_line,) = [line for line in out.splitlines() if line.startswith("ood:")]
    auroc = float(ood_line.split("ood_svhn_auroc ")[1].split()[0])
    assert 0.0 <= auroc <= 1.0
    assert "ood" not in train_config(space, {"ood": None}).model_dump(exclude_none=True)


@pytest.mark.slow  # a study on a real local Ray (one trial)
def test_a_run_header_says_a_set_took_a_key_out_of_the_search(tmp_path):
    """Issue 22, item 9: the run's header says what the dry run says, the saved space.yaml marks
    its description and keeps no schema nulls, and the trial line names the method."""
    import yaml

    space = tmp_path / "lr.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "description": "searches lr",
                "fixed": {"dataset": "digits", "train_subset": None, "model": "cnn", "epochs": 1},
                "search": {"lr": {"loguniform": [0.01, 0.1]}, "rho": {"uniform": [0.01, 0.1]}},
                "samples": 1,
                "concurrency": 1,
            }
        )
    )
    proc = study_in_process(
        "run", str(space), "--name", "lr", "--set", "lr=0.05", "--set", "device=cpu", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"study lr: 1 configuration = 1 trial, 1 at a time (space {space})"
    assert lines[1] == "  note: --set lr fixes lr=0.05: it is no longer searched"
    (started,) = [line for line in lines if " started " in line]
    assert started.split("started", 1)[1].split()[0] == "method=sam"
    saved = yaml.safe_load((tmp_path / "studies" / "lr" / "space.yaml").read_text())
    assert saved["description"] == "searches lr (overridden: lr=0.05, device=cpu)"
    assert saved["fixed"]["train_subset"] is None and saved["fixed"]["lr"] == 0.05
    assert saved["search"] == {"rho": {"uniform": [0.01, 0.1], "when": {}}}
