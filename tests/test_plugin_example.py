"""Issue 35 item 6, the worked example: the plugin module of the manual's "Extending sharpcal"
page (tests/plugin_example/sharpcal_example.py) adds a dataset, a model, a method, a metric, a
calibrator and a report section; a study naming it runs on the local Ray (its workers import the
file shipped with the job), and status, compare --calibrators, the report and the manual's
generated tables show the parts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sklearn.datasets import load_digits

from tests.test_cli import run_study

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parent / "plugin_example" / "sharpcal_example.py"
ROOT = Path(__file__).resolve().parents[1]


def write_npy_folder(root: Path) -> Path:
    """scikit-learn's digits as the example dataset's four arrays (8x8 grey, 0-255)."""
    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * 16).clip(0, 255).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1400], order[1400:]
    root.mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        np.save(root / f"{split}_x.npy", x[rows])
        np.save(root / f"{split}_y.npy", y[rows].astype(np.int64))
    return root


def manual_space() -> dict:
    """The space file of the manual's worked example, as the page shows it."""
    page = (ROOT / "docs" / "guide" / "extending.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, flags=re.S)
    (block,) = [b for b in blocks if "example_npy" in b]
    data = yaml.safe_load(block)
    assert data["plugins"] == ["tests/plugin_example/sharpcal_example.py"]
    return data


def test_the_worked_example_runs_on_ray_and_every_surface_shows_its_parts(tmp_path):
    npy = write_npy_folder(tmp_path / "npy")
    space_dir = tmp_path / "space"
    space_dir.mkdir()
    (space_dir / "sharpcal_example.py").write_text(EXAMPLE.read_text())
    space = space_dir / "example.yaml"
    data = manual_space()
    data["plugins"] = ["./sharpcal_example.py"]
    data["fixed"]["data_root"] = str(npy)
    data |= {"concurrency": 1, "scheduler": "none", "seed": 3, "resources": {"cpu": 1, "gpu": 0}}
    space.write_text(yaml.safe_dump(data))
    work = tmp_path / "work"  # the study runs from elsewhere: the plugin is found by the space
    work.mkdir()
    proc = run_study("run", str(space), "--name", "ex", "--storage", "studies", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    study = optuna.load_study(
        study_name="ex", storage=f"sqlite:///{work / 'studies' / 'ex' / 'optuna.db'}"
    )
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2  # the workers knew the method, model, dataset and metric
    mixes = sorted(t.params["mix"] for t in complete)
    assert mixes[0] != mixes[1]
    for trial in complete:
        assert 0 <= trial.user_attrs["test_rmsce"] <= 1
        assert trial.user_attrs["val_accuracy"] > 0.5  # digits from the .npy folder learn

    status = run_study("status", "ex", "--storage", "studies", "--address", "none", cwd=work)
    assert status.returncode == 0, status.stderr
    assert "2/2 trials finished" in status.stdout, status.stdout
    header = next(line for line in status.stdout.splitlines() if line.startswith("trial "))
    assert {"mix", "val_rmsce", "test_rmsce"} <= set(header.split()), header

    compare = run_study(
        "compare", "ex", "--storage", "studies", "--calibrators", "ts,uniform_mix", cwd=work
    )
    assert compare.returncode == 0, compare.stdout[-2000:] + compare.stderr[-2000:]
    assert "MixSAM" in compare.stdout and "RMSCE" in compare.stdout, compare.stdout
    assert "After mix with uniform" in compare.stdout, compare.stdout

    report = work / "studies" / "ex" / "report"
    text = (report / "report.md").read_text()
    assert "## RMS calibration error" in text and "rmsce.png" in text
    assert (report / "rmsce.png").is_file()

    # the manual's generated tables, built with the plugin loaded, list every part of it
    script = (
        "import importlib.util, sys\n"
        "from trainables.plugins import load_plugins\n"
        f"load_plugins([{str(EXAMPLE)!r}])\n"
        f"spec = importlib.util.spec_from_file_location('hooks', {str(ROOT / 'docs/hooks.py')!r})\n"
        "hooks = importlib.util.module_from_spec(spec); spec.loader.exec_module(hooks)\n"
        "print(hooks.registries_section()); print(hooks.settings_table())\n"
        "print(hooks.objectives_table())\n"
    )
    tables = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert tables.returncode == 0, tables.stderr[-2000:]
    for name in ("example_npy", "example_mlp", "mixsam", "rmsce", "uniform_mix", "rmsce_by_trial"):
        assert f"`{name}`" in tables.stdout, name
    assert "`sharpcal_example`" in tables.stdout  # the origin column names the plugin
    assert "`mix`" in tables.stdout and "`val_rmsce`" in tables.stdout
