"""Atomic local writes: a file appears whole or not at all, never truncated.

Each write goes to a hidden temporary file in the target's directory, is flushed to disk and then
renamed over the target (``os.replace`` is atomic on POSIX). A crash, a kill or a full disk mid-write
leaves the previous version in place and, at worst, a ``.tmp-*`` file that nothing reads.
(Object storage writes go through ``trainables.evaluation.evidence``, where an upload appears whole.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace ``path`` with what ``write`` writes to the binary file it is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write`` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is over (their handlers run after it): two
    renames that must happen together are not split by Ctrl-C. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def replace_directory(target: Path, build: Callable[[Path], None]) -> None:
    """Build a new version of the directory ``target`` beside it, then swap it in.

    ``build`` fills an empty temporary directory; only when it returns is the old ``target``
    moved aside and the new one renamed into place (signals deferred), so a failed or interrupted
    build keeps the old directory and leaves no temporary one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    new: Path | None = None
    try:
        with signals_deferred():
            new = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
        build(new)
    except BaseException:
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        raise
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    with signals_deferred():
        if target.exists():
            os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
