"""Models: the registered architectures (``zoo``), any timm model by name, and the MIMO and
rank-1 BNN wrappers.

``MODELS`` is the registry of models by name; ``@register_model("name")`` on a builder function,
a plain ``nn.Module`` class or a ``Model`` subclass (``trainables.models.base``) registers it, the
built-in ones (``zoo``) exactly as a plugin's. Names not registered are timm's
(``timm:<name>`` or a bare timm name). Importing this package imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from trainables.errors import PluginError
from trainables.models.base import BuilderModel, Model, check_model
from trainables.parts import SETTING_REGISTRIES, builtin_settings, check_settings_free
from trainables.registry import Registry, importer

T = TypeVar("T")


def _check(name: str, part: Model) -> None:
    check_model(name, part)
    if getattr(part, "settings", None) is not None:  # builtin_settings imports the config
        check_settings_free("model", name, part, builtin_settings())


MODELS: Registry[Model] = Registry("model", check=_check, load=importer("trainables.models.zoo"))
SETTING_REGISTRIES.append(MODELS)


def register_model(name: str) -> Callable[[T], T]:
    """``@register_model("name")`` on a builder function, an ``nn.Module`` class or a ``Model``
    subclass registers it under ``name`` (a one-line ``PluginError`` when the name is taken or
    it breaks the contract) and returns it unchanged."""

    def decorate(obj: T) -> T:
        where = getattr(obj, "__module__", "?")
        if isinstance(obj, type) and issubclass(obj, Model):
            part: Model = obj()
        elif callable(obj):
            try:
                part = BuilderModel(obj)
            except ValueError as err:
                raise PluginError(
                    f"model {name!r} from {where} does not keep the model contract: {err}"
                ) from None
        else:
            raise PluginError(
                f"model {name!r} from {where}: register a builder function, an nn.Module class "
                "or a Model subclass"
            )
        part.name = name
        MODELS.register(name, part, origin=where)
        return obj

    return decorate


def __getattr__(name: str) -> Any:
    # ``trainables.models.ModelError``: the path a failed trial's pickled error names when it was
    # saved before issue 35
    if name == "ModelError":
        from trainables.models.zoo import ModelError

        return ModelError
    raise AttributeError(f"module 'trainables.models' has no attribute {name!r}")


__all__ = ["MODELS", "Model", "register_model"]
