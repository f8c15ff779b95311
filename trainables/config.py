"""The settings of one training run, validated before any work starts."""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trainables.data.datasets import check_dataset_name
from trainables.errors import InputError

# The OOD section's models live with the splits (``trainables.evaluation``); re-exported here,
# where settings, callers and the pickles of old studies name them.
from trainables.evaluation.sections import FASHION_MNIST_TEST_IMAGES as FASHION_MNIST_TEST_IMAGES
from trainables.evaluation.sections import SEVERITIES as SEVERITIES
from trainables.evaluation.sections import CorruptionSettings as CorruptionSettings
from trainables.evaluation.sections import DigitsSettings as DigitsSettings
from trainables.evaluation.sections import HeldoutSettings as HeldoutSettings
from trainables.evaluation.sections import SvhnSettings as SvhnSettings
from trainables.evaluation.sections import no_credentials
from trainables.evaluation.settings import OodSettings
from trainables.evaluation.splits import detection_splits, ood_splits
from trainables.evaluation.splits import ood_section_key as ood_section_key
from trainables.losses import LOSSES
from trainables.messages import first_problem, shown
from trainables.methods import METHODS
from trainables.models import MODELS
from trainables.models.zoo import check_model_name
from trainables.parts import declared_settings

MAX_IMAGES = 1_000_000_000  # upper bound of any image count: beyond it a value cannot be meant
DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")
# The OOD section's models live with the splits (``trainables.evaluation``); they are re-exported
# here, where the settings (and the pickles of old studies) name them.


def __getattr__(name: str) -> Any:
    # ``OOD_SPLITS`` (every split in evaluation order: evidence split names, metric prefixes) and
    # ``DETECTION_SPLITS`` (images of other classes; the rest are shifted copies of the test
    # split) are views of ``trainables.evaluation.SPLITS``, so a user's split is in them.
    if name == "OOD_SPLITS":
        return ood_splits()
    if name == "DETECTION_SPLITS":
        return detection_splits()
    raise AttributeError(f"module 'trainables.config' has no attribute {name!r}")


class ConfigError(InputError):
    """A setting is unknown, of the wrong type or out of range. The message is one line."""


class TrainConfig(BaseModel):
    """Everything that defines one training run. Unknown keys are rejected; the keys a
    registered part declares (``Part.settings``: a plugin's own settings) are accepted as flat
    keys beside the built-in ones, validated by the part's model, and kept in ``model_extra``."""

    model_config = ConfigDict(
        extra="allow", frozen=True, protected_namespaces=(), allow_inf_nan=False
    )

    # data
    dataset: str = "fashion_mnist"
    data_root: str | None = None
    download: bool = False
    train_subset: int | None = Field(5000, gt=1, le=MAX_IMAGES)
    test_subset: int | None = Field(None, gt=0, le=MAX_IMAGES)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    augment: bool = False  # crop/flip on device; the CIFAR spaces turn it on
    num_workers: int = Field(2, ge=0, le=256)
    synthetic_size: int = Field(2048, gt=1, le=10_000_000)
    # the seed of the data: the val split, the train/test subsets and synthetic images (None: the
    # run's seed). Set it so repeats differ only in training (init, batch order, dropout) and share
    # their test and val samples, which a deep ensemble of the repeats needs.
    data_seed: int | None = Field(None, ge=0, lt=2**32)
    # model (cnn_fc for 25 epochs on 4 500 Fashion-MNIST images: the overconfident regime, T ~ 2)
    model: str = "cnn_fc"
    # MC dropout (Gal & Ghahramani 2016): dropout before the classifier, kept on at evaluation for
    # ``mc_samples`` passes whose softmax is averaged (1: a single deterministic pass)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mc_samples: int = Field(1, ge=1, le=1000)
    # MIMO (Havasi et al. 2021, trainables/mimo.py): M members in one network; the batch
    # repetitions b and the input repetition ratio rho are its authors' CIFAR defaults (b rows of
    # each unique image per step, so a step costs about b times SGD's)
    mimo: int | None = Field(None, ge=2, le=16)
    mimo_batch_repetitions: int = Field(4, ge=1, le=64)
    mimo_input_repetition: float = Field(0.0, ge=0.0, le=1.0)
    # Rank-1 BNN (Dusenberry et al. 2020, trainables/rank1.py): M members on the registered
    # models' conv and linear layers; the defaults are its authors' CIFAR ones, but for the KL
    # annealing, which they end at epoch 200 of 250: here at 0.8 of ``epochs`` unless given
    rank1: int | None = Field(None, ge=2, le=16)
    rank1_family: Literal["normal", "cauchy"] = "normal"
    rank1_prior_mean: float = Field(1.0, ge=-100.0, le=100.0)
    rank1_prior_stddev: float = Field(0.1, gt=0.0, le=100.0)
    rank1_dropout_rate: float = Field(1e-3, gt=0.0, lt=1.0)  # the posterior scale's start
    rank1_random_sign_init: float = Field(0.5, ge=-10.0, le=1.0)
    rank1_kl_annealing_epochs: float | None = Field(None, gt=0.0, le=10_000.0)
    rank1_eval_samples: int = Field(1, ge=1, le=1000)
    # optimisation
    method: str = "sam"  # a registered method (trainables.methods.METHODS)
    rho: float = Field(0.1, gt=0.0, le=10.0)
    gamma: float = Field(1.0, ge=0.0, le=2.0)
    eta: float = Field(0.01, ge=0.0, le=10.0)
    # ASAM's T = |w| + eta scales the tensors named "weight" (Kwon et al.'s reference code; biases
    # get T = 1), or every tensor ("all", as pytorch_optimizer and davda54/sam do).
    asam_scale: Literal["weights", "all"] = "weights"
    # With several workers (DDP): all-reduce SAM's ascent gradient, so every replica takes the same
    # perturbation (the global-batch SAM); off = per-replica perturbation, as in the original SAM.
    sync_perturbation: bool = False
    # bSAM (trainables/bsam.py): lr is its alpha, momentum its beta1, rho its rho; these are its
    # own, the defaults those of its authors' code (the weight decay is prior_precision / N)
    bsam_prior_precision: float = Field(25.0, gt=0.0, le=1e6)
    bsam_data_factor: float = Field(1.0, gt=0.0, le=1e3)  # N = train size x this (``dafactor``)
    bsam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    bsam_damping: float = Field(0.1, ge=0.0, le=100.0)
    bsam_s_init: float = Field(1.0, gt=0.0, le=1e6)
    bsam_samples: int = Field(32, ge=1, le=1000)  # posterior samples averaged at evaluation
    loss: str = "ce"  # a registered loss (trainables.losses.LOSSES)
    ls_epsilon: float = Field(0.1, ge=0.0, lt=1.0)
    focal_gamma: float = Field(3.0, ge=0.0, le=10.0)
    # AdaFocal (trainables/adafocal.py); the defaults are its authors'
    adafocal_lambda: float = Field(1.0, ge=0.0, le=100.0)
    adafocal_gamma: float = Field(1.0, ge=-20.0, le=20.0)  # every bin's initial gamma
    adafocal_gamma_min: float = Field(-2.0, ge=-20.0, le=20.0)
    adafocal_gamma_max: float = Field(20.0, ge=-20.0, le=100.0)
    adafocal_switch: float = Field(0.2, ge=0.0, le=10.0)
    adafocal_bins: int = Field(15, ge=1, le=1000)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=10.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    epochs: int = Field(25, ge=1, le=100_000)
    # stop after this epoch, the schedule still over ``epochs``: how a rerun trains a
    # configuration to the late epoch a study chose (``study rerun``); None: the last
    stop_after: int | None = Field(None, ge=1, le=100_000)
    batch_size: int = Field(128, ge=2, le=1_000_000)
    seed: int = Field(0, ge=0, lt=2**32)
    # hardware
    device: str = "auto"
    bf16: bool | None = None  # None: on for CUDA, off for CPU
    channels_last: bool | None = None  # None: on (CPU and CUDA)
    compile: bool | None = None  # None: on for CUDA where it pays (see BENCHMARKS.md)
    # the chance guard: a run whose val accuracy is still at most chance_factor x chance (1 /
    # classes) after epoch chance_epoch (before its last) stops there, as a diverged run does
    chance_epoch: int = Field(2, ge=0, le=100_000)  # 0: never
    chance_factor: float = Field(2.0, ge=1.0, le=1000.0)
    # test metrics after every epoch, not only the last (tables of learning curves: slower)
    test_every_epoch: bool = False
    # evaluation of the final model on OOD / corrupted sets (trainables/ood.py)
    ood: OodSettings | None = None

    @property
    def last_epoch(self) -> int:
        """The epoch a run ends after: ``stop_after``, else ``epochs``."""
        return self.epochs if self.stop_after is None else self.stop_after

    @property
    def split_seed(self) -> int:
        """The seed the data are drawn with: ``data_seed``, else the run's ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    _data_root_has_no_credentials = field_validator("data_root")(no_credentials)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        check_dataset_name(name)
        return name

    @model_validator(mode="before")
    @classmethod
    def _parts_settings(cls, data: Any) -> Any:
        """Keys beyond the built-in settings: a registered part's own (validated by its
        settings model, values as it converts them), else unknown."""
        if not isinstance(data, dict):
            return data
        extra = [k for k in data if k not in cls.model_fields]
        if not extra:
            return data
        declared = declared_settings()
        for key in extra:
            if key not in declared:
                raise PydanticCustomError("unknown_setting", "unknown key", {"key": key})
        data = dict(data)
        for key in extra:
            _, _, model = declared[key]
            try:
                data[key] = getattr(model.model_validate({key: data[key]}), key)
            except ValidationError as err:
                problem = first_problem(err)
                raise PydanticCustomError(
                    "part_setting", "{reason}", {"key": key, "reason": problem.reason}
                ) from None
        return data

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        METHODS.get(name)
        return name

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        LOSSES.get(name)
        return name

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE.fullmatch(device):
            raise ValueError("use auto, cpu, cuda or cuda:N")
        return device

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        check_model_name(name)
        return name

    @model_validator(mode="after")
    def _method_and_loss_agree(self) -> TrainConfig:
        method = METHODS.get(self.method)
        method.check(self)
        LOSSES.get(self.loss).check(self)
        if self.model in MODELS:  # else a timm model
            MODELS.get(self.model).check(self)
        if self.stop_after is not None and self.stop_after > self.epochs:
            raise ValueError(
                f"stop_after ({self.stop_after}) must be at most epochs ({self.epochs})"
            )
        if self.adafocal_gamma_min >= self.adafocal_gamma_max:
            raise ValueError(
                f"adafocal_gamma_min ({self.adafocal_gamma_min}) must be below adafocal_gamma_max "
                f"({self.adafocal_gamma_max})"
            )
        if self.rank1 is not None:
            if self.mimo is not None:
                raise ValueError("rank1 and mimo are two ensembles in one network: choose one")
            if method.eval_passes(self) is not None or self.dropout > 0:
                raise ValueError(
                    f"rank1 samples its own weights at evaluation: not with method={self.method} "
                    "or dropout"
                )
            if self.model not in MODELS:
                raise ValueError(
                    f"rank1 replaces the registered models' layers ({', '.join(MODELS)}); "
                    f"model={self.model} is not one"
                )
        return self


def parse_config(settings: dict[str, Any], where: str = "settings") -> TrainConfig:
    """Validate ``settings`` into a ``TrainConfig``, turning pydantic's report into one line."""
    try:
        return TrainConfig(**settings)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, where)) from None


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The pydantic model of the (nested) section at ``loc``, e.g. ``('ood', 'svhn')``."""
    model: type[BaseModel] = TrainConfig
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
        model = next(a for a in nested if issubclass(a, BaseModel))
    return model


def known_settings() -> tuple[str, ...]:
    """Every key a run's settings may have: the built-in ones, then those the registered parts
    declare (a plugin's own settings)."""
    return (
        *TrainConfig.model_fields,
        *(k for k in declared_settings() if k not in TrainConfig.model_fields),
    )


def setting_default(key: str) -> Any:
    """The default of setting ``key`` (built-in or a part's own)."""
    if key in TrainConfig.model_fields:
        return TrainConfig.model_fields[key].default
    return declared_settings()[key][2].model_fields[key].default


def describe_validation_error(err: ValidationError, where: str) -> str:
    """One line naming the first bad key, its value and the reason."""
    first = err.errors()[0]
    if first["type"] == "unknown_setting":
        key = first["ctx"]["key"]
        return f"{where}: unknown key '{key}' (known keys: {', '.join(known_settings())})"
    if first["type"] == "part_setting":
        key, reason = first["ctx"]["key"], first["ctx"]["reason"]
        got = first.get("input", {}).get(key) if isinstance(first.get("input"), dict) else None
        return f"{where}: invalid value for '{key}' (got {shown(got)}): {reason}"
    problem = first_problem(err)
    key = problem.key("(settings)")
    if first["type"] == "unknown_ood_section":  # a key no split of ``SPLITS`` has
        key = ".".join((*(str(p) for p in problem.loc), first["ctx"]["key"]))
        return f"{where}: unknown key '{key}' (known keys: {first['ctx']['known']})"
    if first["type"] == "ood_section":  # a user's split's section (not a field of OodSettings)
        ctx = first["ctx"]
        return f"{where}: invalid value for '{key}.{ctx['where']}': {ctx['reason']}"
    if problem.unknown_key:
        known = ", ".join(_section_model(problem.loc[:-1]).model_fields)
        return f"{where}: unknown key '{key}' (known keys: {known})"
    got = "" if isinstance(problem.value, dict) else f" (got {shown(problem.value)})"
    return f"{where}: invalid value for '{key}'{got}: {problem.reason}"
