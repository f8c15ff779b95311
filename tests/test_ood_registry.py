"""A user's OOD split is one file: a ``Split`` subclass registered with ``@register_split``, its
section validated under its own key of ``ood``, checked before training and evaluated after it
like a built-in split; a taken name or section key and a broken contract are one line each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

import trainables.config as config
from trainables.config import ConfigError, OodSettings, parse_config
from trainables.data.datasets import DataError, Normaliser
from trainables.engine.loop import Trainer
from trainables.errors import PluginError
from trainables.evaluation import SPLITS, Split, register_split
from trainables.evaluation.ood import (
    OodResult,
    auroc,
    check_ood_config,
    detection_metrics,
    evaluate_ood,
    max_softmax,
    ood_metric_names,
)

BUILTIN = (
    "ood_svhn", "ood_digits", "ood_heldout", "cifar10_c", "cifar100_c", "fashion_mnist_c",
    "imagenet_c",
)  # fmt: skip


class NoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(64, ge=2, le=10_000)
    seed: int = 0


CHECKED: list[str] = []


class UniformNoise(Split):
    """Uniform noise images of the model's shape, against its test split."""

    title = "Noise"
    section_key = "test_noise"
    section = NoiseSettings

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        CHECKED.append(info.name)
        if info.in_channels != 1:
            raise DataError(f"ood {self.section_key}: needs a 1-channel model; remove it")

    @torch.inference_mode()
    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> OodResult:
        info = trainer.data.info
        g = torch.Generator().manual_seed(cfg.seed)
        shape = (cfg.count, info.in_channels, info.image_size, info.image_size)
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        normalise = Normaliser(info, trainer.device, trainer.channels_last)
        with trainer.evaluating():
            logits = trainer.eval_logits(normalise(x.to(trainer.device)))
        in_logits, _ = trainer.predictions("test")
        labels = torch.zeros(cfg.count, dtype=torch.int64, device=trainer.device)
        metrics = detection_metrics(self.name, in_logits, logits)
        return OodResult(self.name, logits, labels, np.arange(cfg.count), metrics=metrics)


@pytest.fixture
def noise() -> Iterator[str]:
    register_split("test_noise_split")(UniformNoise)
    yield "test_noise_split"
    SPLITS._parts.pop("test_noise_split", None)  # noqa: SLF001
    SPLITS._origins.pop("test_noise_split", None)  # noqa: SLF001


def test_the_built_in_splits_are_the_registry_in_evaluation_order() -> None:
    assert SPLITS.names()[: len(BUILTIN)] == BUILTIN
    assert config.OOD_SPLITS[: len(BUILTIN)] == BUILTIN
    assert config.DETECTION_SPLITS[:3] == ("ood_svhn", "ood_digits", "ood_heldout")
    assert not {"cifar10_c", "imagenet_c"} & set(config.DETECTION_SPLITS)
    assert tuple(OodSettings.model_fields) == tuple(SPLITS.get(s).section_key for s in BUILTIN)
    assert all(SPLITS.builtin(s) and SPLITS.get(s).title for s in BUILTIN)


def test_a_plugin_split_is_validated_checked_and_evaluated_after_a_digits_run(
    noise: str, digits_settings: dict[str, Any]
) -> None:
    assert config.OOD_SPLITS[-1] == noise and noise in config.DETECTION_SPLITS
    with pytest.raises(ConfigError) as bad:
        parse_config({**digits_settings, "ood": {"test_noise": {"count": 1}}})
    assert str(bad.value).startswith("settings: invalid value for 'ood.test_noise.count': ")
    assert "\n" not in str(bad.value)
    with pytest.raises(ConfigError, match=r"unknown key 'ood\.nois' \(known keys: svhn, .*test_"):
        parse_config({**digits_settings, "ood": {"nois": {}}})

    cfg = parse_config({**digits_settings, "epochs": 1, "ood": {"test_noise": {"count": 40}}})
    assert cfg.ood.section(noise) == NoiseSettings(count=40)
    assert cfg.ood == OodSettings(test_noise={"count": 40})
    CHECKED.clear()
    check_ood_config(cfg)
    assert CHECKED == ["digits"]

    trainer = Trainer(cfg)
    trainer.fit()
    (result,) = evaluate_ood(trainer, cfg.ood)
    assert result.split == noise and len(result.labels) == 40
    assert list(result.metrics) == ood_metric_names(cfg.ood)
    assert ood_metric_names(cfg.ood) == [
        f"{noise}_{m}" for m in ("auroc", "aupr", "auroc_entropy", "aupr_entropy")
    ]
    in_conf = max_softmax(trainer.predictions("test")[0])
    expected = auroc(in_conf, max_softmax(result.logits))
    assert result.metrics[f"{noise}_auroc"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= result.metrics[f"{noise}_aupr"] <= 1.0


def test_a_taken_name_or_section_key_and_a_broken_contract_are_one_line(noise: str) -> None:
    with pytest.raises(PluginError, match=r"^OOD split 'ood_svhn' from .* is already registered"):
        register_split("ood_svhn")(UniformNoise)

    class Svhn2(UniformNoise):
        section_key = "svhn"

    with pytest.raises(PluginError, match=r"section_key 'svhn' is taken by split 'ood_svhn'$"):
        register_split("test_svhn_again")(Svhn2)

    class NoEvaluate(Split):
        section_key = "test_no_evaluate"
        section = NoiseSettings

    with pytest.raises(PluginError, match=r"does not implement evaluate"):
        register_split("test_no_evaluate")(NoEvaluate)

    class NoSection(UniformNoise):
        section_key = "test_no_section"
        section = dict  # type: ignore[assignment]

    with pytest.raises(PluginError, match=r"its section must be a pydantic BaseModel class"):
        register_split("test_no_section")(NoSection)
    with pytest.raises(PluginError, match=r"register a subclass of trainables.evaluation.Split"):
        register_split("test_not_a_split")(NoiseSettings)  # type: ignore[type-var]
    with pytest.raises(PluginError, match=r"^OOD split 'Bad-Name' from .*: a part's name is 1-48"):
        register_split("Bad-Name")(UniformNoise)
    assert not {"test_svhn_again", "test_no_evaluate", "test_no_section"} & set(SPLITS.names())
