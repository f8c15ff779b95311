"""The driver side of sharpcal; ``from study import Study`` is its Python API (study/api.py)."""

import os
from typing import Any

# Nothing of a study leaves the machine unless its user asks: MLflow's telemetry and Ray's usage
# reports are off unless set (the study's Ray and MLflow server processes inherit this). Ray's
# dashboard still probes the cloud's metadata address once at start (Ray does that either way).
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
for _name, _off in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _off)


def __getattr__(name: str) -> Any:
    # Lazy, so that `import study.storage.lock` (or the CLI's --help) does not load torch and Ray.
    if name in ("Study", "StudyInputError", "RunSummary"):
        from study.api import study as api

        return getattr(api, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
