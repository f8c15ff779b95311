"""Model registry: every model maps a batch to logits; unknown names fail helpfully."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.models.zoo import MODELS, ModelError, build_model, model_names, register_model

# (name, in_channels, image_size) for each registered model, kept small for the CPU.
CASES = [
    ("cnn", 1, 8),
    ("cnn", 1, 28),
    ("cnn", 3, 32),
    ("cnn_fc", 1, 8),
    ("cnn_fc", 1, 28),
    ("cnn_fc", 3, 32),
    ("resnet18", 3, 32),
    ("resnet18", 1, 28),
    ("resnet56", 3, 32),
    ("wrn28_10", 3, 32),
]


def logits(model: nn.Module, in_channels: int, image_size: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(2, in_channels, image_size, image_size))


@pytest.mark.parametrize(("name", "in_channels", "image_size"), CASES)
def test_registered_models_map_to_logits(name: str, in_channels: int, image_size: int) -> None:
    model = build_model(name, num_classes=7, in_channels=in_channels, image_size=image_size)
    out = logits(model, in_channels, image_size)
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_every_registered_model_is_covered() -> None:
    assert {case[0] for case in CASES} == set(model_names()) == set(MODELS)


def test_cnn_trains_on_a_batch() -> None:
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=28)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cnn_fc_has_a_fully_connected_head_and_no_batchnorm_or_global_pooling() -> None:
    model = build_model("cnn_fc", num_classes=10, in_channels=1, image_size=28)
    kinds = {type(m) for m in model.modules()}
    assert nn.BatchNorm2d not in kinds and nn.AdaptiveAvgPool2d not in kinds
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 7 * 7, 128), (128, 10)]


def test_parameter_counts_match_the_papers() -> None:
    def millions(name: str) -> float:
        return sum(p.numel() for p in build_model(name, 10).parameters()) / 1e6

    assert millions("resnet18") == pytest.approx(11.17, abs=0.01)
    assert millions("resnet56") == pytest.approx(0.85, abs=0.01)


def test_timm_model_by_prefix() -> None:
    model = build_model("timm:resnet18", num_classes=10, in_channels=1)
    assert logits(model, 1, 32).shape == (2, 10)


def test_bare_timm_name() -> None:
    model = build_model("mobilenetv3_small_050", num_classes=4)
    assert logits(model, 3, 32).shape == (2, 4)


def test_register_model() -> None:
    @register_model("test_tiny_linear")
    def tiny(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    try:
        assert logits(build_model("test_tiny_linear", 3, 1, 4), 1, 4).shape == (2, 3)
    finally:
        MODELS._parts.pop("test_tiny_linear")
        MODELS._origins.pop("test_tiny_linear")


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(ModelError) as err:
        build_model("no_such_net", num_classes=10)
    message = str(err.value)
    assert all(name in message for name in model_names())
    assert "timm:<name>" in message and "\n" not in message


def test_unknown_timm_name() -> None:
    with pytest.raises(ModelError, match="timm"):
        build_model("timm:no_such_net", num_classes=10)
