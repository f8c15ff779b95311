"""Issue 27, items 6 and 7: hostile and careless inputs are one line, exit 2, nothing written.

Credentials in any URI a space or a setting can hold (``data_root``, OOD roots) are refused like
``--storage``'s, without echoing the secret; arguments of the wrong type given to the Python API,
an MLflow model name that is a path and a tracking URI of no known scheme are one
``StudyInputError`` (one line, exit 2 from the CLI) before anything is written or started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from study import Study, StudyInputError
from tests.test_security import PASSWORD, files_under, refused, write
from tests.test_study import DIGITS

SECRET_URI = f"s3://AKIAPLANTED:{PASSWORD}@bucket/data"


def space_file(tmp_path: Path, **space: Any) -> Path:
    space.setdefault("fixed", {})
    space["fixed"] = {**DIGITS, "epochs": 1, **space["fixed"]}
    space.setdefault("search", {"lr": {"loguniform": [0.02, 0.2]}})
    return write(tmp_path / "space.yaml", yaml.safe_dump(space))


def assert_no_secret(line: str) -> None:
    assert PASSWORD not in line and "AKIAPLANTED" not in line, line
    assert "holds credentials" in line and "AWS_SECRET_ACCESS_KEY" in line, line


# -- item 6: credentials in data_root and OOD roots ---------------------------------------------


@pytest.mark.parametrize(
    "space",
    [
        {"fixed": {"data_root": SECRET_URI}},
        {"points": [{"lr": 0.05, "data_root": SECRET_URI}]},
        {"search": {"data_root": {"categorical": ["/tmp", SECRET_URI]}}},
        {"fixed": {"ood": {"svhn": {"root": SECRET_URI}}}},
        {"fixed": {"ood": {"cifar10_c": {"root": SECRET_URI}}}},
    ],
    ids=["fixed", "points", "search", "ood svhn", "ood cifar10_c"],
)
def test_credentials_in_a_spaces_uri_are_refused_without_echoing_them(capsys, tmp_path, space):
    path = space_file(tmp_path, **space)
    assert_no_secret(refused(capsys, tmp_path, "run", str(path), "--name", "c"))
    assert_no_secret(refused(capsys, tmp_path, "spaces", "validate", str(path)))


@pytest.mark.parametrize("command", ["run", "train"])
def test_credentials_in_a_set_data_root_are_refused_without_echoing_them(capsys, tmp_path, command):
    path = space_file(tmp_path)
    argv = [command, str(path)] if command == "run" else [command, "--space", str(path)]
    assert_no_secret(refused(capsys, tmp_path, *argv, "--set", f"data_root={SECRET_URI}"))


def test_credentials_in_data_root_through_the_api_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"fixed": {**DIGITS, "data_root": SECRET_URI}}
    with pytest.raises(StudyInputError) as err:
        Study.create(space, name="c", storage=str(tmp_path / "studies"))
    assert_no_secret(str(err.value))
    with pytest.raises(StudyInputError) as err:
        Study.check({"fixed": DIGITS}, overrides={"data_root": SECRET_URI})
    assert_no_secret(str(err.value))
    assert list(tmp_path.iterdir()) == []


def test_a_root_without_credentials_is_accepted():
    from trainables.config import parse_config

    for root in ("s3://bucket/data", "/data/with@sign", "sqlite:////abs/x"):
        assert parse_config({"data_root": root}).data_root == root


# -- item 7: wrong types through the API, paths as model names, unknown URI schemes -------------


def _space() -> dict[str, Any]:
    return {"fixed": {**DIGITS, "epochs": 1}}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"storage": 5}, "storage"),
        ({"storage": ["studies"]}, "storage"),
        ({"overrides": ["epochs=1"]}, "overrides"),
        ({"overrides": {1: 2}}, "overrides"),
        ({"tracking_uri": 123}, "tracking_uri"),
        ({"name": 5}, "name"),
        ({"tags": ["a"]}, "tags"),
        ({"tags": {"a": 1}}, "tags"),
        ({"address": 7}, "address"),
        ({"tracking_uri": "notascheme://x"}, "notascheme"),
    ],
)
def test_create_refuses_arguments_of_the_wrong_type(tmp_path, monkeypatch, kwargs, expected):
    monkeypatch.chdir(tmp_path)
    kwargs.setdefault("storage", str(tmp_path / "studies"))
    with pytest.raises(StudyInputError, match=expected) as err:
        Study.create(_space(), **kwargs)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("space", [5, None, ["default"], b"default"])
def test_create_refuses_a_space_of_the_wrong_type(tmp_path, monkeypatch, space):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyInputError, match="space"):
        Study.create(space, name="t", storage=str(tmp_path / "studies"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs", [{"name": 5}, {"storage": 5}, {"name": None}, {"storage": Path("x")}]
)
def test_load_refuses_arguments_of_the_wrong_type(tmp_path, monkeypatch, kwargs):
    monkeypatch.chdir(tmp_path)
    args = {"name": "t", "storage": "studies", **kwargs}
    if isinstance(args["storage"], Path):  # a Path is a fine storage: only the study is missing
        with pytest.raises(StudyInputError, match="no study 't'"):
            Study.load(**args)
        return
    with pytest.raises(StudyInputError, match="name|storage"):
        Study.load(**args)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def created(tmp_path: Path, monkeypatch) -> Study:
    """A study created (no trial run) in ``tmp_path``, tracked in its MLflow store."""
    monkeypatch.chdir(tmp_path)
    return Study.create(_space(), name="base", storage=str(tmp_path / "studies"))


@pytest.mark.parametrize(
    ("method", "args", "expected"),
    [
        ("run", {"address": 5}, "address"),
        ("resume", {"address": ["auto"]}, "address"),
        ("compare", {"baseline": [1]}, "baseline"),
        ("compare", {"ensembles": "yes"}, "ensembles"),
        ("rerun", {"top": "3"}, "top"),
        ("rerun", {"seeds": 1.5}, "seeds"),
        ("rerun", {"name": 5}, "name"),
        ("rerun", {"concurrency": "2"}, "concurrency"),
        ("rerun", {"storage": 5}, "storage"),
        ("rerun", {"tracking_uri": 5}, "tracking_uri"),
        ("register", {"model_name": 5}, "model"),
        ("register", {"model_name": "../../x"}, "model name"),
        ("register", {"model_name": "m", "trial": "1"}, "trial"),
        ("register", {"model_name": "m", "trial": True}, "trial"),
    ],
)
def test_study_methods_refuse_arguments_of_the_wrong_type(
    created, tmp_path, method, args, expected
):
    before = files_under(tmp_path)
    with pytest.raises(StudyInputError, match=expected) as err:
        getattr(created, method)(**args)
    assert "\n" not in str(err.value)
    assert files_under(tmp_path) == before


def test_register_with_a_model_name_that_is_a_path_is_one_line(capsys, created, tmp_path):
    line = refused(capsys, tmp_path, "register", "base", "../../x", "--storage", "studies")
    assert "model name" in line and "Traceback" not in line


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_tracking_uri_of_no_known_scheme_is_one_line_before_work(capsys, tmp_path, command):
    path = space_file(tmp_path)
    argv = [command, str(path)] if command == "run" else [command, "--space", str(path)]
    line = refused(capsys, tmp_path, *argv, "--tracking-uri", "notascheme://x")
    assert "--tracking-uri" in line and "scheme" in line


# -- issue 34, item 8: what the run would refuse, the dry run refuses, before anything exists ----


def _refused_by_run_and_dry_run(capsys, tmp_path: Path, *argv: str) -> str:
    """``study run ARGV`` refused in one line with and without ``--dry-run``, nothing written
    (no study directory, no MLflow database), the same line both times."""
    path = space_file(tmp_path)
    dry = refused(capsys, tmp_path, "run", str(path), "--name", "s", *argv, "--dry-run")
    line = refused(capsys, tmp_path, "run", str(path), "--name", "s", *argv)
    assert line == dry
    assert not (tmp_path / "mlflow.db").exists()
    return line


def test_a_storage_uri_no_object_store_has_is_refused_before_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPCAL_STATE", str(tmp_path / "state"))
    line = _refused_by_run_and_dry_run(capsys, tmp_path, "--storage", "http://127.0.0.1:9/x")
    assert "--storage" in line and "'http'" in line and "s3://" in line
    assert not (tmp_path / "state").exists()


def test_an_object_store_that_does_not_answer_is_refused_before_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPCAL_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "planted")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PASSWORD)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    line = _refused_by_run_and_dry_run(capsys, tmp_path, "--storage", "s3://bucket/studies")
    assert "--storage" in line and "object store" in line and PASSWORD not in line
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_tracking_server_that_does_not_answer_is_refused_before_work(capsys, tmp_path, command):
    path = space_file(tmp_path)
    argv = [command, str(path)] if command == "run" else [command, "--space", str(path)]
    line = refused(capsys, tmp_path, *argv, "--tracking-uri", "http://127.0.0.1:9")
    assert "--tracking-uri" in line and "no MLflow server answers" in line


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_token_in_the_tracking_uri_is_refused_and_never_echoed(capsys, tmp_path, command):
    path = space_file(tmp_path)
    argv = [command, str(path)] if command == "run" else [command, "--space", str(path)]
    uri = f"http://127.0.0.1:9/?token={PASSWORD}"
    line = refused(capsys, tmp_path, *argv, "--tracking-uri", uri)
    assert PASSWORD not in line and "holds credentials" in line and "MLFLOW_TRACKING" in line


@pytest.mark.parametrize(
    "variables",
    [{"TMPDIR": "/proc/sys"}, {"RAY_TMPDIR": "/proc/sys"}, {"RAY_TMPDIR": "/tmp/" + "r" * 40}],
    ids=["unwritable TMPDIR", "unwritable RAY_TMPDIR", "RAY_TMPDIR too long for sockets"],
)
def test_a_temporary_directory_ray_cannot_use_is_refused_before_work(
    capsys, tmp_path, monkeypatch, variables
):
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    line = _refused_by_run_and_dry_run(capsys, tmp_path)
    assert "RAY_TMPDIR" in line and ("not a directory" in line or "too long" in line)


def test_a_storage_path_with_a_segment_too_long_for_the_filesystem_is_refused(capsys, tmp_path):
    line = _refused_by_run_and_dry_run(capsys, tmp_path, "--storage", "s" * 300 + "/studies")
    assert "--storage" in line and "300 bytes" in line
    assert "Traceback" not in line


def test_a_setting_written_twice_in_a_space_file_is_refused(capsys, tmp_path):
    path = write(
        tmp_path / "space.yaml",
        "fixed:\n  dataset: digits\n  epochs: 1\n  epochs: 3\n"
        "search:\n  lr: {loguniform: [0.02, 0.2]}\n",
    )
    line = refused(capsys, tmp_path, "run", str(path), "--dry-run")
    assert "space.yaml:4" in line and "'epochs' appears twice" in line
    line = refused(capsys, tmp_path, "spaces", "validate", str(path))
    assert "'epochs' appears twice" in line


@pytest.mark.parametrize(
    "section, expected",
    [({"fashion_mnist_c": {"subset_per_severity": 10**12}}, "50000"),
     ({"fashion_mnist_c": {"subset_per_severity": 10_001}}, "test images"),
     ({"cifar10_c": {"root": "/tmp", "subset_per_severity": 50_001}}, "50000")],
    ids=["1e12", "one more than the test set", "more than any -C set"],
)  # fmt: skip
def test_a_corruption_subset_larger_than_its_set_is_refused(capsys, tmp_path, section, expected):
    path = space_file(tmp_path, fixed={"dataset": "fashion_mnist", "ood": section})
    line = refused(capsys, tmp_path, "run", str(path), "--dry-run")
    assert "subset_per_severity" in line and expected in line
