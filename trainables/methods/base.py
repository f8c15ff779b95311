"""What a training method is to sharpcal: the API a plugin's method implements.

A method builds the optimizer of a run and takes one training step with it; it may own the
losses of its two passes (CSAM), the number of stochastic passes at evaluation and a posterior to
sample them from (bSAM), rules that tie it to other settings, and its row label in the tables.
A new method is one file::

    from pydantic import BaseModel, Field
    from trainables.methods import Method, register_method
    from trainables.methods.optim import base_optimizer, sam_param_groups
    from trainables.methods.sam import SAM
    from trainables.methods.steps import sam_step

    class MySamSettings(BaseModel):
        my_alpha: float = Field(0.5, ge=0.0, le=1.0)

    @register_method("my_sam")
    class MySam(Method):
        title = "My SAM"
        description = "SAM with a damped radius"
        settings = MySamSettings                      # flat keys of a run: my_alpha: 0.3

        def build_optimizer(self, cfg, model, n_train):
            alpha = self.options(cfg).my_alpha
            base, kwargs = base_optimizer(cfg)
            return SAM(sam_param_groups(model, False), base, rho=cfg.rho * alpha, **kwargs)

        def step(self, ctx, x, y):
            return sam_step(ctx, x, y)

The run's settings ``cfg`` are a ``trainables.config.TrainConfig``: its built-in keys are
attributes (``cfg.rho``, ``cfg.lr``), a part's own ones are read with ``self.options(cfg)``.
No torch is imported here: the registry (``trainables.methods``) stays cheap to import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from trainables.parts import Part, labelled, number

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    LossFn = Callable[[Tensor, Tensor], Tensor]


class StepContext(Protocol):
    """What a method's ``step`` is given by the trainer (``trainables.engine.loop.Trainer``).

    ``forward`` is the model as training calls it (compiled, or one replica of a data-parallel
    run); ``model`` the bare model (its BatchNorms, its parameters). The losses are the method's
    own pair (``Method.losses``) already wrapped by the model's ensembles (MIMO's sum over
    members, rank-1's KL term); ``cfg`` the run's settings (a part's own: ``Part.options``)."""

    cfg: Any
    forward: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ascent_loss: LossFn
    descent_loss: LossFn

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast for a training pass (or nothing), as the run asks."""
        ...

    def ascent_sync(self) -> contextlib.AbstractContextManager[Any]:
        """Around the ascent pass of a data-parallel run: DDP's ``no_sync`` for a per-replica
        perturbation (``sync_perturbation: false``), else nothing."""
        ...

    def perturbed_backward(self, x: Tensor, y: Tensor) -> None:
        """The descent pass at perturbed weights: ``descent_loss``'s gradient with BatchNorm's
        running statistics frozen (the first pass already updated them)."""
        ...


class Method(Part):
    """A training method (``method:`` of a run): registered with ``@register_method(name)``.

    Subclasses implement ``build_optimizer`` and ``step``; the rest has defaults.

    Class attributes:
        title: its name in tables ("SAM").
        keys: the built-in settings that define it, beside its own ``settings``
            (``("rho",)`` for SAM): its row label names them, and the regime map does not
            take them for a training budget.
        data_parallel: whether it trains with ``resources.workers > 1`` (DDP replicas);
            False refuses such a space with ``one_worker_reason``.
    """

    keys: ClassVar[tuple[str, ...]] = ()
    data_parallel: ClassVar[bool] = True
    one_worker_reason: ClassVar[str] = ""

    name: str = ""  # set by ``register_method``

    # -- validation ---------------------------------------------------------------------------

    def check(self, cfg: Any) -> None:
        """Rules that tie the method to the run's other settings: raise ``ValueError`` with one
        line (what to change) when ``cfg`` breaks one. Called when a run's settings are
        validated, before any work."""

    @classmethod
    def defining_keys(cls) -> tuple[str, ...]:
        """The settings that define the method: ``keys`` and its own settings' keys."""
        return (*cls.keys, *cls.setting_names())

    # -- training -----------------------------------------------------------------------------

    def build_optimizer(self, cfg: Any, model: nn.Module, n_train: int) -> torch.optim.Optimizer:
        """The run's optimizer over ``model``'s trainable parameters (``n_train``: the size of
        the whole train split). Its ``param_groups`` carry ``lr``: the cosine schedule scales
        it once per epoch. Its ``state_dict`` is the method's whole state in a checkpoint."""
        raise NotImplementedError

    def losses(self, cfg: Any, loss: LossFn) -> tuple[LossFn, LossFn]:
        """The losses of the ascent pass and of the descent pass (one-pass methods use the
        descent loss) given the run's ``loss``: by default that loss for both."""
        return loss, loss

    def step(self, ctx: StepContext, x: Tensor, y: Tensor) -> Tensor:
        """One optimisation step on the batch ``(x, y)``; returns the loss at the weights the
        step started from, detached, on the device (no host sync). Ready-made steps:
        ``trainables.methods.steps`` (``sgd_step``, ``sam_step``, ``bsam_step``)."""
        raise NotImplementedError

    # -- evaluation ---------------------------------------------------------------------------

    def eval_passes(self, cfg: Any) -> int | None:
        """Stochastic passes averaged per prediction when the method samples its weights at
        evaluation (bSAM's ``bsam_samples``); None leaves it to the model (MC dropout)."""
        return None

    def posterior(self, optimizer: torch.optim.Optimizer) -> Any | None:
        """What the evaluation passes sample weights from (an object with ``params()`` and a
        ``sampled_weights(noise)`` context, as ``BSAM``), or None."""
        return None

    # -- reporting ----------------------------------------------------------------------------

    def label(self, cfg: Any, g: Callable[[float], str] = number) -> str:
        """The method's part of a row label: its title and the values of its ``label_keys``,
        e.g. ``SAM (ρ=0.05)``; ``g`` formats a number."""
        return labelled(self.title, cfg, self.label_keys(), g)

    def label_keys(self) -> tuple[str, ...]:
        """The settings the label names (by default its ``defining_keys``)."""
        return self.defining_keys()


def check_method(name: str, part: object) -> None:
    """The method contract, checked when a method registers (``ValueError``: why not)."""
    if not isinstance(part, Method):
        raise TypeError("register a subclass of trainables.methods.Method")
    cls = type(part)
    for hook in ("build_optimizer", "step"):
        if getattr(cls, hook) is getattr(Method, hook):
            raise ValueError(f"it does not implement Method.{hook}")
    if not cls.data_parallel and not cls.one_worker_reason:
        raise ValueError("a method with data_parallel = False gives its one_worker_reason")
