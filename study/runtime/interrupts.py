"""How the ``study`` command answers SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``, cluster
schedulers), and which failures of a running study are the machine's, not a bug's.

Every command treats SIGTERM as Ctrl-C: it raises ``KeyboardInterrupt`` where the process is,
which the command turns into one "interrupted" line and exit code 130 (``terminate_as_interrupt``).
A study's driver is gentler while Tune runs its trials (``DriverSignals``): the first signal asks
Tune to stop as its own Ctrl-C handler would (Tune saves its experiment state, stops the trials,
and the study ends "interrupted" with its partial report), and a second one, or one that lands
anywhere else (starting Ray, restoring Tune's state, writing the report), stops it at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

# Tune installs its own SIGINT handler for the length of a run unless this is set; it always
# listens to SIGUSR1 for the same graceful stop.
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does (main thread only):
    the command cleans up as it does on Ctrl-C instead of dying where it stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class DriverSignals:
    """SIGINT and SIGTERM while a study's driver runs (see the module's doc). ``received``
    counts the signals; ``install()`` (again after ``ray.init``, which installs its own SIGTERM
    handler) takes both; ``fitting()`` brackets ``Tuner.fit()``."""

    def __init__(self) -> None:
        self.received = 0
        self._fitting = False
        self._previous: dict[int, Any] = {}
        self._usr1: Any = None

    def install(self) -> None:
        """Take SIGINT and SIGTERM (main thread only; elsewhere signals cannot be handled)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        """Give the signals back to the handlers they had before ``install()``."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> DriverSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.received == 1 and self._fitting and self._tune_listens():
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop, handled after this
            return
        raise KeyboardInterrupt

    def _tune_listens(self) -> bool:
        """Whether Tune's run loop has installed its SIGUSR1 handler (it replaces ours)."""
        return signal.getsignal(signal.SIGUSR1) is not self._usr1

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        """Around ``Tuner.fit()``: Tune leaves SIGINT to us, and the first signal stops it
        gracefully once its loop listens (before that, nothing has started that could be saved:
        the signal stops the driver at once)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        saved_env = os.environ.get(TUNE_SIGINT_ENV)
        os.environ[TUNE_SIGINT_ENV] = "1"

        def not_yet(signum: int, frame: Any) -> None:  # SIGUSR1 before Tune listens: ignore
            return None

        self._usr1 = not_yet
        previous_usr1 = signal.signal(signal.SIGUSR1, not_yet)
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            signal.signal(signal.SIGUSR1, previous_usr1)
            if saved_env is None:
                os.environ.pop(TUNE_SIGINT_ENV, None)
            else:
                os.environ[TUNE_SIGINT_ENV] = saved_env
            self.install()  # Tune may have put its own handlers back on the way out


def disk_full(err: BaseException) -> str | None:
    """Why ``err`` (or an error it was raised from) is a full disk or an exceeded quota, as a
    short phrase; None when it is not one. Tune, Optuna (SQLite) and pyarrow wrap the OS error
    in their own exceptions."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return os.strerror(current.errno)
        if isinstance(current, OSError) and "[Errno 28]" in str(current):  # pyarrow's wording
            return os.strerror(errno.ENOSPC)
        if isinstance(current, sqlite3.OperationalError) and "disk is full" in str(current):
            return os.strerror(errno.ENOSPC)
        orig = getattr(current, "orig", None)  # SQLAlchemy keeps the driver's error here
        if isinstance(orig, BaseException) and orig is not current:
            found = disk_full(orig)
            if found:
                return found
        current = current.__cause__ or current.__context__
    return None
