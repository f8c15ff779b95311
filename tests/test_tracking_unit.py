"""Tracking helpers without a study (fast tier)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from study.tracking import git_commit

REPO = Path(__file__).resolve().parents[1]


def test_the_git_commit_is_sharpcals_whatever_the_working_directory(tmp_path, monkeypatch):
    """Issue 17, item 8: from a user's own repository the tag still names sharpcal's commit."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)  # a repository without commits: `git rev-parse HEAD` fails here
    expected = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert git_commit() == (expected or None)
