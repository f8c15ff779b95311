"""Tracking helpers without a study (fast tier): the git commit a study's run is tagged with."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import study.tracking.runs

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]


def _tracking_at(directory: Path) -> ModuleType:
    """A copy of ``study/tracking.py`` under ``directory/study/``, loaded as its own module: its
    ``git_commit`` looks where that copy lives, as sharpcal's does where it is installed."""
    (directory / "study").mkdir(parents=True)
    copy = directory / "study" / "tracking.py"
    shutil.copy(study.tracking.runs.__file__, copy)
    spec = importlib.util.spec_from_file_location(f"tracking_copy_{directory.name}", copy)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recorded_commit_is_the_one_of_the_checkout_the_code_runs_from(tmp_path, monkeypatch):
    """Issue 22: a repository of its own (git init, commit), not whatever the tests run in; and
    from a user's own repository (no commits) the tag still names the code's commit."""
    code = tmp_path / "checkout"
    tracking = _tracking_at(code)
    subprocess.run([*GIT, "init", "-q", str(code)], check=True)
    subprocess.run([*GIT, "-C", str(code), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(code), "commit", "-q", "-m", "code"], check=True)
    head = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    user = tmp_path / "user"
    subprocess.run(["git", "init", "-q", str(user)], check=True)
    monkeypatch.chdir(user)  # `git rev-parse HEAD` fails here: the repository has no commit
    assert len(head) == 40 and tracking.git_commit() == head


def test_code_outside_any_git_checkout_records_no_commit(tmp_path, monkeypatch):
    """An installed wheel (no checkout around the code): None, so no ``git_commit`` tag."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git stops above tmp_path
    tracking = _tracking_at(tmp_path / "wheel")
    assert tracking.git_commit() is None
