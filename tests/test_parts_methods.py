"""A user's method is one file: a ``Method`` subclass registered with ``@register_method``, its own
settings flat keys of a run (validated by its pydantic model), searched by a space and trained by
the Trainer; a taken name, a broken contract and an unknown name are one line each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import BaseModel, Field

from search_spaces import SpaceError
from search_spaces.schema import check_space
from trainables.config import ConfigError, parse_config
from trainables.engine.loop import Trainer
from trainables.errors import InputError, PluginError
from trainables.methods import METHODS, Method, register_method
from trainables.methods.optim import base_optimizer, factors_undecayed, trainable
from trainables.methods.steps import sgd_step


class DampedSettings(BaseModel):
    test_alpha: float = Field(0.5, gt=0.0, le=1.0)


class DampedSgd(Method):
    """SGD whose learning rate is ``lr * test_alpha``."""

    title = "Damped SGD"
    settings = DampedSettings

    def build_optimizer(self, cfg, model, n_train):
        base_cls, kwargs = base_optimizer(cfg)
        kwargs["lr"] = cfg.lr * self.options(cfg).test_alpha
        return base_cls(factors_undecayed([{"params": trainable(model)}], model), **kwargs)

    def step(self, ctx, x, y):
        return sgd_step(ctx, x, y)


def _forget(name: str) -> None:
    METHODS._parts.pop(name, None)
    METHODS._origins.pop(name, None)


@pytest.fixture
def damped() -> Iterator[str]:
    register_method("test_damped")(DampedSgd)
    yield "test_damped"
    _forget("test_damped")


def _space(**fixed):
    return {
        "name": "plugin",
        "fixed": {"dataset": "digits", "model": "cnn", "epochs": 1, "device": "cpu", **fixed},
        "search": {"test_alpha": {"uniform": [0.1, 0.9]}},
        "samples": 2,
    }


def test_a_plugin_method_and_its_own_settings_are_accepted_validated_and_labelled(damped):
    cfg = parse_config({"method": damped, "test_alpha": 0.3})
    assert cfg.model_extra == {"test_alpha": 0.3}
    assert METHODS.get(damped).options(cfg).test_alpha == 0.3
    assert METHODS.get(damped).label(cfg) == "Damped SGD (test_alpha=0.3)"
    with pytest.raises(ConfigError) as err:
        parse_config({"method": damped, "test_alpha": 2.0})
    assert str(err.value).startswith("settings: invalid value for 'test_alpha' (got 2.0): ")
    assert "\n" not in str(err.value)
    space = check_space(_space(method=damped, test_alpha=None) | {"fixed": {"method": damped}}, "s")
    assert space.train_config({"test_alpha": 0.9}).model_extra == {"test_alpha": 0.9}
    with pytest.raises(SpaceError, match=r"'search.test_alpha': value 1.5 is not allowed"):
        bad = _space(method=damped)
        bad["search"]["test_alpha"] = {"uniform": [0.1, 1.5]}
        check_space(bad, "s")


def test_a_plugin_method_trains_one_epoch_on_digits(damped, digits_settings):
    settings = {**digits_settings, "epochs": 1, "method": damped}
    slow = Trainer(parse_config({**settings, "test_alpha": 0.1}))
    assert slow.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    result = slow.fit()
    assert result.status == "completed" and 0 < result.final["test_accuracy"] <= 1
    # the same steps as plain SGD at lr * alpha: the method's settings reach its optimizer
    sgd = Trainer(parse_config({**settings, "method": "sgd", "lr": 0.005}))
    sgd.fit()
    for a, b in zip(slow.model.parameters(), sgd.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_unknown_keys_are_refused_in_one_line_also_with_plugins_loaded(damped):
    with pytest.raises(
        ConfigError,
        match=r"^settings: unknown key 'test_alpah' \(known keys: .*"
        r"test_alpha\)$",
    ):
        parse_config({"method": damped, "test_alpah": 0.3})


def test_a_taken_name_a_broken_contract_and_an_unknown_name_are_one_line(damped):
    class Other(DampedSgd):
        pass

    with pytest.raises(PluginError, match=r"^method 'test_damped' from .* is already registered"):
        register_method("test_damped")(Other)
    with pytest.raises(PluginError, match=r"^method 'sgd' from .* is already registered"):
        register_method("sgd")(Other)

    class NoStep(Method):
        def build_optimizer(self, cfg, model, n_train):
            raise AssertionError

    with pytest.raises(PluginError, match=r"contract: it does not implement Method.step$"):
        register_method("test_no_step")(NoStep)

    class Clash(DampedSgd):
        settings = type("S", (BaseModel,), {"__annotations__": {"rho": float}, "rho": 0.1})

    with pytest.raises(PluginError, match=r"its setting 'rho' is a built-in setting"):
        register_method("test_clash")(Clash)
    assert "test_no_step" not in METHODS and "test_clash" not in METHODS
    with pytest.raises(InputError) as err:
        METHODS.get("nope")
    assert str(err.value).startswith("unknown method 'nope': known are sgd, sam, asam, csam, bsam")
    with pytest.raises(
        ConfigError,
        match=r"^settings: invalid value for 'method' \(got 'nope'\): "
        r"unknown method 'nope': known are sgd, sam, asam, csam, bsam, test_damped",
    ):
        parse_config({"method": "nope"})


def test_a_one_worker_method_is_refused_with_several_workers_from_its_part(damped):
    space = _space(method="bsam") | {"search": {}, "resources": {"workers": 2}}
    with pytest.raises(SpaceError, match=r"method bsam trains on one worker \(its posterior noise"):
        check_space(space, "s")


def test_the_built_in_methods_are_parts_of_the_registry():
    assert METHODS.names()[:5] == ("sgd", "sam", "asam", "csam", "bsam")
    assert all(METHODS.builtin(n) for n in ("sgd", "sam", "asam", "csam", "bsam"))
    cfg = parse_config({"method": "csam", "rho": 0.05, "gamma": 1.5})
    assert METHODS.get("csam").label(cfg) == "CSAM (ρ=0.05, γ=1.5)"
    assert METHODS.get("sgd").label(parse_config({"optimizer": "adamw"})) == "AdamW"
    assert not METHODS.get("bsam").data_parallel and METHODS.get("sam").data_parallel


PLUGIN_FILE = """
from pydantic import BaseModel, Field

from trainables.methods import Method, register_method
from trainables.methods.optim import base_optimizer, sam_param_groups
from trainables.methods.sam import SAM
from trainables.methods.steps import sam_step


class MySamSettings(BaseModel):
    test_file_alpha: float = Field(0.5, ge=0.0, le=1.0)


@register_method("test_file_sam")
class MySam(Method):
    title = "My SAM"
    settings = MySamSettings

    def build_optimizer(self, cfg, model, n_train):
        alpha = self.options(cfg).test_file_alpha
        base, kwargs = base_optimizer(cfg)
        return SAM(sam_param_groups(model, False), base, rho=cfg.rho * alpha, **kwargs)

    def step(self, ctx, x, y):
        return sam_step(ctx, x, y)
"""


def test_a_method_in_one_file_loads_as_a_plugin_and_sets_its_radius(tmp_path):
    import sys

    from trainables.plugins import load_plugins

    path = tmp_path / "test_my_sam_plugin.py"
    path.write_text(PLUGIN_FILE)
    try:
        load_plugins([str(path)])
        cfg = parse_config({"method": "test_file_sam", "rho": 0.2, "test_file_alpha": 0.25})
        model = torch.nn.Linear(3, 2)
        optimizer = METHODS.get("test_file_sam").build_optimizer(cfg, model, 10)
        assert optimizer.param_groups[0]["rho"] == pytest.approx(0.05)
        assert METHODS.origin("test_file_sam") == "test_my_sam_plugin"
    finally:
        _forget("test_file_sam")
        sys.modules.pop("test_my_sam_plugin", None)
