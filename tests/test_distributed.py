"""Multi-worker trials on CPU: DDP over gloo through Ray Train's TorchTrainer, and in a study."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pyarrow.dataset as pads
import pytest
import ray
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from search_spaces import SpaceError
from search_spaces.schema import check_space
from study.runtime.tuner import loopback_only
from study.storage.records import LATE_FRONT_ATTR
from tests.conftest import DIGITS_FAST
from tests.test_cli import run_study
from tests.test_study import DIGITS, optuna_study, run_and_kill_while_held, write_space
from trainables.config import parse_config
from trainables.engine.distributed import DataParallel
from trainables.engine.loop import Trainer

pytestmark = pytest.mark.slow  # Ray Train workers

GLOBAL_BATCH = 64
SETTINGS: dict[str, Any] = {**DIGITS_FAST, "method": "sam", "rho": 0.5, "lr": 0.1}


def _global_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The first global batch, or this replica's slice of it."""
    return next(iter(trainer.data.train_batches(GLOBAL_BATCH, epoch_seed=7, augment=True)))


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _one_ddp_step(config: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = parse_config(config)
    trainer = Trainer(cfg, parallel=DataParallel(rank, world, cfg.sync_perturbation))
    trainer.train_step(*_global_batch(trainer))
    return {k: v.numpy() for k, v in _state(trainer).items()}


def _ddp_state(settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    trainer = TorchTrainer(
        _one_ddp_step,
        train_loop_config=settings,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
    )
    return {k: torch.tensor(v) for k, v in trainer.fit().return_value.items()}


def _single_process_state(settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    trainer = Trainer(parse_config(settings))
    trainer.train_step(*_global_batch(trainer))
    return _state(trainer)


def _largest_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def local_ray():
    with loopback_only():
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def test_synced_perturbation_step_equals_one_process_step_on_the_global_batch(local_ray):
    settings = {**SETTINGS, "sync_perturbation": True}
    single = _single_process_state(settings)
    ddp = _ddp_state(settings)
    before = _state(Trainer(parse_config(settings)))
    moved = _largest_gap(single, before)
    assert moved > 1e-3  # the step changed the weights and the BatchNorm running statistics
    assert _largest_gap(ddp, single) < 1e-5 * max(1.0, moved)

    per_replica = _ddp_state({**SETTINGS, "sync_perturbation": False})
    # Each replica perturbs along its own half-batch gradient: a different (m-sharpness) step.
    assert _largest_gap(per_replica, single) > 1e-4


def _space_data(resources: dict[str, Any], batch_size: int = 64) -> dict[str, Any]:
    return {
        "fixed": {**DIGITS, "epochs": 2, "batch_size": batch_size, "method": "sam"},
        "search": {"lr": {"loguniform": [0.02, 0.1]}},
        "samples": 1,
        "concurrency": 1,
        "resources": resources,
    }


@pytest.mark.parametrize(
    ("resources", "batch_size", "message"),
    [
        ({"cpu": 1, "gpu": 0.5, "workers": 2}, 64, "each worker needs gpu 0 or 1"),
        ({"cpu": 1, "workers": 4}, 6, "4 workers need batch_size >= 8"),
    ],
)
def test_bad_worker_settings_are_refused_with_the_key(resources, batch_size, message):
    with pytest.raises(SpaceError, match=message) as err:
        check_space(_space_data(resources, batch_size), "ddp.yaml")
    assert "'resources" in str(err.value)


def test_killed_two_worker_study_resumes_from_the_train_checkpoint_with_evidence_once(tmp_path):
    """With late checkpoints over its last half: each kept epoch keeps its checkpoint and its
    evidence once, written by rank 0 only, across the kill."""
    data = _space_data({"cpu": 1, "workers": 2})
    data["fixed"].update(epochs=4, sync_perturbation=True)
    data["late_checkpoints"] = 0.5
    space = write_space(tmp_path, **data)
    train_dir = tmp_path / "studies" / "k" / "train"

    def checkpointed() -> bool:
        return bool(list(train_dir.glob("*-ddp/checkpoint_*")))

    # the trial's rank 0 waits after reporting epoch 2's checkpoint, provably mid-run
    run_and_kill_while_held(tmp_path, space, "k", "studies", epoch=2, also=checkpointed)

    proc = run_study("resume", "k", "--storage", "studies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (trial,) = optuna_study(tmp_path, "k").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["status"] == "completed"
    assert trial.user_attrs["test_accuracy"] > 0.5
    evidence = tmp_path / "studies" / "k" / "evidence"
    table = pads.dataset(evidence, partitioning="hive").to_table()
    rows = table.group_by(["split", "epoch"]).aggregate([("sample_id", "count")]).to_pylist()
    kept = sorted(entry["epoch"] for entry in trial.user_attrs[LATE_FRONT_ATTR])
    assert kept and set(kept) <= {3, 4}  # the window: the last half of 4 epochs
    # every val and test sample exactly once at the last epoch and at each kept one, none at an
    # epoch a later one dominated: only rank 0 writes
    trainer = Trainer(parse_config({**DIGITS_FAST, "val_fraction": 0.1}))
    counts = {(r["split"], r["epoch"]): r["sample_id_count"] for r in rows}
    expected = {(s, e): trainer.data.split_size(s) for s in ("val", "test") for e in {*kept, 4}}
    assert counts == expected
    for epoch in set(kept) - {4}:  # a kept epoch but the last keeps its own checkpoint
        assert list((tmp_path / "studies" / "k").rglob(f"epochs/epoch-{epoch:04d}/state.pt"))
    (result,) = (tmp_path / "studies" / "k" / "tune").glob("trial_*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    resumed = [row["epoch"] for row in rows if row["pid"] == rows[-1]["pid"]]
    # The resumed trial continued from the Train run's last checkpoint, not from epoch 1.
    assert resumed[0] > 1 and resumed == list(range(resumed[0], 5))
