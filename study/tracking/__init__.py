"""MLflow: a study's parent run and its trials' runs (``runs``), the models logged and
registered (``model_registry``) and what a registered model serves (``served_model``)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``study.tracking.MlflowTrialCallback``: the path Tune pickled the callback under before
    # it moved to study.tracking.runs (issue 35)
    if name == "MlflowTrialCallback":
        from study.tracking.runs import MlflowTrialCallback

        return MlflowTrialCallback
    raise AttributeError(f"module 'study.tracking' has no attribute {name!r}")
