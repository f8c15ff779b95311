"""What a training loss is to sharpcal: the API a plugin's loss implements.

A loss maps ``(logits [B, K], labels [B])`` to the batch mean (float32 inside, vectorised, no host
sync). A stateless loss returns that function from ``build``; a loss with state across epochs
(AdaFocal) returns a ``StatefulLoss``, which also learns from each epoch's validation predictions
and is saved in checkpoints. A new loss is one file::

    from pydantic import BaseModel, Field
    from trainables.losses import Loss, register_loss

    class PolySettings(BaseModel):
        poly_epsilon: float = Field(1.0, ge=-1.0, le=10.0)

    @register_loss("poly1")
    class Poly1(Loss):
        title = "Poly-1"
        settings = PolySettings                          # flat keys of a run: poly_epsilon: 2

        def build(self, cfg):
            eps = self.options(cfg).poly_epsilon
            def poly1(logits, labels):
                log_p = logits.float().log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
                return (-log_p + eps * (1 - log_p.exp())).mean()
            return poly1

No torch is imported here: the registry (``trainables.losses``) stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from trainables.parts import Part, labelled, number

if TYPE_CHECKING:
    from torch import Tensor

    LossFn = Callable[[Tensor, Tensor], Tensor]


class StatefulLoss:
    """A loss with state across epochs (AdaFocal's per-bin gammas): called as a loss, it is
    told each epoch's validation predictions and is saved in the run's checkpoints under the
    loss's name."""

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def end_epoch(self, val_logits: Tensor, val_labels: Tensor) -> None:
        """Learn from this epoch's validation logits and labels (float32, on the device)."""

    def state_dict(self) -> dict[str, Any]:
        """The state a resumed run needs (tensors and numbers: loaded with weights_only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``."""


class Loss(Part):
    """A training loss (``loss:`` of a run): registered with ``@register_loss(name)``.

    Subclasses implement ``build``; the rest has defaults.

    Class attributes:
        title: its name in tables ("Focal"); the plain loss (cross-entropy) adds nothing to a
            row label.
        keys: the built-in settings that define it, beside its own ``settings``
            (``("focal_gamma",)``): its label names them.
        plain: whether it is the plain likelihood (cross-entropy), the loss a method that
            brings its own losses (CSAM) accepts.
        needs_val: whether it learns from the validation split (``val_fraction > 0``).
    """

    keys: ClassVar[tuple[str, ...]] = ()
    plain: ClassVar[bool] = False
    needs_val: ClassVar[bool] = False

    name: str = ""  # set by ``register_loss``

    def check(self, cfg: Any) -> None:
        """Rules that tie the loss to the run's other settings: raise ``ValueError`` with one
        line. The default refuses an empty validation split for a ``needs_val`` loss."""
        if self.needs_val and cfg.val_fraction == 0:
            raise ValueError(
                f"loss={self.name} updates its state from the validation split; set "
                "val_fraction > 0"
            )

    @classmethod
    def defining_keys(cls) -> tuple[str, ...]:
        """The settings that define the loss: ``keys`` and its own settings' keys."""
        return (*cls.keys, *cls.setting_names())

    def build(self, cfg: Any) -> LossFn | StatefulLoss:
        """The loss of a run with settings ``cfg``: a function ``(logits, labels) -> mean``, or
        a ``StatefulLoss``. Called once per run."""
        raise NotImplementedError

    def label(self, cfg: Any, g: Callable[[float], str] = number) -> str:
        """The loss's part of a row label, e.g. ``Focal (γ=3)``; "" for the plain loss."""
        if self.plain:
            return ""
        return labelled(self.title, cfg, self.label_keys(), g)

    def label_keys(self) -> tuple[str, ...]:
        """The settings the label names (by default its ``defining_keys``)."""
        return self.defining_keys()


def check_loss(name: str, part: object) -> None:
    """The loss contract, checked when a loss registers (``ValueError``: why not)."""
    if not isinstance(part, Loss):
        raise TypeError("register a subclass of trainables.losses.Loss")
    if type(part).build is Loss.build:
        raise ValueError("it does not implement Loss.build")
