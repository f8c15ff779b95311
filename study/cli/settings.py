"""Command-line settings: ``--set key=value`` pairs, parsed as YAML scalars and never evaluated."""

from __future__ import annotations

import re
from typing import Any

import yaml

from trainables.errors import InputError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def parse_set(item: str) -> tuple[str, Any]:
    """``"rho=0.1"`` -> ``("rho", 0.1)``; the value is read with ``yaml.safe_load``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise InputError(f"--set {item!r}: expected key=value, e.g. --set rho=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise InputError(f"--set {item!r}: the value is not a valid YAML scalar") from None
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("[", "{")):
        value = raw
    return key, value


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """All ``--set`` pairs as one dict; a later pair overrides an earlier one."""
    return dict(parse_set(item) for item in items or [])
