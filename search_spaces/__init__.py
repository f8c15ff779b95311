"""Bundled search spaces (YAML files beside this module) and the schema that validates them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainables.errors import InputError
from trainables.messages import shown

BUNDLED_DIR = Path(__file__).resolve().parent


class SpaceError(InputError):
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
            f"unknown space {shown(name_or_file)}: bundled spaces are {', '.join(bundled_names())}, "
            "or give a path to a .yaml file"
        )
    return bundled


MAX_SPACE_BYTES = 1 << 20  # a space file is a page of settings; refuse anything near a megabyte


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases — nested ``*alias`` references can expand a few
    hundred bytes into gigabytes (a "billion laughs" document); a space file never needs one —
    and without duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem=f"YAML aliases (*{event.anchor}) are not allowed in a space file; "
                "write the values out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # PyYAML keeps the last of two equal keys without a word: a setting written twice is a
        # mistake whichever value was meant.
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: PyYAML's own error says so
                    continue
                if first is not key_node:
                    raise yaml.MarkedYAMLError(
                        problem=f"key {shown(key)} appears twice in one mapping (first on line "
                        f"{first.start_mark.line + 1}); keep one",
                        problem_mark=key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def read_space_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``: UTF-8, under 1 MiB, read with a safe loader, no aliases."""
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_SPACE_BYTES:
            raise SpaceError(f"{path}: {len(raw)} bytes is too large for a space file (max 1 MiB)")
        text = raw.decode("utf-8")
        data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except UnicodeDecodeError as err:
        raise SpaceError(
            f"{path}: not UTF-8 text (byte {err.start}); save the space file as UTF-8"
        ) from None
    except yaml.MarkedYAMLError as err:
        raise SpaceError(_yaml_problem(path, err)) from None
    except (OSError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpaceError(f"{path}: cannot read YAML: {reason}") from None
    except RecursionError:
        raise SpaceError(f"{path}: cannot read YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: a space must be a YAML mapping at the top level")
    return data


def _yaml_problem(path: Path, err: yaml.MarkedYAMLError) -> str:
    """``FILE:LINE:COL: problem (context)``, from PyYAML's marks (1-based, as editors count)."""
    mark = err.problem_mark or err.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(err.problem or "invalid YAML").split())
    if err.context:
        problem += f" ({' '.join(str(err.context).split())})"
    return f"{where}: cannot read YAML: {problem}"
