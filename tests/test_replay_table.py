"""Issue 23, item 3: a study's learning curves as one table (bench/replay_table.py) — every
epoch's val and test metrics with ``test_every_epoch``, read back from what the trials reported."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

from search_spaces.schema import load_space
from tests.test_study import api_study  # noqa: F401  (a fixture)
from trainables.config import parse_config
from trainables.engine.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _replay_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "replay_table", ROOT / "bench" / "replay_table.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_test_every_epoch_reports_test_metrics_before_the_last_epoch(digits_settings):
    cfg = parse_config({**digits_settings, "epochs": 2, "test_every_epoch": True})
    history = Trainer(cfg).fit().history
    assert 0 < history[0]["test_accuracy"] <= 1 and history[0]["temperature"] > 0
    plain = Trainer(parse_config({**digits_settings, "epochs": 2})).fit().history
    assert "test_accuracy" not in plain[0]


def test_the_bundled_grid_is_the_default_space_over_105_configurations():
    grid, default = load_space("table-default"), load_space("default")
    assert len(grid.points) == 105 and grid.repeats == 3 and grid.scheduler == "none"
    fixed = {k: v for k, v in grid.fixed.items() if k not in ("data_seed", "test_every_epoch")}
    assert fixed == default.fixed
    methods = [p["method"] for p in grid.points]
    assert (methods.count("sgd"), methods.count("sam"), methods.count("csam")) == (5, 20, 80)


def test_the_second_grid_lies_in_its_searched_space():
    grid, space = load_space("table-cnn-focal"), load_space("cnn-focal")
    assert len(grid.points) == 22 and grid.repeats == 2 and grid.scheduler == "none"
    fixed = {k: v for k, v in grid.fixed.items() if k not in ("data_seed", "test_every_epoch")}
    assert fixed == space.fixed and grid.train_config().epochs == 12
    for point in grid.points:
        for name, value in point.items():
            search = space.search[name]
            if search.kind == "categorical":
                assert value in search.categorical, point
            else:
                low, high = search.bounds
                assert low <= value <= high, point
        assert ("focal_gamma" in point) == (point["loss"] == "focal"), point
    losses = {(p["method"], p["loss"]) for p in grid.points}
    assert losses == {
        ("sgd", "ce"),
        ("sgd", "focal"),
        ("sam", "ce"),
        ("sam", "focal"),
        ("csam", "ce"),
    }


@pytest.mark.slow
def test_a_study_becomes_one_row_per_trial_and_epoch(request, tmp_path):
    study = request.getfixturevalue("api_study")(
        "grid",
        fixed={"epochs": 2, "test_every_epoch": True, "data_seed": 0},
        points=[{"method": "sgd", "lr": 0.05}, {"method": "sam", "lr": 0.05, "rho": 0.05}],
        repeats=2,
        concurrency=2,
    )
    study.run()
    table = _replay_table().study_table("grid", str(tmp_path / "studies")).to_pylist()
    assert len(table) == 2 * 2 * 2  # configurations x seeds x epochs
    assert {(r["method"], r["seed"]) for r in table} == {
        ("sgd", 0), ("sgd", 1), ("sam", 0), ("sam", 1),
    }  # fmt: skip
    assert len({r["config"] for r in table}) == 2
    # the settings the points vary, read from the space; nothing named that the space does not vary
    varied = [k for k in table[0] if k in ("method", "lr", "rho", "gamma", "seed")]
    assert varied == ["method", "lr", "rho", "seed"]
    for row in table:
        metrics = [v for k, v in row.items() if k.startswith(("val_", "test_"))]
        assert len(metrics) == 18 and all(math.isfinite(v) for v in metrics), row
        assert row["train_loss"] > 0 and row["temperature"] > 0, row
        accuracy_gap = row["val_overconfidence"] + row["val_accuracy"]  # mean confidence
        assert 0 < accuracy_gap <= 1, row
        assert 0 < row["epoch_seconds"] < row["wall_seconds"]
    trials = {t.number: t for t in study.optuna().get_trials()}
    for row in (r for r in table if r["epoch"] == 2):  # the last epoch is what Optuna recorded
        attrs = trials[row["trial"]].user_attrs
        assert row["test_accuracy"] == attrs["test_accuracy"]
        assert row["val_ece_ts"] == attrs["val_ece_ts"]
