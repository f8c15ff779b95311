"""The hypervolume of a set of points (minimised objectives) against a reference point, exactly,
in 1 to 3 dimensions — what a study's front covers, as one number.

Written here rather than imported: Optuna's implementation is private (``optuna._hypervolume``)
and pymoo's is a heavy dependency for three small functions; ``tests/test_hypervolume.py``
checks this one against pymoo's on random fronts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainables.metrics.objectives import directions, diverged_metrics


def hypervolume(
    points: np.ndarray | Sequence[Sequence[float]], reference: Sequence[float]
) -> float:
    """The volume dominated by ``points`` (rows, minimised) and bounded by ``reference``; points
    not strictly better than the reference in every objective add nothing."""
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if len(ref) == 1:
        return float(ref[0] - pts[:, 0].min())
    if len(ref) == 2:
        return _hv2(pts, ref)
    if len(ref) == 3:
        return _hv3(pts, ref)
    raise ValueError(f"hypervolume is implemented for 1 to 3 objectives (got {len(ref)})")


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    """Sweep along the first objective, adding each step of the staircase."""
    total, best_y = 0.0, ref[1]
    for x, y in sorted(map(tuple, pts)):
        if y < best_y:
            total += (ref[0] - x) * (best_y - y)
            best_y = y
    return total


def _hv3(pts: np.ndarray, ref: np.ndarray) -> float:
    """Slices along the third objective: each slab's 2-D hypervolume of the points below it."""
    order = np.argsort(pts[:, 2])
    pts = pts[order]
    total = 0.0
    for i, z in enumerate(pts[:, 2]):
        top = pts[i + 1, 2] if i + 1 < len(pts) else ref[2]
        if top > z:
            total += _hv2(pts[: i + 1, :2], ref[:2]) * (top - z)
    return total


def reference_point(metrics: Sequence[str], costs: dict[str, float] | None = None) -> list[float]:
    """A reference point fixed before looking at any result, in minimised form: each metric's
    worst value (its metric's ``diverged``: accuracy 0, ECE 1, ...); a cost's from ``costs`` (e.g. the
    full budget of a trial)."""
    ref = []
    known, diverged = directions(), diverged_metrics()
    for name in metrics:
        worst = diverged.get(name) if costs is None or name not in costs else costs[name]
        if worst is None:
            raise ValueError(f"no reference value for {name!r}: pass it in costs")
        ref.append(-worst if known[name] == "max" else worst)
    return ref
