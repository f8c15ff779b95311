"""A test plugin file (``plugins: [./calibrator_parts.py]``): a post-hoc calibrator of its own,
and a marker file of every process that imports it (in ``$SHARPCAL_PLUGIN_MARKERS``)."""

from __future__ import annotations

import os

import numpy as np

from study.analysis.calibrators import Calibrated, Calibrator, log_probs, register_calibrator


@register_calibrator("shrink")
class ShrinkToUniform(Calibrator):
    """``(1 - a) p + a / C``, ``a`` in [0, 1) picked on a grid by the val NLL."""

    title = "shrinkage to uniform"
    short = "Shrink"
    description = "mixes the probabilities with the uniform distribution"

    def parameters(self, classes: int) -> int:
        return 1

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        grid = np.linspace(0.0, 0.9, 91)
        rows = np.arange(len(labels))
        nll = [-log_probs(self._mix(probs, a))[rows, labels].mean() for a in grid]
        self.alpha = float(grid[int(np.argmin(nll))])

    def _mix(self, probs: np.ndarray, alpha: float) -> np.ndarray:
        return (1.0 - alpha) * probs + alpha / probs.shape[1]

    def transform(self, probs: np.ndarray) -> Calibrated:
        return Calibrated(self._mix(probs, self.alpha))


if os.environ.get("SHARPCAL_PLUGIN_MARKERS"):  # where it was imported: driver, task or actor
    import ray

    where = "driver"
    if ray.is_initialized():
        where = "actor" if ray.get_runtime_context().get_actor_id() else "task"
    with open(
        os.path.join(os.environ["SHARPCAL_PLUGIN_MARKERS"], f"file-{where}-{os.getpid()}"), "w"
    ) as f:
        f.write(__file__)
