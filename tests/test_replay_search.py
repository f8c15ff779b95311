"""Issue 23, item 4: the search-efficiency replay (bench/replay_search.py) on a small made-up
table of the default space — the simulator's bookkeeping, not the benchmark's figures."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from search_spaces.schema import load_space

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 20


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def made_up_table(seed: int = 0) -> pd.DataFrame:
    """The default space's methods on a 3-lr x 2-rho x 2-gamma grid, 3 seeds, 20 epochs: accuracy
    grows with lr, ECE falls with rho and gamma (a front to find), SAM's epochs twice SGD's."""
    rng = np.random.default_rng(seed)
    configs = [("sgd", lr, None, None) for lr in (0.03, 0.067, 0.15)]
    configs += [("sam", lr, rho, None) for lr in (0.03, 0.067, 0.15) for rho in (0.02, 0.3)]
    configs += [
        ("csam", lr, rho, g) for lr in (0.03, 0.067, 0.15) for rho in (0.02, 0.3) for g in (0, 2)
    ]
    rows = []
    for (config, (method, lr, rho, gamma)), s in itertools.product(enumerate(configs), range(3)):
        acc = 0.80 + 0.4 * lr - 0.05 * (rho or 0) - 0.01 * (gamma or 0)
        ece = 0.06 - 0.08 * (rho or 0) - 0.015 * (gamma or 0) + 0.1 * lr
        train = 0.0
        for epoch in range(1, EPOCHS + 1):
            grown = 1 - np.exp(-epoch / 4)
            seconds = (1.0 if method == "sgd" else 2.0) * rng.uniform(0.9, 1.1)
            train += seconds
            row = {
                "config": config, "trial": 3 * config + s, "epoch": epoch, "method": method,
                "lr": lr, "rho": rho, "gamma": gamma, "seed": s,
                "epoch_seconds": seconds, "train_seconds": train,
            }  # fmt: skip
            for split in ("val", "test"):
                row[f"{split}_accuracy"] = acc * grown + rng.normal(0, 0.005)
                row[f"{split}_ece"] = max(0.001, ece + 0.1 * (1 - grown) + rng.normal(0, 0.003))
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def replay() -> ModuleType:
    return _bench("replay_search")


@pytest.fixture(scope="module")
def table(replay):
    return replay.ReplayTable(made_up_table(), load_space("default"))


def test_snapping_takes_each_setting_to_its_nearest_grid_value_on_its_scale(table):
    settings = table.settings
    config = table.snap({"method": "csam", "lr": 0.05, "rho": 0.07, "gamma": 1.2})
    # lr 0.05 is nearer 0.067 than 0.03 in log (not in linear); rho 0.07 nearer 0.02 in log
    assert settings.loc[config].tolist() == ["csam", 0.067, 0.02, 2.0]
    assert settings.loc[table.snap({"method": "sgd", "lr": 0.1, "rho": 0.2})].method == "sgd"


def test_the_oracle_is_the_front_of_configuration_means_and_the_reference_fixed_from_the_table(
    table,
):
    assert table.oracle["val"] > 0 and table.oracle["test"] > 0
    assert len(table.oracle_configs) >= 2  # a trade-off to find
    finals = np.array([table.curve(c, 0)[1][-1] for c in table.oracle_configs])
    assert np.all(finals < np.array(table.reference))  # every oracle configuration adds volume
    assert table.full_trial_seconds == pytest.approx(20 * (3 + 2 * 18) / 21, rel=0.05)


@pytest.mark.parametrize("asha", [False, True])
def test_a_replay_spends_the_budget_ends_trials_and_approaches_the_oracle(replay, table, asha):
    run = replay.sharpcal_contender("tpe", asha=asha)
    budget = 30 * table.full_trial_seconds
    reports = run(table, 2, budget, 0)
    compute = [r.compute for r in reports]
    assert compute == sorted(compute) and budget <= compute[-1] < budget + 3
    times = [r.time for r in reports]
    assert times == sorted(times) and times[-1] == pytest.approx(compute[-1] / 2, rel=0.1)
    ended = [r for r in reports if r.ended]
    epochs = [r.epoch for r in ended]
    if asha:  # stopped at rungs 1, 3 or 9, most of them at the first
        assert set(epochs) - {1, 3, 9, EPOCHS} == set() and epochs.count(1) > len(epochs) / 2
    else:
        assert set(epochs) == {EPOCHS}
    curve = replay.hypervolume_curve(reports, table, np.array([1.0, 10.0, 30.0]))
    assert np.all(np.diff(curve["val"]) >= 0) and 0.5 < curve["val"][-1] <= 1.1
    assert 0 < curve["test"][-1] <= 1.1


def test_a_two_replay_smoke_of_the_benchmark_with_syne_tune_beside(replay, table, tmp_path):
    out = tmp_path / "replay.json"
    names = ["random+asha", "random+asha:2", "st-moasha"]  # :2, a grace period of 2 epochs
    results = replay.run_benchmark(table, names, [2], 2, 10.0, out=out)
    for name in ("random+asha@2", "st-moasha@2"):
        run = results["runs"][name]
        assert len(run["val"]["mean"]) == 20 and 0 < run["val"]["auc"] <= 1.1
        assert run["trials_ended"] > 10  # both stop trials at rungs: more than 10 in 10 budgets
    assert "| random+asha | 2 | 2 |" in replay.markdown_table(results)
    lines = replay.goal_lines(results, asha="random+asha", full="random+asha:2")
    assert len(lines) == 2 and lines[1].startswith("K=2 test: random+asha no worse than st-moasha")
    replay.plot(results, tmp_path / "replay.png")
    assert (tmp_path / "replay.png").stat().st_size > 10_000
    # a second run with the same table keeps what the first measured and reruns nothing
    again = replay.run_benchmark(table, ["random+asha"], [2], 2, 10.0, out=out)
    assert again["runs"]["random+asha@2"]["seconds"] == results["runs"]["random+asha@2"]["seconds"]


def test_a_table_with_a_failed_trial_snaps_to_a_neighbour_and_draws_the_seeds_it_has(replay):
    frame = made_up_table()
    gone = frame[(frame.method == "csam") & (frame.lr == 0.067) & (frame.rho == 0.02)]
    gone = gone[gone.gamma == 2.0].config.iloc[0]  # every seed of one configuration failed
    frame = frame[frame.config != gone]
    frame = frame[~((frame.config == 0) & (frame.seed == 1))]  # one seed of another
    table = replay.ReplayTable(frame, load_space("default"))
    config = table.snap({"method": "csam", "lr": 0.05, "rho": 0.07, "gamma": 1.2})
    assert config != gone and table.settings.loc[config].method == "csam"
    rng = np.random.default_rng(0)
    drawn = {tuple(table.draw(0, rng)[1][-1]) for _ in range(20)}
    assert drawn == {tuple(table.curve(0, s)[1][-1]) for s in (0, 2)}


LOSS_SPACE = """
fixed: {dataset: digits, model: cnn, epochs: 20, method: sgd}
search:
  loss: {categorical: [ce, focal]}
  lr: {loguniform: [0.01, 0.1]}
  batch_size: {int: [32, 128]}
  focal_gamma: {uniform: [1.0, 3.0], when: {loss: [focal]}}
objective: {type: pareto}
"""


def loss_table(seed: int = 0) -> pd.DataFrame:
    """Another space's table (issue 36, item 1): a categorical ``loss`` whose ``focal_gamma``
    exists only with focal, an integer ``batch_size``, the method fixed (not a column)."""
    frame = made_up_table(seed)
    frame = frame[frame.method != "sgd"].drop(columns=["method", "rho", "gamma"])
    codes = frame["config"].to_numpy()
    frame["loss"] = np.where(codes % 2 == 0, "ce", "focal")
    frame["focal_gamma"] = np.where(codes % 2 == 0, np.nan, 1.0 + (codes % 3))
    frame["batch_size"] = 32 * (1 + codes % 4)
    return frame


def test_a_table_of_another_space_snaps_categorical_int_and_conditional_settings(replay, tmp_path):
    path = tmp_path / "loss.yaml"
    path.write_text(LOSS_SPACE)
    table = replay.ReplayTable(loss_table(), load_space(str(path)))
    assert set(table.names) == {"lr", "loss", "focal_gamma", "batch_size"}
    assert table.categorical == ["loss"]
    settings = table.settings
    ce = table.snap({"loss": "ce", "lr": 0.03, "batch_size": 90})
    assert settings.loc[ce, "loss"] == "ce" and np.isnan(settings.loc[ce, "focal_gamma"])
    focal = table.snap({"loss": "focal", "lr": 0.03, "batch_size": 90, "focal_gamma": 2.9})
    row = settings.loc[focal]
    assert row["loss"] == "focal"
    # the nearest of the focal rows on lr (log), batch size and gamma, each over its span
    candidates = settings[settings["loss"] == "focal"]
    distance = (
        ((np.log(candidates.lr) - np.log(0.03)) / np.log(0.15 / 0.03)) ** 2
        + ((candidates.batch_size - 90) / (candidates.batch_size.max() - 32)) ** 2
        + ((candidates.focal_gamma - 2.9) / 2.0) ** 2
    )
    assert focal == distance.idxmin()
    with pytest.raises(ValueError, match="no configuration with"):
        table.snap({"loss": "adafocal", "lr": 0.03, "batch_size": 90})
    # the replay runs on it through the space's own define-by-run function: the contenders
    # sample the table's space (both losses, focal_gamma with focal only), not the default one
    snapped = []
    snap = table.snap
    table.snap = lambda settings: snapped.append(settings) or snap(settings)  # type: ignore[method-assign]
    results = replay.run_benchmark(table, ["random", "tpe"], [2], 2, 10.0)
    del table.snap
    assert {s["loss"] for s in snapped} == {"ce", "focal"}
    assert all(("focal_gamma" in s) == (s["loss"] == "focal") for s in snapped)
    assert not any("rho" in s for s in snapped)
    assert set(results["runs"]) == {"random@2", "tpe@2"}
    for run in results["runs"].values():
        assert 0 < run["val"]["final"] <= 1.5


def test_late_checkpoints_end_a_completed_trial_with_its_own_val_front_in_the_window(replay):
    # one trial of 4 epochs (minimised values: -accuracy, ece): epoch 3 dominates 4; 2 is
    # outside a window of half the epochs; a stopped trial ends as before
    made = {1: (-0.5, 0.4), 2: (-0.95, 0.01), 3: (-0.9, 0.03), 4: (-0.88, 0.05)}
    reports = [
        replay.Report(float(e), 0, e, 1.0, made[e], (v + 0.01 for v in made[e]), e == 4, float(e))
        for e in range(1, 5)
    ]
    reports = [replay.Report(**{**r.__dict__, "test": tuple(r.test)}) for r in reports]
    stopped = replay.Report(2.0, 1, 1, 1.0, (-0.2, 0.5), (-0.2, 0.5), True, 5.0)
    late = replay.with_late([*reports, stopped], 4, 0.5)
    ended = [(r.trial, r.epoch, r.compute) for r in late if r.ended]
    assert ended == [(0, 3, 4.0), (1, 1, 5.0)]
    (three,) = [r for r in late if r.ended and r.trial == 0]
    assert three.test == pytest.approx((-0.89, 0.04))  # the same epoch's test values


def test_the_late_smoke_scores_the_same_replays_and_pairs_them(replay, table):
    results = replay.run_benchmark(table, ["random"], [2], 2, 6.0, late=0.25)
    base, late = results["runs"]["random@2"], results["runs"]["random+late@2"]
    assert late["replays"] == base["replays"] == 2
    # the window's own front holds the last epoch or what dominates it: never a smaller volume
    assert all(a >= b - 1e-12 for a, b in zip(late["val"]["mean"], base["val"]["mean"]))
    paired = late["paired"]["val"]
    assert paired["auc_diff"] == pytest.approx(late["val"]["auc"] - base["val"]["auc"])
    assert paired["auc_diff"] >= 0 and paired["ratio"] >= 1.0


def test_the_agreement_rung_replays_and_measures_over_the_trials_that_finished(replay, table):
    run = replay._variant("tpe+agree:0.3")
    assert run is not None and replay._variant("tpe+agree:x") is None
    reports = run(table, 2, 60 * table.full_trial_seconds, 5)
    ended = [r for r in reports if r.ended]
    # while fewer than the needed pairs have finished no rung acts: the first trials all complete;
    # once the finished trials show the rungs' ranks agree, rungs stop trials
    assert all(r.epoch == EPOCHS for r in ended[:4])
    assert sum(r.epoch < EPOCHS for r in ended) > len(ended) / 2
    results = replay.run_benchmark(table, ["random+agree:0.3"], [2], 2, 6.0, first_seed=100)
    assert results["first_seed"] == 100 and results["runs"]["random+agree:0.3@2"]["replays"] == 2


def test_a_setting_the_space_leaves_unsampled_matches_its_default_in_the_grid(replay, tmp_path):
    # as CSAM's loss in cnn-focal: not sampled (cross-entropy, the default), named in the grid
    path = tmp_path / "lr.yaml"
    path.write_text(LOSS_SPACE.split("  loss:")[0] + "  lr: {loguniform: [0.01, 0.1]}\n")
    table = replay.ReplayTable(loss_table(), load_space(str(path)))
    assert "loss" in table.categorical
    config = table.snap({"lr": 0.03})
    assert table.settings.loc[config, "loss"] == "ce"


def test_contenders_are_paired_by_replay_seed(replay, table):
    results = replay.run_benchmark(table, ["random", "random+asha:9"], [2], 3, 4.0, late=0.25)
    lines = replay.paired_auc_lines(results, base="random")
    names = [line.split(" − ")[0] for line in lines]
    assert names == ["K=2 random+late", "K=2 random+asha:9", "K=2 random+asha:9+late"]
    late = results["runs"]["random+late@2"]["paired"]["val"]["auc_diff"]
    assert f"val ΔAUC {late:+.4f}" in lines[0]  # the same difference as paired_gain's


def test_by_default_each_contender_is_paired_with_its_own_sampler(replay, table):
    results = replay.run_benchmark(table, ["random", "tpe", "tpe+asha:9"], [2], 3, 4.0)
    lines = replay.paired_auc_lines(results)
    # random and tpe are their own samplers without a scheduler: no line of their own
    assert [line.split(": val")[0] for line in lines] == ["K=2 tpe+asha:9 − tpe"]
