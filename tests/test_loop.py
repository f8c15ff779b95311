"""The epoch loop on real data (digits): resume, CSAM = SAM at gamma 0, divergence, BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch

from trainables.config import parse_config
from trainables.loop import Trainer, load_checkpoint, save_checkpoint


class _Interrupt(Exception):
    pass


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.state_dict().values()]


@pytest.mark.parametrize(
    "mc",
    [
        {},
        {"dropout": 0.3, "mc_samples": 3},
        {"loss": "adafocal"},
        {"method": "bsam", "bsam_samples": 2},
    ],
    ids=["plain", "mc_dropout", "adafocal", "bsam"],
)
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, digits_settings, mc):
    cfg = parse_config({**digits_settings, "epochs": 3, "method": "sam", **mc})
    straight = Trainer(cfg)
    expected = straight.fit()

    ckpt = tmp_path / "ckpt.pt"

    def kill_after_two(trainer: Trainer, record) -> None:
        save_checkpoint(trainer.state_dict(), ckpt)
        if record.epoch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        Trainer(cfg).fit(on_epoch=kill_after_two)
    resumed = Trainer(cfg)
    resumed.load_state_dict(load_checkpoint(ckpt))
    assert resumed.epochs_done == 2
    result = resumed.fit()

    assert result.history == expected.history
    assert result.final == expected.final
    for a, b in zip(_params(straight), _params(resumed)):
        assert torch.equal(a, b)


def test_checkpoint_loads_with_weights_only_and_refuses_another_config(tmp_path, digits_settings):
    cfg = parse_config({**digits_settings, "epochs": 1})
    trainer = Trainer(cfg)
    trainer.fit()
    save_checkpoint(trainer.state_dict(), tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["epochs_done"] == 1
    other = Trainer(parse_config({**digits_settings, "epochs": 1, "lr": 0.01}))
    with pytest.raises(ValueError, match="different config"):
        other.load_state_dict(state)


def test_csam_with_gamma_zero_trains_exactly_like_sam(digits_settings):
    sam = Trainer(parse_config({**digits_settings, "method": "sam", "rho": 0.05}))
    csam = Trainer(parse_config({**digits_settings, "method": "csam", "rho": 0.05, "gamma": 0.0}))
    result_sam, result_csam = sam.fit(), csam.fit()
    for a, b in zip(_params(sam), _params(csam)):
        assert torch.equal(a, b)
    assert result_sam.final == result_csam.final


def test_csam_with_positive_gamma_differs_from_sam(digits_settings):
    sam = Trainer(parse_config({**digits_settings, "method": "sam", "epochs": 1}))
    csam = Trainer(parse_config({**digits_settings, "method": "csam", "gamma": 2.0, "epochs": 1}))
    sam.fit(), csam.fit()
    assert any(not torch.equal(a, b) for a, b in zip(_params(sam), _params(csam)))


def test_perturbed_pass_leaves_batchnorm_running_stats_untouched(digits_settings):
    trainer = Trainer(parse_config({**digits_settings, "method": "sam"}))
    x, y = next(iter(trainer.data.train_batches(64, epoch_seed=0, augment=False)))
    reference = copy.deepcopy(trainer.model).train()
    with torch.no_grad():
        reference(x)  # only the clean forward pass may move the statistics
    trainer.model.train()
    trainer._sam_step(x, y)
    buffers = dict(trainer.model.named_buffers())
    for name, expected in reference.named_buffers():
        assert torch.equal(buffers[name], expected), name


def test_non_finite_loss_ends_the_run_as_diverged(digits_settings):
    # lr 100 is within the settings' bounds; without BatchNorm it diverges at once.
    cfg = parse_config(
        {**digits_settings, "model": "cnn_fc", "method": "sgd", "lr": 100.0, "epochs": 3}
    )
    result = Trainer(cfg).fit()
    assert result.status == "diverged"
    assert result.final == {}
    assert len(result.history) == 1


@pytest.mark.parametrize(
    ("method", "loss"),
    [("sgd", "ce"), ("sgd", "focal"), ("sam", "ls"), ("asam", "flsd53"), ("csam", "ce")],
)
def test_every_method_and_loss_trains_and_reports_finite_metrics(method, loss, digits_settings):
    cfg = parse_config({**digits_settings, "method": method, "loss": loss, "epochs": 1})
    result = Trainer(cfg).fit()
    assert result.status == "completed"
    keys = {"test_accuracy", "test_ece", "test_adaece", "test_nll", "test_brier", "test_ece_ts"}
    assert keys <= set(result.final)
    assert all(torch.isfinite(torch.tensor(result.final[k])) for k in keys)
    assert result.final["test_accuracy"] > 0.3  # well above chance (0.1) after one epoch


def test_bf16_autocast_path_runs_on_cpu(digits_settings):
    cfg = parse_config({**digits_settings, "method": "csam", "bf16": True, "epochs": 1})
    result = Trainer(cfg).fit()
    assert result.status == "completed"
    assert result.history[0]["train_loss"] < 2.31  # below chance-level cross-entropy, ln(10)


def test_training_improves_over_epochs(digits_settings):
    result = Trainer(parse_config({**digits_settings, "epochs": 4, "method": "sam"})).fit()
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.final["test_accuracy"] > 0.8
