"""A user's loss is one file: a ``Loss`` subclass registered with ``@register_loss``, its own
settings flat keys of a run, trained by the Trainer; CSAM's rule (it brings its own descent loss)
is the parts' check; a taken name, a broken contract and an unknown name are one line each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import BaseModel, Field

from search_spaces.schema import check_space
from study.analysis.regimes import method_keys
from trainables.config import ConfigError, parse_config
from trainables.engine.loop import Trainer
from trainables.errors import InputError, PluginError
from trainables.losses import LOSSES, Loss, register_loss


class PolySettings(BaseModel):
    test_poly_epsilon: float = Field(1.0, ge=-1.0, le=10.0)


class Poly1(Loss):
    """Poly-1 (Leng et al. 2022): cross-entropy + epsilon (1 - p_y)."""

    title = "Poly-1"
    settings = PolySettings

    def build(self, cfg):
        eps = self.options(cfg).test_poly_epsilon

        def poly1(logits, labels):
            log_p = logits.float().log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
            return (-log_p + eps * (1 - log_p.exp())).mean()

        return poly1


@pytest.fixture
def poly() -> Iterator[str]:
    register_loss("test_poly1")(Poly1)
    yield "test_poly1"
    LOSSES._parts.pop("test_poly1", None)
    LOSSES._origins.pop("test_poly1", None)


def test_a_plugin_loss_is_accepted_searched_labelled_and_trains(poly, digits_settings):
    cfg = parse_config({**digits_settings, "epochs": 1, "loss": poly, "test_poly_epsilon": 2.0})
    assert LOSSES.get(poly).label(cfg) == "Poly-1 (test_poly_epsilon=2)"
    assert "test_poly_epsilon" in method_keys()
    space = check_space(
        {
            "name": "poly",
            "fixed": {"loss": poly, "dataset": "digits", "model": "cnn"},
            "search": {"test_poly_epsilon": {"uniform": [0.0, 3.0]}},
        },
        "s",
    )
    assert space.train_config({"test_poly_epsilon": 3.0}).model_extra["test_poly_epsilon"] == 3.0
    trainer = Trainer(cfg)
    x, y = next(trainer.data.train_batches(8, 0, augment=False))
    logits = trainer.model(x)
    p = logits.softmax(-1).gather(1, y[:, None]).squeeze(1)
    expected = torch.nn.functional.cross_entropy(logits, y) + 2.0 * (1 - p).mean()
    torch.testing.assert_close(trainer.descent_loss(logits, y), expected)
    result = trainer.fit()
    assert result.status == "completed" and 0 < result.final["test_accuracy"] <= 1


def test_csam_accepts_only_the_plain_loss_whatever_its_name(poly):
    with pytest.raises(ConfigError, match=r"method=csam defines its own descent loss; use loss=ce"):
        parse_config({"method": "csam", "loss": poly})
    assert parse_config({"method": "csam", "loss": "ce"}).loss == "ce"


def test_a_taken_name_a_broken_contract_and_an_unknown_name_are_one_line(poly):
    with pytest.raises(PluginError, match=r"^loss 'focal' from .* is already registered by "):
        register_loss("focal")(Poly1)

    class NoBuild(Loss):
        pass

    with pytest.raises(PluginError, match=r"contract: it does not implement Loss.build$"):
        register_loss("test_no_build")(NoBuild)

    class Twice(Poly1):
        pass

    with pytest.raises(PluginError, match=r"its setting 'test_poly_epsilon' is loss 'test_poly1'"):
        register_loss("test_twice")(Twice)
    with pytest.raises(
        InputError,
        match=r"^unknown loss 'hinge': known are ce, ls, focal, flsd53, "
        r"adafocal, test_poly1 \(",
    ):
        LOSSES.get("hinge")


def test_the_built_in_losses_are_parts_with_their_labels():
    assert LOSSES.names()[:5] == ("ce", "ls", "focal", "flsd53", "adafocal")
    cfg = parse_config({"loss": "focal", "focal_gamma": 3.0, "ls_epsilon": 0.05})
    labels = {n: LOSSES.get(n).label(cfg) for n in ("ce", "ls", "focal", "flsd53", "adafocal")}
    assert labels == {
        "ce": "",
        "ls": "LS (ε=0.05)",
        "focal": "Focal (γ=3)",
        "flsd53": "FLSD-53",
        "adafocal": "AdaFocal",
    }
