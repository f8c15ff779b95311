"""A study's own files on the driver: its directory and resolved ``space.yaml``, whether Tune
saved an experiment state to resume from, and where it is tracked (``mlflow.json``). Where each
file lives is ``trainables.layout``."""

from __future__ import annotations

import json

import yaml

from search_spaces import SpaceError
from search_spaces.schema import Space, check_space
from trainables.atomic import atomic_write_text
from trainables.layout import LOCK_FILE, TUNE_DIR, StudyPaths, join


class StudyExists(ValueError):
    """`study run` on a name that already has a study."""


def refuse_existing(name: str, paths: StudyPaths) -> None:
    """Raise ``StudyExists`` when ``name`` already has a study: `study resume` continues it."""
    if paths.root.exists() and any(p.name != LOCK_FILE for p in paths.root.iterdir()):
        raise StudyExists(
            f"study {name!r} already exists in {paths.root}: continue it with "
            f"'study resume {name}', or choose another --name"
        )


def prepare_study(space: Space, name: str, paths: StudyPaths) -> None:
    """Create the study directory and save the resolved space (without the schema's unset
    ``null`` keys; a setting's ``null`` stays); refuse an existing study."""
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


def has_tune_state(paths: StudyPaths) -> bool:
    """Whether the study's trials have started: Tune saved an experiment state (no Ray needed)."""
    from ray import tune

    storage_path, storage_filesystem = paths.tune_storage()
    tune_path = join(storage_path, TUNE_DIR)
    return tune.Tuner.can_restore(tune_path, storage_filesystem=storage_filesystem)


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
