"""The search: Optuna behind Ray Tune (``searcher``), the sampler and the define-by-run space
(``sampler``), the schedulers that stop trials early (``schedulers``, Tune's side) and their pure
rung logic (``rungs``)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``study.search.StudySearch``: the path Tune pickled studies' searchers under before the
    # searcher moved to study.search.searcher (issue 35); lazy, so the rung logic loads no Ray
    if name == "StudySearch":
        from study.search.searcher import StudySearch

        return StudySearch
    raise AttributeError(f"module 'study.search' has no attribute {name!r}")
