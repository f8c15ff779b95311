"""The epoch loop on real data (digits): resume, CSAM = SAM at gamma 0 and its descent gradient,
divergence, BatchNorm, float32 evaluation under bf16 training, a temperature fit on a bound."""

from __future__ import annotations

import copy

import pytest
import torch

from trainables.config import parse_config
from trainables.engine.loop import Trainer, load_checkpoint, save_checkpoint
from trainables.metrics import calibration


class _Interrupt(Exception):
    pass


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.state_dict().values()]


def untimed(history: list[dict]) -> list[dict]:
    """A run's history without its wall time (``train_seconds``), the one thing that differs
    between two identical runs."""
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]


@pytest.mark.parametrize(
    "mc",
    [
        {},
        {"dropout": 0.3, "mc_samples": 3},
        {"loss": "adafocal"},
        {"method": "bsam", "bsam_samples": 2},
        {"mimo": 2, "mimo_batch_repetitions": 2, "mimo_input_repetition": 0.5},
        {"mimo": 2, "mimo_batch_repetitions": 2, "method": "csam", "loss": "ce"},
        {"rank1": 2, "rank1_kl_annealing_epochs": 2},
        {"rank1": 2, "method": "csam", "rank1_family": "cauchy", "rank1_eval_samples": 2},
    ],
    ids=["plain", "mc_dropout", "adafocal", "bsam", "mimo", "mimo_csam", "rank1", "rank1_cauchy"],
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

    assert untimed(result.history) == untimed(expected.history)
    # the training time carries over the interruption: it keeps growing, epoch after epoch
    seconds = [row["train_seconds"] for row in result.history]
    assert seconds == sorted(seconds) and seconds[0] > 0
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


def _descent_gradient(trainer: Trainer, x: torch.Tensor, y: torch.Tensor):
    """One SAM step of ``trainer`` on a batch: the perturbed weights and the descent gradient
    there, as ``second_step`` receives them."""
    seen: dict[str, list[torch.Tensor]] = {}
    second_step = trainer.optimizer.second_step

    def spy(*args, **kwargs):
        seen["weights"] = [p.detach().clone() for p in trainer.model.parameters()]
        seen["grads"] = [p.grad.detach().clone() for p in trainer.model.parameters()]
        return second_step(*args, **kwargs)

    trainer.optimizer.second_step = spy
    trainer.model.train()
    trainer._sam_step(x, y)
    return seen["weights"], seen["grads"]


def test_csam_descent_gradient_is_sams_reweighted_per_sample_by_its_loss(digits_settings):
    # By the loss's definition, per sample with p~ the true-class probability at the perturbed
    # weights: grad l~ = c grad(-log p~), c = 1 where p~ <= 1/2, else
    # c = (1 + p~)^-gamma (1 - gamma p~ log p~ / (1 + p~)), below 1: confident samples pull less.
    gamma = 2.0
    # no BatchNorm: per sample. Contiguous: the reference below is NCHW, and at some trained
    # points oneDNN's NHWC max-pool routes a tie (equal digits patches) to another window
    settings = {**digits_settings, "model": "cnn_fc", "lr": 0.2, "channels_last": False}
    sam = Trainer(parse_config({**settings, "method": "sam"}))
    sam.fit()  # far enough from the start that many samples are confident
    csam = Trainer(parse_config({**settings, "method": "csam", "gamma": gamma}))
    csam.model.load_state_dict(sam.model.state_dict())
    x, y = next(iter(sam.data.train_batches(64, epoch_seed=5, augment=False)))
    weights, sam_grads = _descent_gradient(sam, x, y)
    csam_weights, csam_grads = _descent_gradient(csam, x, y)
    for a, b in zip(weights, csam_weights, strict=True):
        assert torch.equal(a, b)  # the same ascent (cross-entropy) to the same perturbed point

    model = copy.deepcopy(sam.model).double()
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)
    params = list(model.parameters())
    per_sample, p_true = [], []
    for i in range(len(y)):
        log_p = torch.log_softmax(model(x[i : i + 1].double()), dim=1)[0, y[i]]
        per_sample.append(torch.autograd.grad(-log_p, params))
        p_true.append(log_p.exp().item())
    p = torch.tensor(p_true, dtype=torch.float64)
    c = torch.where(p <= 0.5, 1.0, (1 + p) ** -gamma * (1 - gamma * p * p.log() / (1 + p))).tolist()
    assert sum(q > 0.5 for q in p_true) >= 16 and sum(q <= 0.5 for q in p_true) >= 1
    assert all(ci < 1 for ci, q in zip(c, p_true) if q > 0.5)
    for k, (found_sam, found_csam) in enumerate(zip(sam_grads, csam_grads, strict=True)):
        expected_sam = sum(g[k] for g in per_sample) / len(y)
        expected_csam = sum(ci * g[k] for ci, g in zip(c, per_sample)) / len(y)
        # float32 sums of 64 per-sample terms that cancel, each term's own float32 error up to
        # ~1e-3 of it (a confident sample's 1 - p): bounded by the sum of the terms' magnitudes,
        # not by the (cancelled) result. A tiny entry also carries the float32 rounding of the
        # layer's accumulations (sums over positions and channels), ~1e-5 of the layer's largest
        # entry. CSAM's reweighting moves entries by ~half their terms, far above both.
        magnitude = sum(g[k].abs() for g in per_sample) / len(y)
        floor = 1e-3 * magnitude + 1e-5 * magnitude.max()
        for found, expected in ((found_sam, expected_sam), (found_csam, expected_csam)):
            error = (found.double() - expected).abs()
            bound = 1e-4 * expected.abs() + floor
            assert (error <= bound).all(), float((error / bound).max())
        assert not torch.allclose(expected_sam, expected_csam, rtol=1e-3, atol=1e-5)


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


# ------------------------------------------------------------------ evaluation in float32


def _plain_float32_logits(trainer: Trainer, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return trainer.model(x).float()


def test_evaluation_is_float32_even_when_training_autocasts_to_bf16(digits_settings):
    # bf16 set on CPU: the trainer autocasts training as it does on CUDA by default.
    trainer = Trainer(parse_config({**digits_settings, "method": "sam", "bf16": True, "epochs": 1}))
    assert trainer.bf16
    trainer.fit()
    logits, _ = trainer.predict("val")
    x = torch.cat([x for x, _ in trainer.data.eval_batches("val", 1024)])
    trainer.model.eval()
    expected = _plain_float32_logits(trainer, x)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, expected), "evaluated under bf16 autocast (8-bit mantissa)"


def test_mc_dropout_evaluation_is_float32_when_training_autocasts(digits_settings):
    settings = {**digits_settings, "bf16": True, "epochs": 1, "dropout": 0.3, "mc_samples": 3}
    trainer = Trainer(parse_config(settings))
    trainer.fit()
    x, _ = next(iter(trainer.data.eval_batches("val", 256)))
    with torch.inference_mode():
        with trainer.evaluating():
            found = trainer.eval_logits(x)
        with trainer.evaluating():  # the same seeded dropout masks, no autocast
            seeded = trainer.seeded_passes()
            assert seeded is not None
            passes = [seeded.pass_probs(x, k) for k in range(3)]
    expected = torch.stack(passes).mean(dim=0).clamp_min(calibration.PROB_FLOOR).log()
    assert found.dtype == torch.float32
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_evaluation_is_float32_while_training_autocasts():
    assert_cuda_style_evaluation_is_float32("cuda")


def assert_cuda_style_evaluation_is_float32(device: str) -> None:
    """CUDA's defaults (bf16 autocast for training; no compile, to keep it short) on synthetic
    data (the GPU image has no scikit-learn): evaluation equals a plain float32 forward, which
    the same forward under bf16 autocast does not."""
    settings = dict(dataset="synthetic", synthetic_size=512, model="cnn", epochs=1, batch_size=64)
    trainer = Trainer(parse_config({**settings, "device": device, "compile": False, "bf16": True}))
    assert trainer.bf16  # CUDA's default, asked for here so that a CPU can rehearse it
    trainer.fit()
    logits, _ = trainer.predict("val")
    x = torch.cat([x for x, _ in trainer.data.eval_batches("val", 1024)])
    trainer.model.eval()
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, _plain_float32_logits(trainer, x), rtol=1e-5, atol=1e-5)
    with torch.autocast(trainer.device.type, dtype=torch.bfloat16), torch.inference_mode():
        bf16 = trainer.model(x).float()
    assert not torch.allclose(bf16, logits, rtol=1e-5, atol=1e-5)  # so the check can fail


# ------------------------------------------------------------------ temperature at a bound


def test_final_metrics_flag_a_temperature_fit_that_stops_on_a_bound(digits_settings):
    trainer = Trainer(parse_config({**digits_settings, "epochs": 1}))
    final = trainer.fit().final
    assert final["temperature_at_bound"] == 0.0
    assert calibration.TEMPERATURE_MIN < final["temperature"] < calibration.TEMPERATURE_MAX
    # A val split the model separates perfectly (its logits, as predict() caches them): the NLL
    # falls all the way to T -> 0, and the fit stops on the lower bound, flagged.
    logits, labels = trainer.predictions("val")
    separable = logits.clone()
    separable[torch.arange(len(labels)), labels] = logits.max(dim=1).values + 1.0
    trainer._predictions["val"] = (trainer.epochs_done, separable, labels)
    final = trainer.final_metrics()
    assert final["temperature"] == calibration.TEMPERATURE_MIN
    assert final["temperature_at_bound"] == 1.0
    assert calibration.nll(separable / final["temperature"], labels) <= calibration.nll(
        separable, labels
    )
