"""The driver side of sharpcal; ``from study import Study`` is its Python API (study/api.py)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that `import study.storage.lock` (or the CLI's --help) does not load torch and Ray.
    if name in ("Study", "StudyInputError", "RunSummary"):
        from study.api import study as api

        return getattr(api, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
