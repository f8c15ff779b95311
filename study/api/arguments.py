"""The types of the Python API's arguments, checked where they come in (``study.api.study``).

Each check raises ``InputError`` with one line naming the argument, what it got and what it
takes, so a wrong type never surfaces as a ``TypeError`` or ``AttributeError`` deep inside.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from study.api.inputs import InputError
from trainables.messages import shown


def _got(value: Any) -> str:
    return f"got {type(value).__name__} {shown(value)}"


def optional_str(value: Any, what: str) -> str | None:
    """``value`` when it is a string or None."""
    if value is not None and not isinstance(value, str):
        raise InputError(f"{what} must be a string or None ({_got(value)})")
    return value


def required_str(value: Any, what: str) -> str:
    """``value`` when it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty string ({_got(value)})")
    return value


def storage_arg(value: Any, what: str = "storage") -> str | None:
    """A storage directory or URI as a string (a ``pathlib.Path`` is fine), or None."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{what} must be a directory or URI as a string or Path ({_got(value)})")
    return value


def space_arg(value: Any) -> None:
    """A space is a bundled name or YAML file (string or Path), a dict, or a ``Space``."""
    from search_spaces.schema import Space

    if not isinstance(value, (str, Path, dict, Space)):
        raise InputError(
            f"space must be a bundled space name, a YAML file, a dict or a Space ({_got(value)})"
        )


def str_dict(value: Any, what: str, str_values: bool = False) -> dict[str, Any]:
    """A dict with string keys (and string values with ``str_values``), or {} for None."""
    if value is None:
        return {}
    kind = "strings to strings" if str_values else "setting names to values"
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a dict of {kind} ({_got(value)})")
    for key, item in value.items():
        if not isinstance(key, str) or (str_values and not isinstance(item, str)):
            raise InputError(f"{what} must be a dict of {kind} (got {shown(key)}: {shown(item)})")
    return value


def count(value: Any, what: str, optional: bool = False) -> int | None:
    """A positive int (not a bool), or None when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be an int >= 1 ({_got(value)})")
    return value


def flag(value: Any, what: str) -> bool:
    """A bool."""
    if not isinstance(value, bool):
        raise InputError(f"{what} must be True or False ({_got(value)})")
    return value


def trial_number(value: Any) -> int | None:
    """An Optuna trial number (an int >= 0, not a bool), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"trial must be an Optuna trial number, an int >= 0 ({_got(value)})")
    return value


def baseline_arg(value: Any) -> str | int | None:
    """A comparison's baseline: a row label (str), a 1-based row number (int) or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise InputError(
            f"baseline must be a row's label (str) or its row number (int) ({_got(value)})"
        )
    return value


def calibrators_arg(value: Any) -> list[str]:
    """Post-hoc calibrators (``study.analysis.calibrators.CALIBRATORS``): a comma-separated str, a list of
    names, or None (none)."""
    from study.analysis.calibrators import parse_calibrators

    if value is None:
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise InputError(
            f"calibrators must be names like 'ts,vs' or a list of them ({_got(value)})"
        )
    try:
        return parse_calibrators(value)
    except ValueError as err:
        raise InputError(str(err)) from None


def model_name(value: Any) -> str:
    """An MLflow registered model name: not empty, no '/' or ':', and not a path that would
    resolve to another name (MLflow's own rules, checked before anything is logged)."""
    name = required_str(value, "the model name")
    if not name.strip() or "/" in name or ":" in name or posixpath.normpath(name) != name:
        raise InputError(
            f"model name {shown(name)} is not a plain name: MLflow model names hold no '/' or "
            "':' and are not '.' or '..'; give a name such as sharpcal-digits"
        )
    return name
