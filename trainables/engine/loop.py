"""The epoch loop of one run: build data, model and optimizer from a config, train, evaluate, checkpoint.

Device-agnostic. channels_last by default; on CUDA also bf16 autocast (training only; evaluation
is float32). Metrics are accumulated on the device; the host syncs once per epoch (to check for
divergence and to report).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainables.atomic import atomic_write
from trainables.config import ConfigError, TrainConfig
from trainables.data.datasets import Data, DatasetInfo, load_data, train_steps
from trainables.engine.passes import SeededPasses
from trainables.losses import LOSSES, StatefulLoss
from trainables.losses.common import LossFn
from trainables.messages import diverged_reason
from trainables.methods import METHODS, Method
from trainables.methods.optim import factors_undecayed, sam_param_groups  # noqa: F401 (their old home)
from trainables.methods.sam import frozen_batchnorm_stats
from trainables.methods.steps import sam_step
from trainables.metrics import calibration
from trainables.models.mimo import mimo_batch, mimo_indices, mimo_loss
from trainables.models.rank1 import Rank1Spec
from trainables.models.zoo import build_model

EVAL_BATCH = 1024
MIMO_SEED_OFFSET = 104_729  # MIMO's per-member shuffles, apart from the data's batch order


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else must be a valid torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"settings: invalid device {name!r}: use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"settings: device {name!r} asked for but CUDA is not available; use cpu")
    return device


def build_optimizer(cfg: TrainConfig, model: nn.Module, n_train: int = 1) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.method`` over ``model`` (``Method.build_optimizer``; ``n_train``:
    the size of the whole train split)."""
    return METHODS.get(cfg.method).build_optimizer(cfg, model, n_train)


@dataclass(frozen=True)
class Replica:
    """The model as the train step calls it when it is one replica of a data-parallel run.

    ``forward`` wraps the model (e.g. in ``DistributedDataParallel``); the train step calls it
    (compiled when the config asks), evaluation calls the bare model. SAM's ascent pass runs inside
    ``ascent_sync()`` (e.g. DDP's ``no_sync``, for a per-replica perturbation).
    """

    forward: nn.Module
    ascent_sync: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


class Parallelism(Protocol):
    """How a ``Trainer`` becomes one replica of a data-parallel run (``Trainer(cfg,
    parallel=...)``; implemented by ``trainables.engine.distributed.DataParallel``)."""

    def shard(self, data: Data) -> Data:
        """This replica's view of the run's data."""
        ...

    def replicate(self, model: nn.Module, device: torch.device) -> Replica:
        """Make ``model`` (built and moved to ``device``) this replica's; its modules may be
        replaced in place as long as its parameters stay the same objects."""
        ...


@dataclass
class EpochRecord:
    """What one epoch produced: its number (1-based), mean train loss and val metrics."""

    epoch: int
    train_loss: float
    seconds: float
    train_seconds: float = 0.0  # training time of every epoch so far, this one included
    val: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)  # test metrics, after the last epoch
    test: dict[str, float] = field(default_factory=dict)  # before it, with test_every_epoch

    def flat(self) -> dict[str, float]:
        """One flat dict: ``epoch``, ``train_loss``, ``train_seconds``, ``val_<metric>`` keys
        and, with ``test_every_epoch`` before the last epoch, the test metrics."""
        out: dict[str, float] = {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_seconds": self.train_seconds,
            **self.test,
        }
        out.update({f"val_{k}": v for k, v in self.val.items()})
        return out


def rank1_spec(cfg: TrainConfig) -> Rank1Spec | None:
    """The rank-1 settings of ``cfg`` (None: not a rank-1 run)."""
    if cfg.rank1 is None:
        return None
    return Rank1Spec(
        members=cfg.rank1,
        family=cfg.rank1_family,
        prior_mean=cfg.rank1_prior_mean,
        prior_stddev=cfg.rank1_prior_stddev,
        dropout_rate=cfg.rank1_dropout_rate,
        random_sign_init=cfg.rank1_random_sign_init,
    )


def config_model(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    """The untrained model ``cfg`` names for data shaped like ``info`` (its dropout layer, MIMO
    members or rank-1 members included)."""
    return build_model(
        cfg.model,
        info.num_classes,
        info.in_channels,
        info.image_size,
        cfg.dropout,
        cfg.mimo,
        rank1_spec(cfg),
        cfg=cfg,
    )


def config_data(
    cfg: TrainConfig, device: str | torch.device = "cpu", channels_last: bool = False
) -> Data:
    """The data set ``cfg`` trains on: its splits, seeded as in the trial, on ``device``."""
    return load_data(
        cfg.dataset,
        root=cfg.data_root,
        val_fraction=cfg.val_fraction,
        seed=cfg.split_seed,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        device=device,
        download=cfg.download,
        num_workers=cfg.num_workers,
        synthetic_size=cfg.synthetic_size,
        channels_last=channels_last,
        held_out=cfg.ood.heldout.classes if cfg.ood and cfg.ood.heldout else (),
    )


class Trainer:
    """One run: ``fit()`` trains for ``cfg.epochs`` epochs (or up to ``cfg.stop_after``), resuming from ``load_state_dict``.

    ``data`` replaces the data ``cfg`` names; with ``parallel`` the run is one replica of a
    data-parallel run: the trainer uses ``parallel.shard``'s view of the data and trains through
    ``parallel.replicate``'s ``Replica`` of the model.
    """

    def __init__(
        self, cfg: TrainConfig, data: Data | None = None, parallel: Parallelism | None = None
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        on_cuda = self.device.type == "cuda"
        self.bf16 = on_cuda if cfg.bf16 is None else cfg.bf16
        # channels_last on the CPU too: oneDNN's NHWC convolutions trained cnn_fc 30-50% and
        # ResNet-18 15-20% faster here than NCHW (BENCHMARKS.md, throughput)
        self.channels_last = True if cfg.channels_last is None else cfg.channels_last
        torch.manual_seed(cfg.seed)
        if data is None:
            data = config_data(cfg, self.device, self.channels_last)
        self.data: Data = parallel.shard(data) if parallel is not None else data
        self.model = config_model(cfg, self.data.info)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=memory_format)
        replica = (
            parallel.replicate(self.model, self.device)
            if parallel is not None
            else Replica(self.model)
        )
        self.use_compile = on_cuda if cfg.compile is None else cfg.compile
        self.forward: nn.Module = (
            torch.compile(replica.forward) if self.use_compile else replica.forward
        )
        self.ascent_sync = replica.ascent_sync
        self.method: Method = METHODS.get(cfg.method)
        self.optimizer = self.method.build_optimizer(cfg, self.model, self.data.split_size("train"))
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
            if cfg.schedule == "cosine"
            else None
        )
        built = LOSSES.get(cfg.loss).build(cfg)
        # a loss with state across epochs (AdaFocal): told each epoch's val predictions, saved
        self.loss_state: StatefulLoss | None = built if isinstance(built, StatefulLoss) else None
        loss: LossFn = built
        self.ascent_loss, self.descent_loss = self.method.losses(cfg, loss)
        if cfg.mimo is not None:  # the sum over the members' heads
            self.ascent_loss = mimo_loss(self.ascent_loss)
            self.descent_loss = mimo_loss(self.descent_loss)
        self.kl_weight = 0.0  # rank1: this step's annealed weight of the KL / train size
        if cfg.rank1 is not None:  # the ELBO: both SAM passes include the KL
            self.ascent_loss = self._with_kl(self.ascent_loss)
            self.descent_loss = self._with_kl(self.descent_loss)
        self.epochs_done = 0
        self.train_seconds = 0.0  # the "train_seconds" cost: training time, evaluation excluded
        self.diverged = False
        self.at_chance = False  # diverged by the chance guard, not by a non-finite loss
        self.history: list[dict[str, float]] = []
        self._predictions: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
        self._passes: SeededPasses | None = None  # inside ``evaluating()``

    # -- training -------------------------------------------------------------------------------

    @property
    def adafocal(self) -> Any:
        """AdaFocal's bins (``AdaFocalBins``) when the run's loss keeps them, else None."""
        return getattr(self.loss_state, "bins", None)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast for the training passes (``self.bf16``); evaluation never uses it."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def perturbed_backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The second pass of SAM and bSAM: the descent loss's gradient at the perturbed weights,
        with BatchNorm's running statistics frozen (the first pass already updated them)."""
        with frozen_batchnorm_stats(self.model):
            with self.autocast():
                loss = self.descent_loss(self.forward(x), y)
            loss.backward()

    def _sam_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SAM's step (``trainables.methods.steps.sam_step``), whatever the run's method."""
        return sam_step(self, x, y)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch (``Method.step``); returns the loss at the weights
        it started from (a device tensor; for bSAM, at its noisy sample of them)."""
        return self.method.step(self, x, y)

    def _with_kl(self, loss: LossFn) -> LossFn:
        def elbo(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return loss(logits, labels) + self.kl_weight * self.model.kl()

        return elbo

    def _set_kl_weight(self, step_in_epoch: int) -> None:
        """The authors' linear annealing: min(1, (step + 1) / annealing steps), divided by the
        train size (the KL is the whole train set's)."""
        cfg = self.cfg
        n = self.data.split_size("train")
        steps_per_epoch = max(1, train_steps(n, cfg.batch_size))
        anneal = cfg.rank1_kl_annealing_epochs or 0.8 * cfg.epochs
        step = self.epochs_done * steps_per_epoch + step_in_epoch
        self.kl_weight = min(1.0, (step + 1) / (steps_per_epoch * anneal)) / n

    def _mimo_generator(self, epoch_seed: int) -> torch.Generator | None:
        """MIMO's shuffles of this epoch: from the seed and the epochs done (a resumed run
        draws the same), apart from the data's own stream."""
        if self.cfg.mimo is None:
            return None
        generator = torch.Generator()
        generator.manual_seed(MIMO_SEED_OFFSET + epoch_seed)
        return generator

    def _mimo_indices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        assert cfg.mimo is not None
        return mimo_indices(
            batch, cfg.mimo, cfg.mimo_batch_repetitions, cfg.mimo_input_repetition, generator
        )

    def train_epoch(self, on_batch: Callable[[], None] | None = None) -> EpochRecord:
        """Train one epoch, calling ``on_batch`` after each step; a non-finite loss sets
        ``self.diverged`` (checked once, at the end)."""
        cfg = self.cfg
        start = time.perf_counter()
        self.model.train()
        total = torch.zeros((), device=self.device)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        batches = 0
        epoch_seed = cfg.seed * 100_003 + self.epochs_done
        members = self._mimo_generator(epoch_seed)
        for x, y in self.data.train_batches(cfg.batch_size, epoch_seed, augment=cfg.augment):
            if members is not None:  # built once per step: both SAM passes see one batch
                x, y = mimo_batch(x, y, self._mimo_indices(len(x), members))
            if cfg.rank1 is not None:  # every member sees the whole batch
                x, y = x.repeat(cfg.rank1, *([1] * (x.dim() - 1))), y.repeat(cfg.rank1)
                self._set_kl_weight(batches)
            loss = self.train_step(x, y)
            total += loss
            finite &= torch.isfinite(loss)
            batches += 1
            if on_batch is not None:
                on_batch()
        if self.scheduler is not None:
            self.scheduler.step()
        self.epochs_done += 1
        train_loss = (total / max(batches, 1)).item() / (cfg.mimo or 1)  # per member
        self.diverged = not bool(finite.item())
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        return EpochRecord(self.epochs_done, train_loss, seconds, self.train_seconds)

    # -- evaluation -----------------------------------------------------------------------------

    @property
    def eval_passes(self) -> int:
        """Stochastic passes averaged per prediction: bSAM's posterior samples, MC dropout's
        ``mc_samples``, or 1 (one deterministic pass)."""
        if self.cfg.rank1 is not None:
            return self.cfg.rank1_eval_samples
        passes = self.method.eval_passes(self.cfg)
        return self.cfg.mc_samples if passes is None else passes

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The model in eval mode for predictions. With stochastic passes (``eval_passes`` > 1,
        or a rank-1 BNN) each pass is one network drawn from the run's seed and the pass's index
        (``trainables.engine.passes``): MC dropout's masks, rank-1 factors and bSAM's posterior sample
        are shared by every image of the pass, so an image's prediction does not depend on its
        batch or the device, every evaluation draws the same ones, and training's random stream
        is untouched. BatchNorm stays in eval mode."""
        self.model.eval()
        self._passes = self.seeded_passes()
        try:
            yield
        finally:
            self._passes = None

    def seeded_passes(self) -> SeededPasses | None:
        """The run's stochastic evaluation passes (None: one deterministic pass)."""
        if self.eval_passes <= 1 and self.cfg.rank1 is None:  # rank1 samples even in one pass
            return None
        posterior = self.method.posterior(self.optimizer)
        return SeededPasses(
            self.model, self.cfg.seed, self.eval_passes, self.cfg.mc_samples > 1, posterior
        )

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a normalised batch, inside ``evaluating()``: one pass, or the log of
        the mean softmax of ``eval_passes`` seeded stochastic ones (logits whose softmax is the
        average, so every metric, the temperature and the evidence use it). Never under
        autocast: the temperature, NLL and evidence need float32 logits, not bf16's 8-bit
        mantissa; autocast is for training only."""
        passes = self._passes if self._passes is not None else self.seeded_passes()
        if passes is None:
            return self.model(x).float()
        return passes.logits(x)

    @torch.inference_mode()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits and labels of a whole split, in the split's fixed order, on the device
        (``eval_logits``: MC dropout's averaged ones when ``mc_samples > 1``)."""
        logits, labels = [], []
        with self.evaluating():
            for x, y in self.data.eval_batches(split, EVAL_BATCH):
                logits.append(self.eval_logits(x))
                labels.append(y)
        if not logits:
            raise ValueError(f"split {split!r} is empty")
        result = torch.cat(logits), torch.cat(labels)
        self._predictions[split] = (self.epochs_done, *result)
        return result

    def predictions(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict(split)``, reusing the logits already computed at this epoch."""
        cached = self._predictions.get(split)
        if cached is not None and cached[0] == self.epochs_done:
            return cached[1], cached[2]
        return self.predict(split)

    def evaluate(self, split: str, temperature: float | None = None) -> dict[str, float]:
        """Calibration metrics of a split (see ``calibration.calibration_report``)."""
        logits, labels = self.predictions(split)
        return calibration.calibration_report(
            logits, labels, self.data.info.num_classes, temperature=temperature
        )

    def evaluate_val(self) -> dict[str, float]:
        """``evaluate("val")`` and ``ece_ts``, its ECE after temperature scaling cross-fitted
        on val's two halves (``calibration.cross_fitted_ece_ts``; NaN under 2 samples)."""
        metrics = self.evaluate("val")
        logits, labels = self.predictions("val")
        metrics["ece_ts"] = (
            calibration.cross_fitted_ece_ts(logits, labels) if len(labels) >= 2 else math.nan
        )
        return metrics

    def fit_temperature(self) -> float:
        """Temperature fitted on val (1.0 when there is no val split)."""
        if self.data.split_size("val") == 0:
            return 1.0
        logits, labels = self.predictions("val")
        return calibration.fit_temperature(logits, labels)

    def final_metrics(self) -> dict[str, float]:
        """Test metrics, temperature fitted on val (``temperature``; ``temperature_at_bound``
        1.0 where the fit stopped on a bound, see ``calibration.temperature_at_bound``), and test
        metrics after temperature scaling."""
        temperature = self.fit_temperature()
        test = self.evaluate("test", temperature=temperature)
        out = {f"test_{k}": v for k, v in test.items()}
        out["temperature"] = temperature
        # 1.0 where the fit stopped on a bound (no calibration verdict); a number, not a bool, so
        # that it is logged and recorded like the temperature
        out["temperature_at_bound"] = float(calibration.temperature_at_bound(temperature))
        return out

    def fit(
        self,
        on_epoch: Callable[[Trainer, EpochRecord], None] | None = None,
        on_batch: Callable[[], None] | None = None,
        test_from: int = 0,
    ) -> RunResult:
        """Train the remaining epochs, calling ``on_batch`` after each step and ``on_epoch``
        after each epoch, then evaluate on test (also after every epoch from ``test_from``
        on, when it is not 0)."""
        start = time.perf_counter()
        final: dict[str, float] = {}
        while self.epochs_done < self.cfg.last_epoch and not self.diverged:
            record = self.train_epoch(on_batch)
            if not self.diverged and self.data.split_size("val") > 0:
                record.val = self.evaluate_val()
                if self.loss_state is not None:
                    self.loss_state.end_epoch(*self.predictions("val"))
                self._guard_chance(record)
            if not self.diverged and self.epochs_done == self.cfg.last_epoch:
                final = record.final = self.final_metrics()
            elif not self.diverged and (
                self.cfg.test_every_epoch or 0 < test_from <= self.epochs_done
            ):
                record.test = self.final_metrics()  # the same metrics, before the last epoch
            self.history.append(record.flat())
            if on_epoch is not None:
                on_epoch(self, record)
        if not final and not self.diverged:  # resumed from a checkpoint of the last epoch
            final = self.final_metrics()
        status = "diverged" if self.diverged else "completed"
        reason = diverged_reason(self.at_chance, self.epochs_done) if self.diverged else ""
        return RunResult(status, self.history, final, time.perf_counter() - start, reason)

    def chance_bound(self) -> float:
        """The val accuracy at or under which a run counts as still at chance."""
        return self.cfg.chance_factor / self.data.info.num_classes

    def _guard_chance(self, record: EpochRecord) -> None:
        """Stop a run still at chance after ``chance_epoch`` (before its last epoch, where
        stopping saves nothing) as a diverged one: ``diverged`` and ``at_chance`` set."""
        epoch = self.cfg.chance_epoch
        if not epoch or record.epoch != epoch or epoch >= self.cfg.last_epoch:
            return
        accuracy = record.val.get("accuracy")
        if accuracy is not None and accuracy <= self.chance_bound():
            self.diverged = self.at_chance = True

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-identically on CPU."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epochs_done": self.epochs_done,
            "train_seconds": self.train_seconds,
            "diverged": self.diverged,
            "at_chance": self.at_chance,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.model_dump(),
        }
        if self.loss_state is not None:  # under the loss's name ("adafocal")
            state[self.cfg.loss] = self.loss_state.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; the config must be the one that made the state (a
        setting added since, absent from an older checkpoint's, counts at its default)."""
        fields = type(self.cfg).model_fields
        defaults = {k: f.get_default(call_default_factory=True) for k, f in fields.items()}
        if {**defaults, **state["config"]} != self.cfg.model_dump():
            raise ValueError("checkpoint was made with a different config")
        self.model.load_state_dict(state["model"])
        self._predictions.clear()
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epochs_done = state["epochs_done"]
        self.train_seconds = state.get("train_seconds", 0.0)  # absent in older checkpoints
        self.diverged = state["diverged"]
        self.at_chance = state.get("at_chance", False)  # absent in older checkpoints
        self.history = list(state["history"])
        if self.loss_state is not None:
            self.loss_state.load_state_dict(state[self.cfg.loss])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


@dataclass
class RunResult:
    """The outcome of ``Trainer.fit``: ``completed`` or ``diverged`` (and why), per-epoch rows,
    test metrics."""

    status: str
    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    reason: str = ""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` atomically: a crash mid-write never leaves a truncated checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without executing anything from it (``weights_only=True``)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
