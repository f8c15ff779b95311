"""Where a private local Ray keeps its sockets, logs and spilled objects: a directory that only
this user can enter (Ray's own default, ``/tmp/ray``, is open to every user of the machine, and
its logs hold what the trials' runtime environments and workers print). No Ray import: the dry
run checks it."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

# Ray's longest socket path under its temp dir: ``/session_<date>_<time>_<us>_<pid>/sockets/
# plasma_store`` (a 7-digit pid), and a Unix socket path holds at most 107 bytes on Linux.
_SOCKET_TAIL = len("/ray/session_2026-12-07_04-40-39_856260_1234567/sockets/plasma_store") + 2
_SOCKET_MAX = (103 if sys.platform == "darwin" else 107) - _SOCKET_TAIL
_FALLBACK_PREFIX = "sharpcal-"
_FALLBACK_LENGTH = len(_FALLBACK_PREFIX) + 8  # mkdtemp's random suffix


def ray_temp_root() -> Path:
    """The directory Ray would put its ``ray/`` under, by Ray's own rule: ``RAY_TMPDIR``, else
    ``TMPDIR`` (Linux), else ``/tmp``."""
    if os.environ.get("RAY_TMPDIR"):
        return Path(os.environ["RAY_TMPDIR"])
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        return Path(os.environ["TMPDIR"])
    return Path("/tmp") if sys.platform != "win32" else Path(tempfile.gettempdir())


def _own_dir() -> Path:
    return ray_temp_root() / f"sharpcal-ray-{os.getuid()}"


def ray_temp_problem() -> str | None:
    """Why a private local Ray could not start under ``ray_temp_root()`` (not a writable
    directory, or a path too long for Ray's sockets), or None."""
    root = ray_temp_root()
    source = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR"
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        return (
            f"Ray's temporary directory {root} (from {source}, else /tmp) is not a directory "
            "this user can write; set RAY_TMPDIR to one that is, e.g. RAY_TMPDIR=/tmp"
        )
    longest = max(len(str(_own_dir()).encode()), len(str(root).encode()) + 1 + _FALLBACK_LENGTH)
    if longest > _SOCKET_MAX:
        return (
            f"Ray's temporary directory {root} (from {source}, else /tmp) is too long for the "
            f"Unix sockets Ray makes under it ({longest} of at most {_SOCKET_MAX} characters "
            "with sharpcal's sub-directory); set RAY_TMPDIR to a short directory, e.g. "
            "RAY_TMPDIR=/tmp"
        )
    return None


def _private(path: Path) -> bool:
    """``path`` is a real directory of this user's that nobody else can enter."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    )


def private_ray_temp_dir() -> Path:
    """The temporary directory for a local Ray: ``ray/`` inside this user's private directory
    (``<root>/sharpcal-ray-<uid>``, mode 0700: Ray opens its own directory to everyone, so the
    privacy is the parent's), created if needed; where that name is taken by something else
    (another user's, a link, an open directory), inside a new private one (``mkdtemp``)."""
    own = _own_dir()
    try:
        own.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        own = Path(tempfile.mkdtemp(prefix=_FALLBACK_PREFIX, dir=ray_temp_root()))
    if not _private(own):
        own = Path(tempfile.mkdtemp(prefix=_FALLBACK_PREFIX, dir=ray_temp_root()))
    return own / "ray"
