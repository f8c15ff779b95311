"""sharpcal's one exception tree. Every error sharpcal reports to its user is a ``SharpcalError``
whose message is one line saying what went wrong, where, and how to fix it; the ``study`` command
prints it and exits with code 2. Its subclasses say what kind of thing went wrong:

- ``InputError``: what the user gave — a space file, a setting, an argument, a name;
  ``PluginError`` is the input error of a user's own parts (a plugin that does not import, a
  name that is taken, a part that does not keep its kind's contract).
- ``StorageError``: where a study lives — its directory, its files, the tracking store.
- ``DataError``: what a study reads or wrote — datasets, OOD sets, per-sample evidence.

No torch, no Ray: the driver's argument parsing and Ray's workers both import it.
"""

from __future__ import annotations


class SharpcalError(Exception):
    """Base of every error sharpcal reports: one line (what, where, how to fix)."""


class InputError(SharpcalError, ValueError):
    """Bad input found before any work: a space, a setting, an argument, a name."""


class PluginError(InputError):
    """A user's plugin: it does not import, a part's name is taken, or a part does not keep
    its kind's contract."""


class StorageError(SharpcalError):
    """A study's storage: its directory or files, the lock, the tracking store."""


class DataError(SharpcalError):
    """A dataset, an OOD set or a study's evidence: missing, unreadable or not what it should
    be. The message is made one line (readers' messages are long)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
