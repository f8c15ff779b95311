"""Losses: what a step minimises (cross-entropy, label smoothing, focal, FLSD-53, AdaFocal;
CSAM's descent loss belongs to its method).

``LOSSES`` is the registry of losses by name; ``@register_loss("name")`` on a subclass of ``Loss``
(``trainables.losses.base``) registers an instance of it, the built-in ones (``standard``,
``adafocal``) exactly as a plugin's. Importing this package imports no torch.
"""

from __future__ import annotations

from trainables.losses.base import Loss, StatefulLoss, check_loss
from trainables.parts import (
    SETTING_REGISTRIES,
    builtin_settings,
    check_settings_free,
    instance_registrar,
)
from trainables.registry import Registry, importer


def _check(name: str, part: Loss) -> None:
    check_loss(name, part)
    if getattr(part, "settings", None) is not None:  # builtin_settings imports the config
        check_settings_free("loss", name, part, builtin_settings())


LOSSES: Registry[Loss] = Registry(
    "loss", check=_check, load=importer("trainables.losses.standard", "trainables.losses.adafocal")
)
SETTING_REGISTRIES.append(LOSSES)


register_loss = instance_registrar(LOSSES, lambda: Loss, "trainables.losses.Loss")
"""``@register_loss("name")`` on a ``Loss`` subclass registers one instance of it under
``name`` (a one-line ``PluginError`` when the name is taken or the class breaks the contract)."""


__all__ = ["LOSSES", "Loss", "StatefulLoss", "register_loss"]
