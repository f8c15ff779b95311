"""Bundled search spaces (YAML files beside this module) and the schema that validates them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

BUNDLED_DIR = Path(__file__).resolve().parent


class SpaceError(ValueError):
    """A space file is missing, unreadable or invalid. The message is one line: file, key, reason."""


def bundled_names() -> list[str]:
    """Names of the spaces shipped with sharpcal."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def resolve_space(name_or_file: str) -> Path:
    """A bundled space's name or a path to a YAML file -> the file's path."""
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpaceError(f"{name_or_file}: no such space file")
        return path.resolve()
    bundled = BUNDLED_DIR / f"{name_or_file}.yaml"
    if not bundled.is_file():
        raise SpaceError(
            f"unknown space {name_or_file!r}: bundled spaces are {', '.join(bundled_names())}, "
            "or give a path to a .yaml file"
        )
    return bundled


def read_space_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``, read with a safe loader."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpaceError(f"{path}: cannot read YAML: {reason}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: a space must be a YAML mapping at the top level")
    return data
