"""The registry of OOD / shift splits (``SPLITS``, ``register_split``) and their base class.

A split is evaluated once on the final model and written as its own evidence split; its metrics
are prefixed by its name. Each split declares its key in the run's ``ood`` section
(``section_key``), the pydantic model of that section (``section``), whether it is a detection
split (images of other classes: AUROC/AUPR against the test split) or a shifted copy of the test
split (accuracy and ECE per corruption x severity), a static ``check`` run before training and
its ``evaluate``. A user's split is one file with ``@register_split("name")`` on a ``Split``
subclass. Importing this module imports no torch: the built-in splits load when the registry is
first read, and import their evaluation code only when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from trainables.errors import PluginError
from trainables.parts import Part
from trainables.registry import NAME, Registry, importer

S = TypeVar("S", bound=type)
DETECTION_METRICS = ("auroc", "aupr", "auroc_entropy", "aupr_entropy")
SHIFT_METRICS = ("accuracy", "ece", "ece_ts")  # the means over corruption x severity


class Split(Part):
    """One OOD or shift split. Subclasses set ``section_key``, ``section`` and ``detection`` and
    implement ``evaluate`` (and usually ``check``)."""

    name: str = ""  # the registered name: the evidence split and the metrics' prefix
    section_key: ClassVar[str] = ""  # its key in the ``ood`` section
    section: ClassVar[type[BaseModel]]  # the model of that section
    detection: ClassVar[bool] = True  # images of other classes; False: a shifted test split

    def check_section(self, cfg: Any) -> None:
        """Raise ``ValueError`` when the section ``cfg`` is invalid on its own (run when the
        ``ood`` section is validated; the message starts with the section key)."""

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        """Raise a one-line ``DataError`` unless the split can be evaluated for a model trained
        on ``info`` (a ``DatasetInfo``), reading file headers and listings only. ``settings`` is
        the whole ``ood`` section, for rules across splits."""

    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> Any:
        """The split evaluated on ``trainer``'s current model: an ``ood.OodResult`` whose
        metrics are ``metric_names(cfg)``."""
        raise NotImplementedError

    def metric_names(self, cfg: Any) -> list[str]:
        """The metric names ``evaluate`` reports for the section ``cfg``."""
        if self.detection:
            return [f"{self.name}_{m}" for m in DETECTION_METRICS]
        names = [f"{self.name}_{m}" for m in SHIFT_METRICS]
        for s in getattr(cfg, "severities", ()):
            names += [f"{self.name}_s{s}_accuracy", f"{self.name}_s{s}_ece"]
        return names


def _check(name: str, part: Any) -> None:
    if not isinstance(part, Split):
        raise TypeError("register a subclass of trainables.evaluation.Split")
    key = part.section_key
    if not isinstance(key, str) or not NAME.match(key):
        raise ValueError(f"its section_key {key!r} is not a plain name such as 'svhn'")
    section = getattr(part, "section", None)
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        raise ValueError("its section must be a pydantic BaseModel class")
    if type(part).evaluate is Split.evaluate:
        raise ValueError("it does not implement evaluate(trainer, cfg, temperature)")
    if not isinstance(part.detection, bool):
        raise ValueError("its detection must be True or False")
    for other, held in SPLITS.items():
        if held.section_key == key and other != name:
            raise ValueError(f"its section_key {key!r} is taken by split {other!r}")


SPLITS: Registry[Split] = Registry(
    "OOD split", check=_check, load=importer("trainables.evaluation.builtin_splits")
)


def register_split(name: str) -> Callable[[S], S]:
    """``@register_split("name")`` on a ``Split`` subclass registers one instance of it under
    ``name`` (a one-line ``PluginError`` when the name or its section key is taken or the class
    breaks the contract) and returns the class."""

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Split)):
            raise PluginError(
                f"OOD split {name!r} from {getattr(cls, '__module__', '?')}: register a subclass "
                "of trainables.evaluation.Split"
            )
        part = cls()
        part.name = name
        SPLITS.register(name, part, origin=cls.__module__)
        return cls

    return decorate


def ood_splits() -> tuple[str, ...]:
    """Every split, in evaluation order (the built-ins first)."""
    return SPLITS.names()


def detection_splits() -> tuple[str, ...]:
    """The splits of images from other classes (detection metrics)."""
    return tuple(n for n, s in SPLITS.items() if s.detection)


def shift_splits() -> tuple[str, ...]:
    """The shifted copies of the test split (accuracy and ECE per corruption x severity)."""
    return tuple(n for n, s in SPLITS.items() if not s.detection)


def ood_section_key(split: str) -> str:
    """The key of OOD split ``split`` in the ``ood`` section."""
    if split in SPLITS:
        return SPLITS.get(split).section_key
    return split.removeprefix("ood_")
