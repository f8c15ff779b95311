"""A study's own files on the driver: its directory and resolved ``space.yaml``, whether Tune
saved an experiment state to resume from, and where it is tracked (``mlflow.json``). Where each
file lives is ``trainables.layout``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import yaml

from search_spaces import SpaceError
from search_spaces.schema import Space, check_space
from trainables.atomic import atomic_write_text
from trainables.errors import StorageError
from trainables.layout import (
    LOCK_FILE,
    MLFLOW_ARTIFACTS_DIR,
    TRACKING_FILE,
    TUNE_DIR,
    StudyPaths,
    join,
)

if TYPE_CHECKING:
    import optuna

SQLITE_MAGIC = b"SQLite format 3\x00"
OPTUNA_TABLES = ("studies", "trials", "version_info")


class StudyExists(StorageError):
    """`study run` on a name that already has a study."""


class StudyFilesError(StorageError):
    """A study's files are corrupt, foreign, symlinked or not this study's: one line, never
    repaired."""


def _owner_problem(path: Path, owned: bool = True) -> str | None:
    """Why ``path`` may not be trusted as this user's (None: it may): a symlink or, where it
    must be ``owned``, owned by another user or writable by every user."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symlink (to {os.readlink(path)})"
    if not owned:
        return None
    if info.st_uid != os.geteuid():
        return f"{path} is owned by another user (uid {info.st_uid})"
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        return f"{path} is writable by every user"
    return None


def check_study_dir(paths: StudyPaths, name: str, writing: bool = True) -> None:
    """``StudyFilesError`` unless the study directory (where it exists), its driver lock and its
    Tune state are no symlinks and, for a driver (``writing``), this user's own: no link is
    followed and no foreign directory adopted. A reader (not ``writing``) may read another
    user's study."""
    if not paths.root.exists() and not paths.root.is_symlink():
        return
    problem = _owner_problem(paths.root, writing)
    if problem is None and not paths.root.is_dir():
        problem = f"{paths.root} is not a directory"
    if problem is None and (paths.lock.exists() or paths.lock.is_symlink()):
        problem = _owner_problem(paths.lock, writing)
        if problem is None and not paths.lock.is_file():
            problem = f"{paths.lock} is not a regular file"
    if problem is None and not paths.remote:
        tune = Path(paths.tune)
        if tune.exists() or tune.is_symlink():
            problem = _owner_problem(tune, writing)
    if problem:
        raise StudyFilesError(
            f"study {name!r}: {problem}; refusing to use it (a study's files must be this "
            "user's own, not a link): move it aside or choose another --name/--storage"
        )


MIN_FREE_BYTES = 16 * 2**20  # below this a study's next files (a checkpoint, a report) fail


def writable_problem(directory: Path) -> str | None:
    """Why nothing can be written in ``directory`` (None: it can): a probe file is created and
    removed at once, so a read-only mount or a pseudo-filesystem (``/proc``) is found whoever
    runs it (root included); then its free space must be at least ``MIN_FREE_BYTES``."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".tmp-probe-")
        os.close(fd)
        os.unlink(probe)
        free = os.statvfs(directory)
    except OSError as err:
        return f"cannot be written ({err.strerror or type(err).__name__})"
    available = free.f_bavail * free.f_frsize
    if available < MIN_FREE_BYTES:
        return (
            f"cannot be written: its disk has {available / 2**20:.1f} MiB free (No space left "
            f"for a study's files; {MIN_FREE_BYTES // 2**20} MiB at least)"
        )
    return None


def check_writable(paths: StudyPaths, name: str, command: str) -> None:
    """``StudyFilesError`` before any work when the study directory cannot be written (read-only,
    full): ``command`` (run, resume, report) would fail half-way."""
    problem = writable_problem(paths.root)
    if problem:
        raise StudyFilesError(
            f"study {name!r}: {paths.root} {problem}; free space or make it writable, then "
            f"run 'study {command} {name}' again"
        )


def check_new_study(paths: StudyPaths, name: str) -> None:
    """What ``study run`` (and its dry run alike) refuses before creating study ``name``: a
    symlinked or foreign directory, a path that is not a directory, a study a driver is running
    (naming it), an existing study."""
    check_study_dir(paths, name)
    if paths.root.exists() and not paths.root.is_dir():
        raise StudyFilesError(
            f"study {name!r}: {paths.root} is a file, not a directory; choose another --name"
        )
    from study.storage.lock import held_by

    holder = held_by(paths.root) if paths.root.is_dir() else None
    if holder:  # said first, as the run's lock says it
        raise StudyFilesError(
            f"study {name!r} is being run by {holder}; wait for it to finish or stop that "
            f"driver (its lock: {paths.lock})"
        )
    refuse_existing(name, paths)


def check_restorable(paths: StudyPaths, name: str) -> None:
    """Before Tune's pickled state is unpickled (``Tuner.restore``): the study directory,
    ``tune/`` and every file directly in ``tune/`` are this user's, no symlink among them
    (another user could have swapped the pickles and run code at this resume)."""
    check_study_dir(paths, name)
    if paths.remote:
        return
    tune = Path(paths.tune)
    if not tune.is_dir():
        return
    for entry in sorted(tune.iterdir()):
        problem = _owner_problem(entry)
        if problem:
            raise StudyFilesError(
                f"study {name!r}: {problem}; refusing to load Tune's saved state from it "
                "(it may run code): restore it from a copy you own"
            )


def check_study_name(paths: StudyPaths, name: str, space: Space) -> None:
    """``StudyFilesError`` when the directory holds another study (its ``space.yaml`` names it):
    a moved or renamed study directory."""
    if space.name and space.name != name:
        raise StudyFilesError(
            f"{paths.root} holds study {space.name!r} (its space.yaml names it), not {name!r}: "
            f"the directory was renamed or copied; rename it back to {space.name!r} to use it"
        )


def check_optuna_db(paths: StudyPaths, name: str) -> None:
    """``StudyFilesError`` unless ``optuna.db`` (where it exists) is an intact SQLite database
    holding Optuna's tables and the study ``name``; read-only, nothing is created or fixed."""
    db = paths.optuna_db
    if not db.exists() and not db.is_symlink():
        return
    why = _optuna_db_problem(db, name)
    if why:
        raise StudyFilesError(
            f"study {name!r}: {db} {why}; it is not repaired: restore it from a backup, or "
            "start the study again under a new --name"
        )


def _optuna_db_problem(db: Path, name: str) -> str | None:
    problem = _owner_problem(db, owned=False)
    if problem:
        return problem.removeprefix(f"{db} ")
    if not db.is_file():
        return "is not a regular file"
    with db.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if not head:
        return "is empty (0 bytes)"
    if head != SQLITE_MAGIC:
        return "is not an SQLite database"
    try:
        con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                return f"is damaged ({check[0] if check else 'no answer'})"
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            if not set(OPTUNA_TABLES) <= tables:
                return "holds no Optuna study tables"
            found = con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,))
            if found.fetchone() is None:
                return f"holds no Optuna study named {name!r}"
        finally:
            con.close()
    except sqlite3.Error as err:
        return f"is damaged ({err})"
    return None


def read_only_url(db: Path) -> str:
    """An SQLAlchemy URL opening ``db`` read-only: a reader can neither create nor migrate it."""
    return f"sqlite:///file:{quote(str(db))}?mode=ro&uri=true"


def open_optuna_study(paths: StudyPaths, name: str) -> optuna.Study:
    """The study's Optuna study opened read-only, after ``check_optuna_db``."""
    import optuna
    import sqlalchemy.exc

    check_optuna_db(paths, name)
    try:
        storage = optuna.storages.RDBStorage(
            read_only_url(paths.optuna_db), skip_table_creation=True
        )
        return optuna.load_study(study_name=name, storage=storage)
    except (sqlalchemy.exc.SQLAlchemyError, KeyError, RuntimeError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise StudyFilesError(
            f"study {name!r}: {paths.optuna_db} cannot be read ({reason}); it is not repaired: "
            "restore it from a backup"
        ) from None


# What a start leaves before it writes ``space.yaml``, the last file of a new study: a start
# killed there made no study, and the next ``study run`` of the name clears it (``unfinished``).
CREATION_FILES = (LOCK_FILE, TRACKING_FILE, MLFLOW_ARTIFACTS_DIR)


def unfinished_creation(paths: StudyPaths) -> bool:
    """Whether ``paths.root`` holds only what a killed start leaves before ``space.yaml``
    (``CREATION_FILES``), at least one of them besides the lock."""
    if not paths.root.is_dir() or paths.space.exists():
        return False
    names = {p.name for p in paths.root.iterdir() if not p.name.startswith(".tmp-")}
    return bool(names - {LOCK_FILE}) and names <= set(CREATION_FILES)


def clear_unfinished_creation(paths: StudyPaths) -> dict[str, str]:
    """Remove what a killed start left (``unfinished_creation``); returns its tracking info (its
    MLflow parent run is the caller's to close)."""
    info: dict[str, str] = {}
    with contextlib.suppress(SpaceError):
        info = load_tracking(paths)
    paths.tracking.unlink(missing_ok=True)
    shutil.rmtree(paths.mlflow_artifacts, ignore_errors=True)
    for partial in paths.root.glob(".tmp-*"):  # an atomic write the kill interrupted
        partial.unlink(missing_ok=True)
    return info


def refuse_existing(name: str, paths: StudyPaths) -> None:
    """Raise ``StudyExists`` when ``name`` already has a study: `study resume` continues it.
    What a start killed before ``space.yaml`` left is no study (``unfinished_creation``)."""
    if unfinished_creation(paths):
        return
    if paths.root.exists() and any(p.name != LOCK_FILE for p in paths.root.iterdir()):
        raise StudyExists(
            f"study {name!r} already exists in {paths.root}: continue it with "
            f"'study resume {name}', or choose another --name"
        )


def prepare_study(space: Space, name: str, paths: StudyPaths) -> None:
    """Save the resolved space (without the schema's unset ``null`` keys; a setting's ``null``
    stays) in the study directory: the last file of a new study, which makes it one; refuse an
    existing study."""
    refuse_existing(name, paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    data = space.model_dump(mode="json", exclude_none=True)
    data["name"] = name
    atomic_write_text(paths.space, yaml.safe_dump(data, sort_keys=False))


def load_study_space(paths: StudyPaths, name: str) -> Space:
    """The resolved space a study was created with; ``SpaceError`` when there is no such study."""
    from search_spaces import read_space_yaml

    if not paths.space.is_file():
        raise SpaceError(
            f"no study {name!r} in {paths.root.parent} (missing {paths.space}); "
            "start one with 'study run'"
        )
    return check_space(read_space_yaml(paths.space), str(paths.space))


EXPERIMENT_STATE_PREFIX = "experiment_state-"  # Tune's record of its trials, a JSON file


def _tune_dir_names(paths: StudyPaths) -> list[str]:
    """The names directly in the study's ``tune/`` (local or object storage; [] if absent)."""
    import pyarrow.fs as pafs

    from trainables.layout import resolve_fs

    fs, root = resolve_fs(paths.tune)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return [info.base_name for info in found]


def has_tune_state(paths: StudyPaths) -> bool:
    """Whether the study's trials have started: Tune saved its tuner and an experiment state
    recording its trials (no Ray needed). Tune writes ``tuner.pkl`` first and the experiment
    state seconds later: a driver killed in between leaves nothing a restore could continue
    (``has_unstarted_tune_dir``)."""
    from ray import tune

    storage_path, storage_filesystem = paths.tune_storage()
    tune_path = join(storage_path, TUNE_DIR)
    if not tune.Tuner.can_restore(tune_path, storage_filesystem=storage_filesystem):
        return False
    return any(
        n.startswith(EXPERIMENT_STATE_PREFIX) and n.endswith(".json")
        for n in _tune_dir_names(paths)
    )


def tune_trial_states(paths: StudyPaths) -> dict[str, str]:
    """Each trial id in the experiment state a restore loads (Tune's newest) and its status
    there (``TERMINATED``, ``RUNNING``, ...); {} when there is none or it cannot be read (a disk
    that filled while Tune wrote it: Tune then starts its experiment again, with no trial)."""
    from trainables.layout import resolve_fs

    names = sorted(
        n
        for n in _tune_dir_names(paths)
        if n.startswith(EXPERIMENT_STATE_PREFIX) and n.endswith(".json")
    )
    if not names:
        return {}
    fs, root = resolve_fs(paths.tune)
    try:
        with fs.open_input_stream(f"{root}/{names[-1]}") as src:
            state = json.loads(src.read())
        trials = [json.loads(trial) for trial, _ in state["trial_data"]]
        return {str(t["trial_id"]): str(t.get("status", "")) for t in trials}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# Each kind of Tune state file a restore loads (the newest by name: the names carry a timestamp)
# and how it is read
TUNE_STATE_KINDS = (
    (EXPERIMENT_STATE_PREFIX, ".json", "json"),
    ("search_gen_state-", ".json", "pickle"),
    ("searcher-state-", ".pkl", "any"),  # the searcher's own format: sharpcal's writes JSON
)
CUT_SUFFIX = ".cut"


def _whole(data: bytes, kind: str) -> bool:
    """Whether a Tune state file's bytes read back as ``kind``: ``json``, ``pickle`` (Tune's
    cloudpickle) or ``any`` of the two."""
    import pickle

    from ray import cloudpickle

    readers = {"json": [json.loads], "pickle": [cloudpickle.loads]}
    for read in readers.get(kind, readers["json"] + readers["pickle"]):
        try:
            read(data)
        except (EOFError, pickle.UnpicklingError, ValueError, AttributeError, ImportError):
            continue
        return True
    return False


def set_aside_cut_tune_state(paths: StudyPaths) -> list[str]:
    """Tune copies its state files into the study's ``tune/`` from a staging directory, not
    atomically: a driver killed during a copy leaves the newest of a kind cut short, and Tune's
    restore, which reads only the newest, failed on it and went on with an empty experiment that
    never ended. Each newest file that does not read back is renamed with ``CUT_SUFFIX`` (kept,
    no longer matched), until the newest of its kind is whole; returns the names set aside."""
    from trainables.layout import resolve_fs

    names = _tune_dir_names(paths)
    fs, root = resolve_fs(paths.tune)
    cut = []
    for prefix, suffix, kind in TUNE_STATE_KINDS:
        for name in sorted((n for n in names if n.startswith(prefix) and n.endswith(suffix)),
                           reverse=True):  # fmt: skip
            with fs.open_input_stream(f"{root}/{name}") as src:
                if _whole(src.read(), kind):
                    break
            fs.move(f"{root}/{name}", f"{root}/{name}{CUT_SUFFIX}")
            cut.append(name)
    return cut


def has_unstarted_tune_dir(paths: StudyPaths) -> bool:
    """Whether ``tune/`` holds anything although Tune never recorded an experiment state,
    whole or set aside as cut (a start killed before Tune's first snapshot): a ``tune/`` with
    one holds the checkpoints of finished trials."""
    names = _tune_dir_names(paths)
    return bool(names) and not any(n.startswith(EXPERIMENT_STATE_PREFIX) for n in names)


def discard_unstarted_tune_dir(paths: StudyPaths) -> None:
    """Remove what a start killed before Tune's first snapshot left in ``tune/`` (its tuner
    and the directories of trials it never recorded), so the study starts again from nothing.
    Only for a study with no experiment state, under its driver lock."""
    from trainables.layout import resolve_fs

    if has_tune_state(paths):
        raise RuntimeError(f"{paths.tune} has Tune's experiment state: it is not discarded")
    fs, root = resolve_fs(paths.tune)
    fs.delete_dir_contents(root, missing_dir_ok=True)


def check_resumable(paths: StudyPaths, name: str) -> None:
    """``SpaceError`` unless the study has Tune state to resume from (checked without Ray)."""
    if not has_tune_state(paths):
        raise SpaceError(
            f"study {name!r} in {paths.root} has no Tune experiment state to resume from; "
            "start it again with 'study run' under a new --name"
        )


def save_tracking(paths: StudyPaths, info: dict[str, str]) -> None:
    """Remember where the study is tracked, for `study resume` and `study report`."""
    atomic_write_text(paths.tracking, json.dumps(info, indent=2))


def load_tracking(paths: StudyPaths) -> dict[str, str]:
    """What ``save_tracking`` wrote, or {} for a study without tracking; ``SpaceError`` when the
    file is not what ``save_tracking`` writes."""
    if not paths.tracking.is_file():
        return {}
    try:
        info = json.loads(paths.tracking.read_text())
    except (ValueError, OSError) as err:
        raise SpaceError(
            f"{paths.tracking}: not readable tracking info ({type(err).__name__}); restore it or "
            f"delete it to resume without MLflow"
        ) from None
    keys = ("tracking_uri", "experiment_id", "parent_run_id")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in keys):
        raise SpaceError(
            f"{paths.tracking}: tracking info must hold {', '.join(keys)} as strings; restore it "
            "or delete it to resume without MLflow"
        )
    return info
