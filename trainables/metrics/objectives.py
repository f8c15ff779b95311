"""The metrics a study can optimise, read from the metric registry (``METRICS``): each one's
direction (known, never configured), its role in an objective and the value a diverged trial is
told (the worst it can take, so the sampler moves away). An objective names a split metric by its
val key (``val_ece``) and a cost by its bare name (``train_seconds``).

``DIRECTIONS``, ``ACCURACY_METRICS``, ``CALIBRATION_METRICS``, ``COST_METRICS`` and
``DIVERGED_METRICS`` are computed from the registry when read, so a plugin's metric is in them.
"""

from __future__ import annotations

from typing import Any

from trainables.metrics.base import METRICS, Metric, objective_metrics

DEFAULT_METRICS = ("val_accuracy", "val_ece")


def directions() -> dict[str, str]:
    """Objective key -> "max" or "min", for every metric an objective may name."""
    return {k: str(m.direction) for k, m in objective_metrics().items()}


def with_role(role: str) -> tuple[str, ...]:
    """The objective keys of the metrics with ``role`` (accuracy, calibration, cost)."""
    return tuple(k for k, m in objective_metrics().items() if m.role == role)


def diverged_metrics() -> dict[str, float]:
    """What a diverged trial reports for the objective metrics it cannot measure (costs are
    measured)."""
    return {
        k: float(m.diverged)  # type: ignore[arg-type]  # the contract: finite for these roles
        for k, m in objective_metrics().items()
        if m.role != "cost"
    }


def objective_metric(name: str) -> Metric:
    """The metric an objective key names (``InputError`` listing the known ones)."""
    found = objective_metrics().get(name)
    if found is None:
        from trainables.errors import InputError

        raise InputError(unknown_objective(name))
    return found


def unknown_objective(name: object) -> str:
    return f"unknown metric {name!r}; choose from {', '.join(objective_metrics())}"


def is_cost(name: str) -> bool:
    """Whether objective key ``name`` is a cost."""
    found = objective_metrics().get(name)
    return found is not None and found.role == "cost"


def signed(name: str, value: float) -> float:
    """``value`` of metric ``name`` turned so that higher is better."""
    return objective_metric(name).better(value)


_DERIVED = {
    "DIRECTIONS": directions,
    "ACCURACY_METRICS": lambda: with_role("accuracy"),
    "CALIBRATION_METRICS": lambda: with_role("calibration"),
    "COST_METRICS": lambda: with_role("cost"),
    "DIVERGED_METRICS": diverged_metrics,
}


def __getattr__(name: str) -> Any:
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "diverged_metrics",
    "directions",
    "is_cost",
    "objective_metric",
    "signed",
    "with_role",
]
