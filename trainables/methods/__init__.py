"""Methods: how a training step updates the weights (SGD, SAM and its family, bSAM).

``METHODS`` is the registry of methods by name; ``@register_method("name")`` on a subclass of
``Method`` (``trainables.methods.base``) registers an instance of it, the built-in ones
(``sgd``, ``sam_family``, ``bayesian_sam``) exactly as a plugin's. Importing this package
imports no torch: the built-in methods load when the registry is first read.
"""

from __future__ import annotations

from trainables.methods.base import Method, StepContext, check_method
from trainables.parts import (
    SETTING_REGISTRIES,
    builtin_settings,
    check_settings_free,
    instance_registrar,
)
from trainables.registry import Registry, importer


def _check(name: str, part: Method) -> None:
    check_method(name, part)
    if getattr(part, "settings", None) is not None:  # builtin_settings imports the config
        check_settings_free("method", name, part, builtin_settings())


METHODS: Registry[Method] = Registry(
    "method",
    check=_check,
    load=importer(
        "trainables.methods.sgd", "trainables.methods.sam_family", "trainables.methods.bayesian_sam"
    ),
)
SETTING_REGISTRIES.append(METHODS)


register_method = instance_registrar(METHODS, lambda: Method, "trainables.methods.Method")
"""``@register_method("name")`` on a ``Method`` subclass registers one instance of it under
``name`` (a one-line ``PluginError`` when the name is taken or the class breaks the contract)."""


__all__ = ["METHODS", "Method", "StepContext", "register_method"]
