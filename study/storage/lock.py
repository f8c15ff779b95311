"""One driver per study: a lock on the study's state directory, held by `study run` and `resume`.

The lock is an exclusive ``flock`` on ``<state dir>/driver.lock``, which the kernel releases when
the driver dies, however it dies (a SIGKILLed driver leaves a stale file, never a held lock). The
file also says who holds it (host, pid, since when), so a second driver is refused with one line
naming the holder. The state directory is on the driver's machine for every storage (the study
directory, or ``$SHARPCAL_STATE/studies/<name>`` for S3), so ``flock`` is reliable there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from trainables.errors import StorageError
from trainables.layout import LOCK_FILE


class StudyLocked(StorageError):
    """Another driver holds the study: one line naming it."""


class StudyLock:
    """``with StudyLock(directory, name):`` holds the study's driver lock inside the block."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / LOCK_FILE
        self.name = name
        self._fd: int | None = None
        self.created = False  # this lock created the file
        self.previous: dict[str, Any] | None = None  # the holder of a stale lock taken over

    def acquire(self) -> None:
        """Take the lock or raise ``StudyLocked``; remember a dead holder's record. The file is
        opened without following a symlink and must be this user's regular file (else
        ``StudyLocked``, one line): nothing outside the study is ever truncated."""
        fd, self.created = _open_lock(self.path, self.name, create=True)
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

    def release(self, discard: bool = False) -> None:
        """Give the lock back (the file stays: its record is only read while the lock is held);
        ``discard``: remove the file too if this lock created it (a refused start leaves no
        lock behind)."""
        if self._fd is not None:
            if discard and self.created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            else:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refuse(path: Path, name: str, why: str) -> StudyLocked:
    return StudyLocked(
        f"study {name!r}: its lock {path} {why}; refusing to use it: remove it if it is not "
        "this study's (a study's files must be this user's own, not links)"
    )


def _open_lock(path: Path, name: str, create: bool) -> tuple[int, bool]:
    """The lock file's descriptor (never through a symlink, never truncated on open) and whether
    it was created now; ``StudyLocked`` for a link, a non-regular file, a directory where it
    cannot be written or, to write it (``create``), another user's file."""
    flags = (os.O_RDWR if create else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    created = False
    try:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                raise
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _refuse(path, name, "is a symlink") from None
        if isinstance(err, FileNotFoundError):
            raise
        raise StudyLocked(
            f"study {name!r}: its lock {path} cannot be written ({err.strerror}); the study "
            "directory must be writable to run or resume it"
        ) from None
    info = os.fstat(fd)
    why = None
    if not stat.S_ISREG(info.st_mode):
        why = "is not a regular file"
    elif create and info.st_uid != os.geteuid():
        why = f"is owned by another user (uid {info.st_uid})"
    if why:
        os.close(fd)
        raise _refuse(path, name, why)
    return fd, created


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
    driver does; ``StudyLocked`` for a lock that is a symlink or not this user's. A shared lock taken and dropped at once: it never blocks a driver for long."""
    path = directory / LOCK_FILE
    try:
        fd, _ = _open_lock(path, directory.name, create=False)
    except FileNotFoundError:
        return None
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
