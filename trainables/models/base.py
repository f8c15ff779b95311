"""What a model is to sharpcal: the API a plugin's model implements.

A model is built for the data of a run: ``num_classes`` classes of ``in_channels`` x
``image_size`` x ``image_size`` normalised float images; in eval mode it maps ``[B, C, H, W]`` to
float logits ``[B, num_classes]``. A plugin registers either a builder function or a plain
``nn.Module`` class; its parameters say what it is given (any of ``num_classes``,
``in_channels``, ``image_size``, ``cfg`` — the run's settings, for a plugin's own keys)::

    from torch import nn
    from trainables.models import register_model

    @register_model("my_net")
    class MyNet(nn.Module):
        def __init__(self, num_classes: int, in_channels: int = 3):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.head(self.body(x))

The wrappers of a run apply to it as to the built-in models: MC dropout puts a dropout layer
before its last ``nn.Linear``; MIMO builds it with M times the input channels and classes (it
must take ``in_channels``); a rank-1 BNN replaces its ``nn.Conv2d`` and ``nn.Linear`` layers.
A subclass of ``Model`` (``build``) is the general form. No torch is imported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from trainables.parts import Part

if TYPE_CHECKING:
    from torch import nn

# What a builder may ask for, by parameter name.
ARGUMENTS = ("num_classes", "in_channels", "image_size", "cfg")


class Model(Part):
    """A registered model (``model:`` of a run).

    Class attributes:
        takes_channels: whether it is built for any number of input channels (MIMO needs M
            times the data's); False refuses ``mimo`` with one line.
    """

    takes_channels: ClassVar[bool] = True

    name: str = ""  # set by ``register_model``

    def build(self, cfg: Any, num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
        """The untrained network for ``num_classes`` classes of images ``in_shape`` =
        (channels, height, width); ``cfg``: the run's settings (None outside a run)."""
        raise NotImplementedError

    def check(self, cfg: Any) -> None:
        """Rules that tie the model to the run's other settings (``ValueError``, one line)."""
        if cfg.mimo is not None and not self.takes_channels:
            raise ValueError(
                f"mimo builds model={self.name} with {cfg.mimo} times the input channels, but "
                "it does not take in_channels"
            )


class BuilderModel(Model):
    """A model registered as a function or an ``nn.Module`` class, called with the arguments
    among ``ARGUMENTS`` that its parameters name."""

    def __init__(self, builder: Callable[..., nn.Module]) -> None:
        self.builder = builder
        self.__doc__ = builder.__doc__
        self.title = getattr(builder, "title", "") or builder.__name__
        self.description = (inspect.getdoc(builder) or "").split("\n")[0]
        self.accepts = _accepted(builder)
        self.takes_channels = "in_channels" in self.accepts  # type: ignore[misc]
        # where it was defined: the registry's origin and re-registration check read these
        self.__module__ = builder.__module__
        self.__qualname__ = builder.__qualname__

    def build(self, cfg: Any, num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
        given = {
            "num_classes": num_classes,
            "in_channels": in_shape[0],
            "image_size": in_shape[1],
            "cfg": cfg,
        }
        return self.builder(**{k: v for k, v in given.items() if k in self.accepts})


def _accepted(builder: Callable[..., Any]) -> tuple[str, ...]:
    """The ``ARGUMENTS`` ``builder`` takes; ``ValueError`` for one it needs and is not given."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        raise ValueError("its parameters cannot be read (inspect.signature)") from None
    accepts = []
    for name, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in ARGUMENTS:
            accepts.append(name)
        elif param.default is param.empty:
            raise ValueError(
                f"its parameter {name!r} has no default and is not one of {', '.join(ARGUMENTS)}"
            )
    if "num_classes" not in accepts:
        raise ValueError("it must take num_classes (the logits it returns)")
    return tuple(accepts)


def check_model(name: str, part: object) -> None:
    """The model contract, checked when a model registers (``ValueError``: why not)."""
    if not isinstance(part, Model):
        raise TypeError("register a builder function, an nn.Module class or a Model subclass")
    if type(part).build is Model.build:
        raise ValueError("it does not implement Model.build")
