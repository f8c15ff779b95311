"""MC dropout: a dropout layer before every model's classifier, and evaluation as the mean softmax
of ``mc_samples`` stochastic passes (BatchNorm in eval mode), each pass one seeded mask per layer
shared by the batch, so reruns are identical and no prediction depends on its batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_loop import untimed
from trainables.config import ConfigError, parse_config
from trainables.engine.loop import Trainer
from trainables.engine.passes import DROPOUT, dropout_mask, pass_generator
from trainables.models.zoo import build_model, model_names


@pytest.mark.parametrize("name", [*model_names(), "timm:resnet10t"])
def test_dropout_goes_right_before_the_classifier_of_every_model(name):
    size = 32
    plain = build_model(name, 10, 3, size)
    model = build_model(name, 10, 3, size, dropout=0.4)
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Dropout))]
    assert isinstance(linears[-1], nn.Linear) and isinstance(linears[-2], nn.Dropout)
    assert linears[-2].p == 0.4
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.4 for m in model.modules()) == 1
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, size, size)
    assert model.eval()(x).shape == (2, 10)


def test_mc_predictions_are_the_mean_softmax_of_seeded_stochastic_passes(digits_settings):
    cfg = parse_config({**digits_settings, "model": "cnn", "dropout": 0.5, "mc_samples": 5})
    trainer = Trainer(cfg)
    trainer.fit()
    bn = [m.running_mean.clone() for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d)]
    logits, labels = trainer.predict("val")
    again, _ = trainer.predict("val")
    assert torch.equal(logits, again)  # the same masks each time: reruns are identical
    # by hand: eval mode; pass k multiplies the dropout layer's output by one mask over its
    # features for the whole batch, drawn from the run's seed and k; 5 passes averaged
    ((x, _),) = trainer.data.eval_batches("val", 1024)
    model = trainer.model.eval()
    (layer,) = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    probs = []
    for k in range(5):
        mask = dropout_mask(0.5, (layer_width(model),), pass_generator(cfg.seed, k, DROPOUT, 0))
        handle = layer.register_forward_hook(lambda m, i, out, mask=mask: out * mask)
        with torch.no_grad():
            probs.append(model(x).softmax(dim=1))
        handle.remove()
    expected = torch.stack(probs).mean(dim=0)
    assert torch.allclose(logits.softmax(dim=1), expected, atol=1e-6)
    single = Trainer(parse_config({**cfg.model_dump(), "mc_samples": 1}))
    single.model.load_state_dict(trainer.model.state_dict())
    assert not torch.allclose(single.predict("val")[0].softmax(dim=1), expected, atol=1e-3)
    after = [m.running_mean for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn, after, strict=True))  # BatchNorm in eval


def layer_width(model: nn.Module) -> int:
    """The input width of the model's classifier (its last linear layer)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].in_features


def test_a_rerun_with_mc_dropout_gives_the_same_metrics(digits_settings):
    cfg = parse_config({**digits_settings, "dropout": 0.3, "mc_samples": 4})
    first, second = Trainer(cfg).fit(), Trainer(cfg).fit()
    assert first.final == second.final and untimed(first.history) == untimed(second.history)


@pytest.mark.parametrize("bad", [{"dropout": 1.0}, {"dropout": -0.1}, {"mc_samples": 0}])
def test_bad_dropout_settings_are_one_line_errors(bad, digits_settings):
    with pytest.raises(ConfigError) as err:
        parse_config({**digits_settings, **bad})
    assert len(str(err.value).splitlines()) == 1 and next(iter(bad)) in str(err.value)
