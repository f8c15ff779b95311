"""Shared storage, shared clusters, careless input: every case found by trying sharpcal as an
attacker and a careless user would, each refused with one line and exit code 2 before any work,
with nothing written, no code run from data files and no secret leaked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from study.cli.main import main
from tests.test_cli import run_study
from tests.test_data import write_crafted_cifar10
from tests.test_study import DIGITS

PASSWORD = "s3cr3t-planted-Pa55"


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(capsys, cwd: Path, *argv: str) -> str:
    """Run the CLI in this process in ``cwd``: exit code 2, one stderr line, nothing written."""
    before = files_under(cwd)
    with contextlib.chdir(cwd):
        rc = main(list(argv))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, out, err)
    assert "Traceback" not in err and len(lines[0]) < 400
    assert files_under(cwd) == before, files_under(cwd) - before
    assert not ray.is_initialized()
    return lines[0]


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture
def space(tmp_path: Path) -> Path:
    data = {"fixed": {**DIGITS, "epochs": 1}, "search": {"lr": {"loguniform": [0.02, 0.2]}}}
    return write(tmp_path / "space.yaml", yaml.safe_dump(data))


# -- data files never run code ---------------------------------------------------------------


@pytest.mark.slow  # a `study` subprocess
def test_a_crafted_cifar_batch_is_refused_by_study_train_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    root = write_crafted_cifar10(tmp_path / "data", marker)
    proc = run_study(
        "train", "--set", "dataset=cifar10", "--set", f"data_root={root}", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "refused without running it" in line and "io.open" in line
    assert not marker.exists()


# -- names are names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../x", "/tmp/abs", "..", ".", "a?b", "a/b", "-x", "x" * 65, "é"]
)
def test_a_study_name_that_is_not_one_path_segment_is_refused(capsys, tmp_path, space, name):
    line = refused(capsys, tmp_path, "run", str(space), f"--name={name}", "--storage", "studies")
    assert "is not a plain name" in line


@pytest.mark.parametrize("how", ["space", "set"])
def test_the_spaces_own_name_is_checked_too(capsys, tmp_path, space, how):
    if how == "space":
        data = yaml.safe_load(space.read_text())
        write(space, yaml.safe_dump({**data, "name": "a\x00b"}))  # a NUL byte, from the file
        line = refused(capsys, tmp_path, "run", str(space))
    else:
        line = refused(capsys, tmp_path, "run", str(space), "--set", "name=../../escape")
    assert "'name'" in line and "is not a plain name" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "../../../etc"],
        ["resume", "/etc"],
        ["report", ".."],
        ["rerun", "../x"],
        ["rerun", "ok", "--new-name", "../escape"],
    ],
)
def test_study_arguments_are_names_not_paths(capsys, tmp_path, argv):
    line = refused(capsys, tmp_path, *argv, "--storage", "studies")
    assert "is not a plain name" in line or "no study 'ok'" in line


# -- secrets stay secret ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--tracking-uri", f"http://alice:{PASSWORD}@127.0.0.1:1/"),
        ("--storage", f"s3://AKIA:{PASSWORD}/x@bucket/studies"),
        ("--address", f"ray://alice:{PASSWORD}@127.0.0.1:10001"),
    ],
)
def test_a_uri_with_credentials_is_refused_without_echoing_them(
    capsys, tmp_path, space, option, value
):
    line = refused(capsys, tmp_path, "run", str(space), option, value)
    assert PASSWORD not in line and "***@" in line and "holds credentials" in line
    if option == "--tracking-uri":
        assert "MLFLOW_TRACKING_PASSWORD" in line
        line = refused(capsys, tmp_path, "train", option, value)
        assert PASSWORD not in line


# Every credential variable the README names, and the usual cloud ones: each set to its own marker.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_SECRET",
    "GOOGLE_APPLICATION_CREDENTIALS", "HF_TOKEN", "WANDB_API_KEY", "GITHUB_TOKEN",
    "DATABRICKS_TOKEN",
)  # fmt: skip


@pytest.mark.slow
def test_credentials_from_the_environment_reach_no_file_and_no_output(tmp_path, space):
    """The supported way (environment variables): a whole study with every credential variable
    set to a marker, then every file it wrote — Tune's pickled state, Optuna's and MLflow's
    databases, evidence, report, driver.log — and every file of the Ray session it started
    (issue 34: Tune copied AWS_* into the trials' runtime environment, which Ray's agent logged
    in a world-readable file) are searched for the markers; that session's directory is this
    user's alone."""
    import tempfile

    markers = {name: f"{PASSWORD}-{i}" for i, name in enumerate(CREDENTIAL_VARIABLES)}
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths
    try:
        env = {**os.environ, **markers, "RAY_TMPDIR": str(ray_tmp)}
        data = yaml.safe_load(space.read_text())
        write(space, yaml.safe_dump({**data, "samples": 2}))
        proc = run_study(
            "run", str(space), "--name", "s", "--storage", "studies", cwd=tmp_path, env=env
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert PASSWORD not in proc.stdout + proc.stderr
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert any(p.name == "tuner.pkl" for p in written) and any(
            p.suffix == ".parquet" for p in written
        )
        assert any(p.name == "driver.log" for p in written)
        (private,) = ray_tmp.iterdir()
        assert private.name == f"sharpcal-ray-{os.getuid()}"
        assert private.stat().st_mode & 0o777 == 0o700
        ray_files = [p for p in private.rglob("*") if p.is_file() and not p.is_symlink()]
        assert any(p.name == "runtime_env_agent.log" for p in ray_files), ray_files[:20]
        leaked = [p for p in written + ray_files if PASSWORD.encode() in p.read_bytes()]
        assert leaked == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# -- bad input: one line, exit 2, nothing written, Ray not started -------------------------------


def test_a_space_file_that_is_not_utf8_is_one_line(capsys, tmp_path):
    path = write(tmp_path / "latin1.yaml", "description: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text" in refused(capsys, tmp_path, "run", str(path))


def test_nested_yaml_aliases_are_refused_at_once_with_a_short_message(capsys, tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    path = write(tmp_path / "laughs.yaml", "\n".join(lines) + "\nfixed: {lr: 0.1}\n")
    assert len(path.read_bytes()) < 600
    line = refused(capsys, tmp_path, "run", str(path))
    assert "aliases" in line


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["device=xpu"], "'device'"),
        (["lr=.inf"], "finite"),
        (["eta=.inf"], "finite"),
        (["weight_decay=.nan"], "finite"),
        (["epochs=1e15"], "'epochs'"),
        (["epochs=1000000000000000"], "less than or equal"),
        (["samples=1e21"], "samples"),
        (["model=" + "x" * 5000], "chars)"),
        (["dataset=cifar10", "data_root=/nonexistent/cifar"], "not found"),
        (["device=cuda:0"], "CUDA is not available"),
    ],
)
def test_values_that_cannot_be_meant_are_refused_before_ray(
    capsys, tmp_path, space, sets, expected
):
    if expected == "CUDA is not available" and __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is present: cuda:0 is a valid choice here")
    argv = ["run", str(space)]
    for item in sets:
        argv += ["--set", item]
    line = refused(capsys, tmp_path, *argv)
    assert expected in line


def test_an_infinite_distribution_bound_is_refused(capsys, tmp_path):
    data = {"fixed": DIGITS, "search": {"lr": {"loguniform": [0.01, float("inf")]}}}
    path = write(tmp_path / "inf.yaml", yaml.safe_dump(data))
    assert "finite" in refused(capsys, tmp_path, "run", str(path))


@contextlib.contextmanager
def read_only(directory: Path):
    """``directory`` unwritable, even for root (the immutable flag), inside the block."""
    directory.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
    try:
        yield directory
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def test_storage_that_is_a_file_or_read_only_is_refused_before_mlflow_db_exists(
    capsys, tmp_path, space
):
    write(tmp_path / "afile", "x")
    line = refused(capsys, tmp_path, "run", str(space), "--storage", "afile")
    assert "is a file" in line
    line = refused(capsys, tmp_path, "run", str(space), "--storage", "afile/sub")
    assert "not a directory this user can write" in line
    with read_only(tmp_path / "ro"):
        line = refused(capsys, tmp_path, "run", str(space), "--storage", "ro")
    assert "not a directory this user can write" in line
    assert not (tmp_path / "mlflow.db").exists()


def _half_study(tmp_path: Path, *, optuna_db: bool, tracking: str | None) -> Path:
    """A study directory as a crash or a hand edit can leave it."""
    root = tmp_path / "studies" / "half"
    root.mkdir(parents=True)
    write(root / "space.yaml", yaml.safe_dump({"name": "half", "fixed": DIGITS}))
    if optuna_db:
        import optuna

        half = optuna.create_study(study_name="half", storage=f"sqlite:///{root / 'optuna.db'}")
        half.ask()  # a trial was asked for: the study started, Tune's state is what is missing
    if tracking is not None:
        write(root / "mlflow.json", tracking)
    return root


@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_study_without_optuna_db_is_one_line_and_none_is_created(capsys, tmp_path, command):
    root = _half_study(tmp_path, optuna_db=False, tracking=None)
    line = refused(capsys, tmp_path, command, "half", "--storage", "studies")
    assert "no Optuna database" in line and not (root / "optuna.db").exists()


def test_a_corrupt_mlflow_json_is_one_line_on_resume(capsys, tmp_path):
    _half_study(tmp_path, optuna_db=True, tracking='{"tracking_uri": ')
    line = refused(capsys, tmp_path, "resume", "half", "--storage", "studies")
    assert "mlflow.json" in line and "not readable tracking info" in line


# -- atomic files -------------------------------------------------------------------------------


def test_a_failed_write_keeps_the_previous_file_and_directory(tmp_path):
    from trainables.atomic import atomic_write, atomic_write_text, replace_directory

    target = tmp_path / "space.yaml"
    atomic_write_text(target, "old: 1\n")

    def fails_halfway(f):
        f.write(b"new: ")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, fails_halfway)
    assert target.read_text() == "old: 1\n" and sorted(os.listdir(tmp_path)) == ["space.yaml"]

    report = tmp_path / "report"
    replace_directory(report, lambda d: (d / "report.md").write_text("# old\n"))

    def fails_after_a_figure(d: Path) -> None:
        (d / "pareto.png").write_bytes(b"half")
        raise RuntimeError("matplotlib failed")

    with pytest.raises(RuntimeError):
        replace_directory(report, fails_after_a_figure)
    assert (
        sorted(os.listdir(report)) == ["report.md"]
        and (report / "report.md").read_text() == "# old\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["report", "space.yaml"]


# -- one driver per study -------------------------------------------------------------------------


def test_a_second_lock_names_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from study.storage.lock import StudyLock, StudyLocked

    with StudyLock(tmp_path, "s"), pytest.raises(StudyLocked, match=rf"pid {os.getpid()} on "):
        StudyLock(tmp_path, "s").acquire()
    holder = subprocess.Popen(
        ["python3", "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(tmp_path / 'driver.lock')!r}, os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, b'{\"pid\": %d, \"host\": \"h\", \"since\": 0}' % os.getpid())\n"
         "print('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StudyLocked, match=f"pid {holder.pid} on h"):
        StudyLock(tmp_path, "s").acquire()
    holder.kill()  # SIGKILL: the lock file stays, the lock does not
    holder.wait()
    lock = StudyLock(tmp_path, "s")
    lock.acquire()
    assert lock.previous and lock.previous["pid"] == holder.pid
    lock.release()
    assert json.loads((tmp_path / "driver.lock").read_text() or "{}") == {}


def test_an_address_where_no_cluster_answers_is_one_line_before_anything(
    capsys, tmp_path, space, monkeypatch
):
    """Issue 17, item 4: no hang on a dead address, no traceback, no study directory."""
    import time

    start = time.monotonic()
    line = refused(capsys, tmp_path, "run", str(space), "--address", "127.0.0.1:1")
    assert "nothing answers at 127.0.0.1:1" in line and time.monotonic() - start < 30
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-ray"))  # no cluster recorded here
    line = refused(capsys, tmp_path, "run", str(space), "--address", "auto")
    assert "no running Ray cluster" in line and "ray start --head" in line


@pytest.mark.parametrize(
    ("preset", "expected"),
    [({}, "telemetry off, usage stats off"),
     ({"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": "1"},
      "telemetry on, usage stats on")],
    ids=["default", "asked-for"],
)  # fmt: skip
def test_mlflow_telemetry_and_ray_usage_reports_are_off_unless_the_user_turns_them_on(
    preset, expected
):
    """Nothing of a study leaves the machine unless asked: importing sharpcal turns MLflow's
    telemetry and Ray's usage reports off, as the libraries themselves read it (a clean
    environment: MLflow also turns its telemetry off under pytest or CI variables); a user's own
    setting wins."""
    import sys

    code = (
        "import study, mlflow\n"
        "from mlflow.telemetry.utils import is_telemetry_disabled\n"
        "from ray._common.usage.usage_lib import usage_stats_enabled\n"
        "print('telemetry', 'off' if is_telemetry_disabled() else 'on', end=', ')\n"
        "print('usage stats', 'on' if usage_stats_enabled() else 'off')\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **preset}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == expected
