"""What every part has in common, whatever its kind (method, loss, model, dataset, metric, OOD
split; the driver's calibrators, schedulers and report sections): a name it is registered under,
a title for tables and the manual, a one-line description, the paper or code it follows, and —
for a user's part — its own settings.

A part's settings are flat keys of a run's settings, as the built-in parts' are (``rho`` is
SAM's, ``focal_gamma`` the focal loss's): a plugin declares them as a pydantic model
(``settings``), and a space file sets or searches them like any other
(``fixed: {method: my_sam, my_alpha: 0.3}``). Two parts cannot declare the same key, nor a key of
the built-in settings (checked when a part registers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from trainables.errors import PluginError
from trainables.registry import Registry

C = TypeVar("C", bound=type)


class Part:
    """A registered part. Subclasses (one per kind) add what their kind needs."""

    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the paper or code it follows, for the manual's tables
    settings: ClassVar[type[BaseModel] | None] = None  # a plugin part's own settings

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The keys of the part's own settings."""
        return tuple(cls.settings.model_fields) if cls.settings is not None else ()

    def options(self, cfg: Any) -> BaseModel | None:
        """The part's own settings as ``cfg`` gives them (defaults filled), or None."""
        if self.settings is None:
            return None
        extra = getattr(cfg, "model_extra", None) or {}
        given = {k: extra[k] for k in self.setting_names() if k in extra}
        return self.settings.model_validate(given)


# The trial-side registries whose parts may declare settings of a run (filled by their kinds'
# modules as they are imported; ``trainables.config`` imports them all).
SETTING_REGISTRIES: list[Registry[Any]] = []


def declared_settings() -> dict[str, tuple[Registry[Any], str, type[BaseModel]]]:
    """Every setting a registered part declares: key -> (its registry, the part's name, the
    part's settings model)."""
    found: dict[str, tuple[Registry[Any], str, type[BaseModel]]] = {}
    for registry in SETTING_REGISTRIES:
        for name, part in registry.items():
            model = getattr(part, "settings", None)
            if model is not None:
                for key in model.model_fields:
                    found[key] = (registry, name, model)
    return found


def check_settings_free(kind: str, name: str, part: object, builtin: set[str]) -> None:
    """``ValueError`` when ``part`` declares a setting a built-in setting or another part holds
    (for a kind's registration check)."""
    model = getattr(part, "settings", None)
    if model is None:
        return
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError("its settings must be a pydantic BaseModel class")
    taken = declared_settings()
    for key in model.model_fields:
        if key in builtin:
            raise ValueError(f"its setting {key!r} is a built-in setting: give it another name")
        if key in taken and taken[key][1] != name:
            raise ValueError(f"its setting {key!r} is {taken[key][0].kind} {taken[key][1]!r}'s")
        field = model.model_fields[key]
        if field.is_required():
            raise ValueError(f"its setting {key!r} needs a default")


def builtin_settings() -> set[str]:
    """The built-in settings of a run (``TrainConfig``'s keys), for a registration check.

    Imported by name when a part registers: ``trainables.config`` imports the kinds' registries,
    so the kinds' packages cannot import it."""
    import importlib

    config = importlib.import_module("trainables.config")
    return set(config.TrainConfig.model_fields)


# -- labels (a part's name in a table row: ``SAM (ρ=0.05)``) -------------------------------------

# Greek letters of the settings that papers write so.
SYMBOLS = {"rho": "ρ", "gamma": "γ", "eta": "η", "focal_gamma": "γ", "ls_epsilon": "ε"}


def number(value: float, digits: int = 3) -> str:
    """A number of a label at ``digits`` significant figures (``0.05``, ``1.58``)."""
    return f"{value:.{digits}g}"


def setting(cfg: Any, key: str) -> Any:
    """Setting ``key`` of a run's settings ``cfg``: a built-in one or a part's own."""
    if key in type(cfg).model_fields:
        return getattr(cfg, key)
    return (getattr(cfg, "model_extra", None) or {}).get(key)


def labelled(title: str, cfg: Any, keys: tuple[str, ...], g: Any = number) -> str:
    """``title (k=v, ...)`` for the settings ``keys`` of ``cfg`` (floats through ``g``)."""
    shown = []
    for key in keys:
        value = setting(cfg, key)
        shown.append(f"{SYMBOLS.get(key, key)}={g(value) if isinstance(value, float) else value}")
    return f"{title} ({', '.join(shown)})" if shown else title


def instance_registrar(
    registry: Registry[Any], base: Callable[[], type], base_path: str
) -> Callable[[str], Callable[[C], C]]:
    """The ``@register_<kind>("name")`` decorator of a kind whose parts are subclasses of
    ``base()`` (imported when first used): it registers one instance of the class under
    ``name`` and returns the class; anything else is a one-line ``PluginError`` naming
    ``base_path``."""

    def register(name: str) -> Callable[[C], C]:
        def decorate(cls: C) -> C:
            if not (isinstance(cls, type) and issubclass(cls, base())):
                raise PluginError(
                    f"{registry.kind} {name!r} from {getattr(cls, '__module__', '?')}: "
                    f"register a subclass of {base_path}"
                )
            part = cls()
            part.name = name
            registry.register(name, part)
            return cls

        return decorate

    return register
