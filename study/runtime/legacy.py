"""The import paths of the classes Tune pickled into studies saved before issue 35's layout.

Tune pickles a study's searcher, schedulers and callbacks by their module paths
(``tuner.pkl``, ``experiment_state-*.json``); a study saved before the modules moved into
subpackages names the old ones. Those that became packages (``study.search``,
``study.tracking``) still answer for the names pickled under them; the modules that moved are
aliased here before Tune's state is unpickled (``study.runtime.tuner.restore_tuner``)."""

from __future__ import annotations

import importlib
import sys

# old module path -> where it lives now
MOVED = {
    "study.schedulers": "study.search.schedulers",
    "study.events": "study.runtime.events",
    "study.tuner": "study.runtime.tuner",
}


def alias_moved_modules() -> None:
    """Make every old path in ``MOVED`` import as its new module (idempotent)."""
    for old, new in MOVED.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)
