"""Bad input through the Python API is a ``StudyInputError`` before anything is written (no Ray,
no MLflow store: nothing gets that far)."""

from __future__ import annotations

import pytest
import torch

from study import Study, StudyInputError


@pytest.mark.parametrize(
    ("fixed", "expected"),
    [
        ({"dataset": "cifar10", "data_root": "{tmp}/nowhere"}, "{tmp}/nowhere"),
        ({"dataset": "digits", "device": "cuda:7"}, "cuda"),
    ],
    ids=["missing dataset", "missing device"],
)
def test_create_checks_devices_and_data_before_writing_anything(
    tmp_path, monkeypatch, fixed, expected
):
    """Issue 22, item 8: a missing dataset showed up only in run(), after the study's
    directory and its MLflow run existed."""
    if "cuda" in str(fixed.get("device")) and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.chdir(tmp_path)  # where the default MLflow store would be made
    fixed = {k: v.format(tmp=tmp_path) for k, v in fixed.items()}
    with pytest.raises(StudyInputError, match=expected.format(tmp=tmp_path)):
        Study.create({"fixed": fixed}, name="st", storage=str(tmp_path / "studies"))
    assert list(tmp_path.iterdir()) == []
