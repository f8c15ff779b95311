"""The model MLflow serves for a registered trial (an MLflow "model from code": this file is
copied into the logged model and run when the model is loaded; it needs only MLflow, NumPy and
torch). It loads the trial's network, logged beside it as an MLflow PyTorch model in the safe
``pt2`` format (``torch.export``, which MLflow checks is free of pickles), and refuses an input
with a NaN or infinite value with MLflow's INVALID_PARAMETER_VALUE, which the scoring server
answers with HTTP 400 and this message."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

NETWORK = "network"  # the artifact holding the exported network


def finite_or_refused(x: np.ndarray) -> None:
    """Raise ``MlflowException`` (INVALID_PARAMETER_VALUE) naming the first non-finite value
    of ``x`` and its index, if there is one."""
    bad = ~np.isfinite(x)
    if bad.any():
        where = [int(i) for i in np.argwhere(bad)[0]]
        raise MlflowException.invalid_parameter_value(
            f"input has {int(bad.sum())} non-finite value(s), the first {x[tuple(where)]} at "
            f"index {where}: send finite normalised images, float32 [N, C, H, W]"
        )


class CalibratedProbabilities(PythonModel):
    """The trial's calibrated probabilities ``[N, classes]`` for normalised images ``[N, C, H,
    W]`` (any N)."""

    def load_context(self, context: Any) -> None:
        import mlflow.pytorch

        self.network = mlflow.pytorch.load_model(context.artifacts[NETWORK])

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """The calibrated probabilities of ``model_input``, ``[N, C, H, W]`` (refused with
        INVALID_PARAMETER_VALUE if any value is not finite). ``np.ndarray``: a type hint MLflow
        takes as no schema (the signature is the schema)."""
        import torch

        x = np.ascontiguousarray(model_input, dtype=np.float32)
        finite_or_refused(x)
        with torch.no_grad():
            return self.network(torch.from_numpy(x)).numpy()


mlflow.models.set_model(CalibratedProbabilities())
