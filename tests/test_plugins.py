"""A user's own parts from their own code (issue 35, item 2): a space file's ``plugins`` reach
the driver before the space is checked and every Ray worker before a trial reads its settings;
a bad plugin is one line and exit 2 with nothing written; a user's calibrator is one file that
``compare --calibrators`` uses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces.schema import load_space
from study.analysis.calibrators import CALIBRATORS, Calibrator, fit_calibrator, register_calibrator
from trainables.errors import PluginError

REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
FILE_PLUGIN = PLUGINS / "calibrator_parts.py"
PACKAGE_DIR = PLUGINS / "pkg"  # holds sharpcal_test_pkg, a package that is not installed

SETTINGS = "fixed: {dataset: digits, model: cnn, epochs: 1, batch_size: 64, device: cpu}\n"


def _study(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(tmp_path: Path, markers: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(PACKAGE_DIR)])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if markers is not None:
        env["SHARPCAL_PLUGIN_MARKERS"] = str(markers)
    return env


BAD_PLUGINS = {
    # name -> (the plugin file's text, or None for no file; what its one line says)
    "import": (
        "import os\n\nvalue = 1 / 0\n",
        r"does not import: ZeroDivisionError: .*bad\.py:3\)",
    ),
    "collision": (
        "from study.analysis.calibrators import Calibrator, register_calibrator\n\n\n"
        '@register_calibrator("ts")\nclass Mine(Calibrator):\n    title = "mine"\n'
        "    def parameters(self, c): return 1\n    def fit(self, p, y): pass\n"
        "    def transform(self, p): return p\n",
        r"calibrator 'ts' from bad is already registered by study\.analysis\.calibrators",
    ),
    "contract": (
        "from study.analysis.calibrators import Calibrator, register_calibrator\n\n\n"
        '@register_calibrator("half_done")\nclass Mine(Calibrator):\n    title = "mine"\n',
        r"calibrator 'half_done' from bad does not keep the calibrator contract: it does not "
        r"define parameters, fit, transform",
    ),
    "missing": (None, r"plugin \./bad\.py: no Python file at .*bad\.py"),
}


def _bad_space(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A space whose plugin ``./bad.py`` is bad in the way ``kind`` names, and an empty
    working directory."""
    text, _ = BAD_PLUGINS[kind]
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    if text is not None:
        (spaces / "bad.py").write_text(text)
    (spaces / "s.yaml").write_text(f"plugins: [./bad.py]\n{SETTINGS}samples: 1\n")
    work = tmp_path / "work"
    work.mkdir()
    return spaces / "s.yaml", work


def _refused(stderr: str, kind: str, space: Path, work: Path) -> None:
    """One line naming the space's plugins and saying what is wrong; nothing written."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(BAD_PLUGINS[kind][1], lines[0]), stderr
    assert lines[0].startswith(f"study run: error: {space}: 'plugins': ")
    assert not list(work.iterdir())  # no study directory, no MLflow database
    assert {p.name for p in space.parent.iterdir()} <= {"s.yaml", "bad.py"}


@pytest.mark.parametrize("command", [("--dry-run",), ()], ids=["dry-run", "run"])
@pytest.mark.parametrize("kind", list(BAD_PLUGINS))
def test_a_bad_plugin_is_one_line_and_exit_2_with_nothing_written(
    tmp_path: Path,
    kind: str,
    command: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from study.cli.main import main

    space, work = _bad_space(tmp_path, kind)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    assert main(["run", str(space), *command]) == 2
    _refused(capsys.readouterr().err, kind, space, work)
    assert "bad" not in sys.modules  # a plugin that failed is not left half-imported


@pytest.mark.slow
def test_the_study_command_refuses_a_bad_plugin_with_exit_2(tmp_path: Path) -> None:
    """The same through ``python -m study`` (its own process: nothing cached)."""
    space, work = _bad_space(tmp_path, "import")
    done = _study("run", str(space), cwd=work, env=_env(work))
    assert done.returncode == 2, done.stderr[-2000:]
    _refused(done.stderr, "import", space, work)


def test_plugin_files_are_stored_absolute_relative_to_the_space_file(tmp_path: Path) -> None:
    """Resolved against the space file's directory, not the working directory."""
    spaces = tmp_path / "a" / "b"
    spaces.mkdir(parents=True)
    (spaces / "my_parts_here.py").write_text("VALUE = 1\n")
    (spaces / "s.yaml").write_text(f"plugins: [./my_parts_here.py]\n{SETTINGS}")
    space = load_space(str(spaces / "s.yaml"))
    assert space.plugins == [str((spaces / "my_parts_here.py").resolve())]
    assert "my_parts_here" in sys.modules
    sys.modules.pop("my_parts_here")


def test_a_calibrator_from_a_plugin_registers_like_a_builtin() -> None:
    import numpy as np

    @register_calibrator("test_identity")
    class Identity(Calibrator):
        title = "no change"

        def parameters(self, classes: int) -> int:
            return 0

        def fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
            pass

        def transform(self, probs: np.ndarray) -> np.ndarray:
            return probs

    try:
        probs = np.full((4, 2), 0.5)
        assert fit_calibrator("test_identity", probs, np.zeros(4)).__call__(probs).probs.sum() == 4
        assert not CALIBRATORS.builtin("test_identity") and CALIBRATORS.builtin("ts")
        with pytest.raises(PluginError, match="already registered"):
            register_calibrator("test_identity")(type("Other", (Identity,), {}))
    finally:
        CALIBRATORS._parts.pop("test_identity")  # the registry as the other tests see it
        CALIBRATORS._origins.pop("test_identity")


@pytest.mark.slow
def test_plugins_reach_every_worker_and_compare_and_resume_read_them(tmp_path: Path) -> None:
    """One real local study (digits, 1 trial, 1 epoch) with a plugin file (relative to the space
    file) and a package that is not installed: the probe task and the trial (a Ray actor)
    import both, the package from the copy the runtime environment shipped; then, from another
    working directory, ``compare --calibrators`` uses the file's calibrator and ``resume``
    finds the plugins where the study stored them (absolute)."""
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    shutil.copy(FILE_PLUGIN, spaces / "calibrator_parts.py")
    (spaces / "plug.yaml").write_text(
        f"plugins: [./calibrator_parts.py, sharpcal_test_pkg]\n{SETTINGS}"
        "samples: 1\nconcurrency: 1\nsampler: random\n"
    )
    markers = tmp_path / "markers"
    markers.mkdir()
    env = _env(tmp_path, markers)
    storage = str(tmp_path / "studies")
    run = _study("run", str(spaces / "plug.yaml"), "--storage", storage, cwd=spaces, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    found = {p.name.rsplit("-", 1)[0]: p.read_text() for p in markers.iterdir()}
    for where in ("driver", "task", "actor"):  # the driver, the probe task, the trial
        assert f"file-{where}" in found and f"pkg-{where}" in found, sorted(found)
    assert found["file-actor"] == str(spaces / "calibrator_parts.py")
    assert "runtime_resources" in found["pkg-actor"]  # shipped with py_modules, not PYTHONPATH

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    compare = _study(
        "compare",
        "plug",
        "--storage",
        storage,
        "--calibrators",
        "ts,shrink",
        cwd=elsewhere,
        env=env,
    )
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert "After shrinkage to uniform, fitted on each trial's val evidence" in compare.stdout
    unknown = _study(
        "compare", "plug", "--storage", storage, "--calibrators", "nope", cwd=elsewhere, env=env
    )
    assert unknown.returncode == 2 and "ts,vs,ms,hb,iso,shrink" in unknown.stderr

    resume = _study("resume", "plug", "--storage", storage, cwd=elsewhere, env=env)
    assert resume.returncode == 0, resume.stdout[-2000:] + resume.stderr[-2000:]
    assert "1 trial, 0 errored" in resume.stdout


@pytest.mark.slow
def test_a_worker_imports_a_shipped_file_and_a_plugin_it_cannot_import_is_refused(
    tmp_path: Path,
) -> None:
    """On a node without the plugin file (a cluster's), a worker imports the copy the job's
    runtime environment shipped; a plugin that fails on a worker is one ``PluginError`` line."""
    import ray

    from study.runtime.tuner import init_ray, probe_plugins

    source = tmp_path / "src"
    source.mkdir()
    good, bad = source / "shipped_part.py", source / "fails_on_workers.py"
    good.write_text("VALUE = 1\n")
    bad.write_text(
        "import ray\n\nif ray.is_initialized():\n    raise ImportError('no GPU library here')\n"
    )
    init_ray(None, num_cpus=1, plugins=[str(good), str(bad)])
    try:
        source.rename(tmp_path / "gone")  # this node no longer has the files
        files = probe_plugins([str(good)])
        assert "runtime_resources" in files[str(good)]
        with pytest.raises(PluginError) as refused:
            probe_plugins([str(bad)])
        message = str(refused.value)
        assert message.startswith(
            f"on a Ray worker: plugin {bad} (its shipped copy) does not import: ImportError: no "
            "GPU library here ("
        )
        assert "\n" not in message
    finally:
        ray.shutdown()


def test_the_space_names_a_registered_scheduler_and_a_plugin_can_add_one() -> None:
    """``scheduler:`` is read from ``SCHEDULERS`` (unknown: one line listing them); a scheduler
    registered as a plugin's is checked and built like the built-ins."""
    from ray.tune.schedulers import FIFOScheduler

    from search_spaces import SpaceError
    from study.api.study import resolve
    from study.search.schedulers import (
        SCHEDULERS,
        InPlaceFIFOScheduler,
        MOASHAScheduler,
        Scheduler,
        build_scheduler,
        register_scheduler,
    )

    base = {"fixed": {"dataset": "digits", "epochs": 4, "device": "cpu"}, "samples": 1}
    assert SCHEDULERS.names()[:2] == ("none", "asha")
    with pytest.raises(
        SpaceError, match=r"^space: 'scheduler': unknown scheduler 'mine': known are none, asha"
    ):
        resolve({**base, "scheduler": "mine"})
    assert isinstance(build_scheduler(resolve(base), "sqlite://", "s"), InPlaceFIFOScheduler)
    asha = resolve({**base, "scheduler": "asha"})
    assert isinstance(build_scheduler(asha, "sqlite://", "s"), MOASHAScheduler)

    @register_scheduler("test_fifo")
    class Mine(Scheduler):
        title = "plain FIFO"

        def check(self, space):  # type: ignore[no-untyped-def]
            if space.samples > 2:
                raise SpaceError("test_fifo: at most 2 samples")

        def build(self, space, optuna_url, study_name):  # type: ignore[no-untyped-def]
            return FIFOScheduler()

    try:
        space = resolve({**base, "scheduler": "test_fifo"})
        assert type(build_scheduler(space, "sqlite://", "s")) is FIFOScheduler
        with pytest.raises(SpaceError, match="^space: test_fifo: at most 2 samples$"):
            resolve({**base, "scheduler": "test_fifo", "samples": 3})
        with pytest.raises(PluginError, match="does not keep the scheduler contract"):
            register_scheduler("test_bad")(type("Bad", (Scheduler,), {"title": "bad"}))
    finally:
        SCHEDULERS._parts.pop("test_fifo")
        SCHEDULERS._origins.pop("test_fifo")


def test_study_train_imports_the_space_plugins_first(tmp_path: Path) -> None:
    """``study train --space FILE`` reads the space's settings after importing its plugins."""
    from study.api.train import train_settings

    (tmp_path / "train_time_part.py").write_text("VALUE = 7\n")
    (tmp_path / "s.yaml").write_text(f"plugins: [./train_time_part.py]\n{SETTINGS}")
    try:
        assert train_settings(tmp_path / "s.yaml", {"epochs": 2})["epochs"] == 2
        assert sys.modules["train_time_part"].VALUE == 7
    finally:
        sys.modules.pop("train_time_part", None)
