"""One driver per study: a lock on the study's state directory, held by `study run` and `resume`.

The lock is an exclusive ``flock`` on ``<state dir>/driver.lock``, which the kernel releases when
the driver dies, however it dies (a SIGKILLed driver leaves a stale file, never a held lock). The
file also says who holds it (host, pid, since when), so a second driver is refused with one line
naming the holder. The state directory is on the driver's machine for every storage (the study
directory, or ``$SHARPCAL_STATE/studies/<name>`` for S3), so ``flock`` is reliable there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from trainables.layout import LOCK_FILE


class StudyLocked(RuntimeError):
    """Another driver holds the study: one line naming it."""


class StudyLock:
    """``with StudyLock(directory, name):`` holds the study's driver lock inside the block."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / LOCK_FILE
        self.name = name
        self._fd: int | None = None
        self.previous: dict[str, Any] | None = None  # the holder of a stale lock taken over

    def acquire(self) -> None:
        """Take the lock or raise ``StudyLocked``; remember a dead holder's record."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise StudyLocked(
                f"study {self.name!r} is being run by {holder}; wait for it to finish or stop "
                f"that driver (its lock: {self.path})"
            ) from None
        self.previous = _read(fd) or None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (the file stays: its record is only read while the lock is held)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "another driver"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("since", 0))))
    return f"pid {record.get('pid')} on {record.get('host')} since {since}"


def held_by(directory: Path) -> str | None:
    """Who holds the driver lock in ``directory`` ("pid ... on ... since ..."), or None when no
    driver does. A shared lock taken and dropped at once: it never blocks a driver for long."""
    path = directory / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_read(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_holder(record: dict[str, Any] | None) -> str:
    """A stale lock's former holder, for the message that it was taken over."""
    return _describe(record or {})
