"""Where a resumed study is now, for the objects Tune pickled when it ran.

``Tuner.restore`` unpickles the searcher and the callbacks exactly as they were saved, absolute
paths included: a study copied, moved or renamed on disk would resume writing into the files of
the place it was saved from. The driver binds the study it resumes (``bound_study``) around
``Tuner.restore``; each pickled object of sharpcal's takes its Optuna URL, data URI, space and
tracking from the binding as it is unpickled (``current``), never from the pickle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search_spaces.schema import Space


@dataclass(frozen=True)
class BoundStudy:
    """The study being resumed, as found where it is now."""

    name: str
    space: Space
    optuna_url: str
    data_uri: str
    tracking: dict[str, str] = field(default_factory=dict)
    # the trials Tune's restored state will run again (unfinished): the searcher counts them
    # among the running ones
    live: frozenset[str] = frozenset()


_bound: BoundStudy | None = None


@contextmanager
def bound_study(study: BoundStudy) -> Iterator[BoundStudy]:
    """``current()`` is ``study`` inside the block."""
    global _bound
    previous, _bound = _bound, study
    try:
        yield study
    finally:
        _bound = previous


def current() -> BoundStudy | None:
    """The study bound by ``bound_study``, if any."""
    return _bound
