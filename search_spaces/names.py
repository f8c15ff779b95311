"""Study names: one path segment, checked in one place for every command and every source.

A study's name becomes a directory, an MLflow experiment, an Optuna study and part of a SQLite
URI, so it must be a plain name: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or
a digit (so never ``.``, ``..`` or a hidden name), at most 64 characters.
"""

from __future__ import annotations

import re

from search_spaces import SpaceError
from trainables.messages import shown

MAX_NAME = 64
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")


def check_study_name(name: object, where: str = "study name") -> str:
    """``name`` if it is a valid study name, else ``SpaceError`` saying what a name may hold."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    raise SpaceError(
        f"{where} {shown(name)} is not a plain name: use 1-{MAX_NAME} letters, digits, '.', '_' "
        "or '-', starting with a letter or digit (no '/', no '..')"
    )
