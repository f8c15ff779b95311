"""Registries by name, one per kind of part (dataset, model, method, loss, metric, OOD split;
the driver's calibrators, schedulers and report sections): what a space file, a ``--set`` or a
plugin names is looked up here, and everything downstream — validation and its messages, the
trial lines, compare's labels, the report, the manual's tables — reads the registry, never a list
of its own. Built-in parts register themselves on import exactly as a user's plugin does.

A registration is checked at once: the name is a plain name, not taken by another part (a
plugin cannot shadow a built-in), and the part keeps its kind's contract (the kind's ``check``);
any of these is a one-line ``PluginError`` naming the part and where it came from.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from trainables.errors import InputError, PluginError

P = TypeVar("P")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
BUILTIN_PACKAGES = ("trainables.", "study.", "search_spaces.")
REGISTRIES: list[Registry[Any]] = []  # every registry made, in order


def origin_of(part: object) -> str:
    """The module a part was defined in (its plugin, or sharpcal's own module)."""
    module = getattr(part, "__module__", None) or type(part).__module__
    return str(module)


def _same(a: object, b: object) -> bool:
    """The same part registered twice (a module imported again): same definition."""
    if a is b:
        return True
    key = lambda p: (origin_of(p), getattr(p, "__qualname__", type(p).__qualname__))  # noqa: E731
    return key(a) == key(b)


class Registry(Generic[P]):
    """Parts of one ``kind`` by name, in registration order.

    ``check(name, part)`` is the kind's contract: it raises ``ValueError`` (or ``TypeError``)
    with the reason a part does not keep it. ``load`` imports the built-in parts, once, before
    the registry is first read (so importing a registry module imports no part and no torch).
    """

    def __init__(
        self,
        kind: str,
        check: Callable[[str, P], None] | None = None,
        load: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self._check = check
        self._load = load
        self._loaded = load is None
        self._parts: dict[str, P] = {}
        self._origins: dict[str, str] = {}
        REGISTRIES.append(self)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._load is not None
            self._load()

    def register(self, name: str, part: P, origin: str | None = None) -> P:
        """Add ``part`` under ``name``; returns it. ``PluginError`` (one line) for a bad name, a
        name another part holds, or a part that does not keep the kind's contract."""
        where = origin or origin_of(part)
        if not isinstance(name, str) or not NAME.match(name):
            raise PluginError(
                f"{self.kind} {name!r} from {where}: a part's name is 1-48 lower-case letters, "
                "digits and '_', starting with a letter"
            )
        self._ensure_loaded()
        held = self._parts.get(name)
        if held is not None:
            if _same(held, part):
                self._parts[name] = part
                return part
            raise PluginError(
                f"{self.kind} {name!r} from {where} is already registered by "
                f"{self._origins[name]}: give yours another name"
            )
        if self._check is not None:
            try:
                self._check(name, part)
            except (ValueError, TypeError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise PluginError(
                    f"{self.kind} {name!r} from {where} does not keep the {self.kind} "
                    f"contract: {reason}"
                ) from None
        self._parts[name] = part
        self._origins[name] = where
        return part

    def __call__(self, name: str) -> Callable[[P], P]:
        """``@REGISTRY("name")`` registers what it decorates."""

        def decorate(part: P) -> P:
            return self.register(name, part)

        return decorate

    def get(self, name: str) -> P:
        """The part named ``name``; ``InputError`` (one line, the known names) when none is."""
        self._ensure_loaded()
        try:
            return self._parts[name]
        except (KeyError, TypeError):
            raise InputError(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The message for a name no part has: what is known, and how to add one."""
        return (
            f"unknown {self.kind} {name!r}: known are {', '.join(self.names())} (a plugin can "
            f"register more: see 'Extending sharpcal' in the manual)"
        )

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (built-ins first)."""
        self._ensure_loaded()
        return tuple(self._parts)

    def items(self) -> list[tuple[str, P]]:
        self._ensure_loaded()
        return list(self._parts.items())

    def values(self) -> list[P]:
        self._ensure_loaded()
        return list(self._parts.values())

    def unregister(self, name: str) -> None:
        """Remove a user's part (a test's, or a plugin reloaded in one process); a built-in part
        stays (``PluginError``)."""
        if self.builtin(name):
            raise PluginError(f"{self.kind} {name!r} is one of sharpcal's own: it stays")
        self._parts.pop(name, None)
        self._origins.pop(name, None)

    def origin(self, name: str) -> str:
        """The module that registered ``name``."""
        self._ensure_loaded()
        return self._origins[name]

    def builtin(self, name: str) -> bool:
        """Whether ``name`` is one of sharpcal's own parts."""
        return self.origin(name).startswith(BUILTIN_PACKAGES)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._parts)})"


def importer(*modules: str) -> Callable[[], None]:
    """A ``load`` that imports ``modules`` (the built-in parts of a kind)."""

    def load() -> None:
        import importlib

        for module in modules:
            if module not in sys.modules:
                importlib.import_module(module)

    return load
