"""A user's model is one file: a plain ``nn.Module`` class (or a builder function) registered with
``@register_model``; it trains, and the run's wrappers (MC dropout, MIMO, rank-1) apply to it
where they can and are refused in one line where they cannot; a taken name, a broken contract
and an unknown name are one line each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, parse_config
from trainables.engine.loop import Trainer
from trainables.errors import PluginError
from trainables.models import MODELS, register_model
from trainables.models.mimo import Mimo
from trainables.models.rank1 import Rank1Ensemble


class TinyNet(nn.Module):
    """A user's network: one conv, global pooling, a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def gray_only(num_classes: int) -> nn.Module:
    """A builder for 1-channel 8x8 images only (it does not take in_channels)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


@pytest.fixture
def user_models() -> Iterator[None]:
    register_model("test_tiny")(TinyNet)
    register_model("test_gray")(gray_only)
    yield
    for name in ("test_tiny", "test_gray"):
        MODELS._parts.pop(name, None)
        MODELS._origins.pop(name, None)


def _digits(settings, **more):
    return parse_config({**settings, "epochs": 1, **more})


def test_a_plain_module_trains_with_mc_dropout(user_models, digits_settings):
    cfg = _digits(digits_settings, model="test_tiny", dropout=0.2, mc_samples=2)
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, TinyNet)
    assert isinstance(trainer.model.head[0], nn.Dropout)  # before its last Linear
    result = trainer.fit()
    assert result.status == "completed" and 0 < result.final["test_accuracy"] <= 1
    assert MODELS.origin("test_tiny") == __name__ and not MODELS.builtin("test_tiny")


def test_mimo_and_rank1_wrap_a_user_model(user_models, digits_settings):
    mimo = Trainer(_digits(digits_settings, model="test_tiny", mimo=2, mimo_batch_repetitions=1))
    assert isinstance(mimo.model, Mimo)
    assert (
        mimo.model.backbone.body[0].in_channels == 2 and mimo.model.backbone.head.out_features == 20
    )
    rank1 = Trainer(_digits(digits_settings, model="test_tiny", rank1=2))
    assert isinstance(rank1.model, Rank1Ensemble)
    assert rank1.fit().status == "completed"


def test_a_wrapper_a_model_cannot_take_is_refused_in_one_line(user_models, digits_settings):
    assert Trainer(_digits(digits_settings, model="test_gray")).fit().status == "completed"
    with pytest.raises(
        ConfigError,
        match=r"^settings: .*mimo builds model=test_gray with 2 times "
        r"the input channels, but it does not take in_channels$",
    ):
        _digits(digits_settings, model="test_gray", mimo=2)


def test_a_taken_name_a_broken_contract_and_an_unknown_name_are_one_line(user_models):
    with pytest.raises(
        PluginError,
        match=r"^model 'resnet18' from .* is already registered by "
        r"trainables.models.zoo: give yours another name$",
    ):
        register_model("resnet18")(TinyNet)

    def no_classes(in_channels: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(
        PluginError,
        match=r"^model 'test_bad' from .* contract: it must take "
        r"num_classes",
    ):
        register_model("test_bad")(no_classes)

    def odd(num_classes: int, depth: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(PluginError, match=r"its parameter 'depth' has no default"):
        register_model("test_odd")(odd)
    assert "test_bad" not in MODELS and "test_odd" not in MODELS
    with pytest.raises(ConfigError) as err:
        parse_config({"model": "no_such_net"})
    message = str(err.value)
    assert "unknown model 'no_such_net'" in message and "test_tiny" in message
    assert "timm:<name>" in message and "\n" not in message


def test_the_zoo_registers_itself():
    assert {"cnn", "cnn_fc", "resnet18", "resnet56", "wrn28_10"} <= set(MODELS.names())
    assert all(MODELS.builtin(n) for n in ("cnn", "resnet18"))
