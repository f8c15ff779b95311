"""Fault injection on a study's storage (issue 27, items 3-5): corrupt, foreign, symlinked,
read-only and full study files are refused in one line (exit 2), never repaired silently, and
missing or unreadable evidence is left out visibly. No Ray: a study directory as `study run`
leaves it (space, real Optuna database, real Parquet evidence) is built once per module with
Optuna's and pyarrow's own APIs, then each test corrupts a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from search_spaces.schema import check_space
from study.cli.main import main
from study.storage.lock import StudyLock, StudyLocked
from tests.conftest import fill_disk, mount_tmpfs
from trainables.evaluation.evidence import evidence_table, write_evidence
from trainables.layout import evidence_uri, study_paths

NAME = "fs"
NOBODY = 65534
SPACE = {
    "fixed": {"dataset": "digits", "train_subset": None, "epochs": 2, "method": "sam"},
    "search": {"lr": {"loguniform": [0.02, 0.2]}, "seed": {"categorical": [0, 1]}},
    "objective": {"type": "weighted"},
    "samples": 4,
}
TRIALS = [(0.05, 0, 0.8), (0.05, 1, 0.7), (0.1, 0, 0.75), (0.1, 1, 0.6)]


def _build(storage: Path) -> None:
    """Study ``fs`` in ``storage``: 4 completed trials (2 configurations x 2 seeds), each with
    val and test evidence of epochs 1 and 2 (the trials ran 2 epochs)."""
    paths = study_paths(NAME, str(storage))
    paths.root.mkdir(parents=True)
    space = check_space(dict(SPACE), "test")
    paths.space.write_text(yaml.safe_dump({**space.model_dump(mode="json"), "name": NAME}))
    study = optuna.create_study(study_name=NAME, storage=paths.optuna_url, direction="maximize")
    labels = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(7))
    for number, (lr, seed, value) in enumerate(TRIALS):
        study.enqueue_trial({"lr": lr, "seed": seed})
        trial = study.ask()
        trial.suggest_float("lr", 0.02, 0.2, log=True)
        trial.suggest_categorical("seed", [0, 1])
        for key, val in [("status", "completed"), ("tune_trial_id", f"t{number}"), ("epoch", 2)]:
            trial.set_user_attr(key, val)
        trial.set_user_attr("val_accuracy", value + 0.1)
        trial.set_user_attr("val_ece", 0.1)
        gen = torch.Generator().manual_seed(number)
        for epoch in (1, 2):
            for split in ("val", "test"):
                logits = 3 * torch.randn(60, 10, generator=gen)
                table = evidence_table(logits, labels, study=NAME, epoch=epoch, temperature=1.5)
                write_evidence(table, evidence_uri(str(paths.root)), f"t{number}", split, epoch)
        study.tell(trial, value)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    storage = tmp_path_factory.mktemp("pristine") / "studies"
    _build(storage)
    return storage


@pytest.fixture
def storage(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pristine study's storage."""
    target = tmp_path / "studies"
    shutil.copytree(pristine, target, symlinks=True)
    return target


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, *argv: str) -> str:
    """Run the command; assert it exits 2 with one error line and no traceback; that line."""
    code, _, err = _cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _db(storage: Path) -> Path:
    return storage / NAME / "optuna.db"


READERS = [
    ("status", NAME),
    ("compare", NAME),
    ("compare", NAME, "--ensembles"),
    ("report", NAME),
    ("rerun", NAME, "--new-name", "again"),
]


# ----------------------------------------------------------------------------------------------
# Item 3: corrupt or foreign study files
# ----------------------------------------------------------------------------------------------


def test_the_pristine_study_reads(storage, capsys):
    code, out, err = _cli(capsys, "status", NAME, "--storage", str(storage))
    assert code == 0 and "4/4 trials finished" in out, err
    code, out, err = _cli(capsys, "compare", NAME, "--ensembles", "--storage", str(storage))
    assert code == 0 and "ensemble" in out and "note:" not in err, err


@pytest.mark.parametrize("argv", READERS + [("resume", NAME)], ids=" ".join)
def test_truncated_optuna_db_is_one_line(storage, capsys, argv):
    db = _db(storage)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    line = _refused(capsys, *argv, "--storage", str(storage))
    assert "optuna.db" in line and "not repaired" in line
    assert db.read_bytes() == data[: len(data) // 2]


@pytest.mark.parametrize("argv", READERS + [("resume", NAME)], ids=" ".join)
def test_scribbled_optuna_db_is_one_line(storage, capsys, argv):
    db = _db(storage)
    data = bytearray(db.read_bytes())
    data[100 : len(data) - 100] = os.urandom(len(data) - 200)
    db.write_bytes(bytes(data))
    assert "optuna.db" in _refused(capsys, *argv, "--storage", str(storage))
    assert db.read_bytes() == bytes(data)


def test_overwritten_optuna_db_is_one_line(storage, capsys):
    _db(storage).write_text("not a database at all\n" * 100)
    line = _refused(capsys, "status", NAME, "--storage", str(storage))
    assert "not an SQLite database" in line


@pytest.mark.parametrize("argv", READERS + [("resume", NAME)], ids=" ".join)
def test_zero_byte_optuna_db_is_refused_and_not_written(storage, capsys, argv):
    db = _db(storage)
    db.write_bytes(b"")
    line = _refused(capsys, *argv, "--storage", str(storage))
    assert "empty" in line
    assert db.stat().st_size == 0  # no schema written into it


def test_a_database_of_another_study_is_one_line(storage, capsys):
    db = _db(storage)
    db.unlink()
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    line = _refused(capsys, "status", NAME, "--storage", str(storage))
    assert "no Optuna study named 'fs'" in line


@pytest.mark.parametrize("argv", READERS, ids=" ".join)
def test_a_renamed_study_directory_is_one_line_for_readers(storage, capsys, argv):
    (storage / NAME).rename(storage / "renamed")
    before = (storage / "renamed" / "optuna.db").read_bytes()
    argv = (argv[0], "renamed", *argv[2:])
    line = _refused(capsys, *argv, "--storage", str(storage))
    assert "holds study 'fs'" in line and "renamed" in line
    assert (storage / "renamed" / "optuna.db").read_bytes() == before


def _evidence_file(storage: Path, trial: str, split: str = "test", epoch: int = 2) -> Path:
    part = storage / NAME / "evidence" / f"trial_id={trial}" / f"split={split}"
    return part / f"epoch-{epoch:04d}.parquet"


@pytest.mark.parametrize("damage", ["truncate", "scribble"])
def test_a_corrupt_evidence_file_is_named_and_its_trial_left_out(storage, capsys, damage):
    path = _evidence_file(storage, "t1")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[4:-8] = os.urandom(len(data) - 12)
    path.write_bytes(bytes(data))
    code, out, err = _cli(capsys, "compare", NAME, "--ensembles", "--storage", str(storage))
    assert code == 0 and "Traceback" not in err, err
    assert "trial 1" in err and "epoch-0002.parquet" in err and "left out" in err
    code, out, err = _cli(capsys, "report", NAME, "--storage", str(storage))
    assert code == 0 and "Traceback" not in err, err
    text = (storage / NAME / "report" / "report.md").read_text()
    assert "epoch-0002.parquet" in text and "left out" in text


def test_a_deleted_last_epoch_evidence_file_leaves_the_trial_out_visibly(storage, capsys):
    _evidence_file(storage, "t0").unlink()  # epoch 1 stays: it must not be read as the last
    code, out, err = _cli(capsys, "compare", NAME, "--ensembles", "--storage", str(storage))
    assert code == 0, err
    assert "trial 0" in err and "epoch 2" in err and "left out" in err
    assert "ensemble x 1" not in out
    code, out, err = _cli(capsys, "report", NAME, "--storage", str(storage))
    assert code == 0, err
    text = (storage / NAME / "report" / "report.md").read_text()
    assert "trial 0" in text and "left out" in text


@pytest.mark.parametrize("source", ["another study", "another trial"])
def test_evidence_of_another_study_or_trial_is_named_and_its_trial_left_out(
    storage, tmp_path, capsys, source
):
    """Issue 34, item 10: another study's Parquet file copied into a trial's directory was used
    by `compare` with no note (an ensemble's ECE went from 7.8% to 32.4%)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(7))
    logits = 9 * torch.randn(60, 10, generator=torch.Generator().manual_seed(99))
    if source == "another study":  # `cp` of the same trial's file of another study
        table = evidence_table(logits, labels, study="other", epoch=2, temperature=1.5)
        foreign = write_evidence(table, str(tmp_path / "other" / "evidence"), "t0", "test", 2)
        shutil.copy(foreign, _evidence_file(storage, "t0"))
        expected = "study 'other'"
    else:  # a file carrying its own trial_id column (e.g. a DuckDB export of trial t3's rows)
        table = evidence_table(logits, labels, study=NAME, epoch=2, temperature=1.5)
        table = table.append_column("trial_id", pa.array(["t3"] * 60))
        pq.write_table(table, _evidence_file(storage, "t0"))
        expected = "trial 't3'"
    code, out, err = _cli(capsys, "compare", NAME, "--ensembles", "--storage", str(storage))
    assert code == 0 and "Traceback" not in err, err
    notes = [line for line in err.splitlines() if "trial 0" in line]
    assert len(notes) == 1 and "epoch-0002.parquet" in notes[0] and expected in notes[0], err
    assert "left out" in notes[0]
    assert "ensemble x 1" not in out and "ensemble x 2" in out  # t2/t3's, not t0/t1's
    assert out.count("ensemble x 2") == 1
    if source == "another trial":
        return  # the report reads the evidence through the same reader
    code, out, err = _cli(capsys, "report", NAME, "--storage", str(storage))
    assert code == 0 and "Traceback" not in err, err
    text = (storage / NAME / "report" / "report.md").read_text()
    assert "trial 0" in text and expected in text and "left out" in text


def test_a_missing_evidence_directory_is_said_once(storage, capsys):
    shutil.rmtree(storage / NAME / "evidence")
    code, out, err = _cli(capsys, "compare", NAME, "--ensembles", "--storage", str(storage))
    assert code == 0, err
    notes = [line for line in err.splitlines() if "evidence" in line]
    assert len(notes) == 1 and "no evidence directory" in notes[0], err
    _cli(capsys, "report", NAME, "--storage", str(storage))
    text = (storage / NAME / "report" / "report.md").read_text()
    assert "no evidence directory" in text


# ----------------------------------------------------------------------------------------------
# Item 4: no symlink or foreign directory is followed or adopted
# ----------------------------------------------------------------------------------------------


def test_a_symlinked_study_name_is_refused(storage, tmp_path, capsys):
    (storage / NAME).rename(tmp_path / "elsewhere")
    (storage / NAME).symlink_to(tmp_path / "elsewhere")
    for argv in [("status", NAME), ("report", NAME), ("resume", NAME)]:
        assert "symlink" in _refused(capsys, *argv, "--storage", str(storage))
    assert not (tmp_path / "elsewhere" / "report").exists()
    line = _refused(capsys, "run", "--name", NAME, "--storage", str(storage), "--dry-run")
    assert "symlink" in line


def test_a_dangling_symlink_is_refused_by_the_dry_run_and_the_run(tmp_path, capsys):
    storage = tmp_path / "studies"
    storage.mkdir()
    (storage / "x").symlink_to(tmp_path / "nowhere")
    for extra in (["--dry-run"], []):
        line = _refused(capsys, "run", "--name", "x", "--storage", str(storage), *extra)
        assert "symlink" in line
    assert not (tmp_path / "nowhere").exists()


def test_a_foreign_world_writable_directory_is_not_adopted(tmp_path, capsys):
    storage = tmp_path / "studies"
    foreign = storage / "x"
    foreign.mkdir(parents=True)
    os.chown(foreign, NOBODY, NOBODY)
    foreign.chmod(0o777)
    for extra in (["--dry-run"], []):
        line = _refused(capsys, "run", "--name", "x", "--storage", str(storage), *extra)
        assert "owned by another user" in line
    assert list(foreign.iterdir()) == []


def test_a_symlinked_lock_is_refused_and_its_target_kept(tmp_path):
    mine = tmp_path / "precious.txt"
    mine.write_text("my data\n")
    study_dir = tmp_path / "s"
    study_dir.mkdir()
    (study_dir / "driver.lock").symlink_to(mine)
    with pytest.raises(StudyLocked, match="symlink"):
        StudyLock(study_dir, "s").acquire()
    assert mine.read_text() == "my data\n"


def test_a_symlinked_lock_refuses_resume_and_status_in_one_line(storage, tmp_path, capsys):
    mine = tmp_path / "precious.txt"
    mine.write_text("my data\n")
    (storage / NAME / "driver.lock").symlink_to(mine)
    for argv in [("status", NAME), ("resume", NAME)]:
        assert "symlink" in _refused(capsys, *argv, "--storage", str(storage))
    assert mine.read_text() == "my data\n"


def test_a_refused_lock_leaves_no_lock_file_it_created(tmp_path):
    lock = StudyLock(tmp_path, "s")
    lock.acquire()
    lock.release(discard=True)
    assert not (tmp_path / "driver.lock").exists()
    (tmp_path / "driver.lock").write_text("")
    lock.acquire()
    lock.release(discard=True)  # not created by this lock: it stays
    assert (tmp_path / "driver.lock").exists()


def test_resume_refuses_tune_state_owned_by_another_user(storage, capsys):
    tune = storage / NAME / "tune"
    tune.mkdir()
    state = tune / "tuner.pkl"  # what Tuner.restore unpickles (another user's: never)
    state.write_bytes(b"not unpickled")
    os.chown(state, NOBODY, NOBODY)
    line = _refused(capsys, "resume", NAME, "--storage", str(storage))
    assert "owned by another user" in line and "Tune" in line


def test_check_restorable_refuses_a_foreign_tune_directory(storage):
    from study.storage.files import StudyFilesError, check_restorable

    paths = study_paths(NAME, str(storage))
    tune = Path(paths.tune)
    tune.mkdir()
    check_restorable(paths, NAME)  # own: fine
    os.chown(tune, NOBODY, NOBODY)
    with pytest.raises(StudyFilesError, match="owned by another user"):
        check_restorable(paths, NAME)


# ----------------------------------------------------------------------------------------------
# Item 5: storage that cannot be written; what the dry run accepts, the run accepts
# ----------------------------------------------------------------------------------------------


def test_storage_proc_is_refused_by_the_dry_run(capsys):
    line = _refused(capsys, "run", "--name", "x", "--storage", "/proc", "--dry-run")
    assert "/proc" in line and "writ" in line


def test_an_existing_name_is_refused_by_the_dry_run_as_by_the_run(storage, capsys):
    line = _refused(capsys, "run", "--name", NAME, "--storage", str(storage), "--dry-run")
    assert "already exists" in line


def test_a_name_that_is_a_file_is_refused_by_the_dry_run_and_leaves_no_lock(storage, capsys):
    nest = storage / NAME
    for extra in (["--dry-run"], []):
        line = _refused(capsys, "run", "--name", "space.yaml", "--storage", str(nest), *extra)
        assert "space.yaml" in line and "not a directory" in line
    assert sorted(p.name for p in nest.iterdir()) == ["evidence", "optuna.db", "space.yaml"]


@pytest.mark.slow
def test_a_read_only_study_directory_is_one_line(pristine, mount_dir, capsys):
    mount_tmpfs(mount_dir, "size=16m")
    shutil.copytree(pristine, mount_dir / "studies")
    subprocess.run(["mount", "-o", "remount,ro", str(mount_dir)], check=True)
    storage = str(mount_dir / "studies")
    code, out, err = _cli(capsys, "status", NAME, "--storage", storage)
    assert code == 0 and "4/4" in out, err  # reading needs no write
    for argv in [("report", NAME), ("resume", NAME)]:
        line = _refused(capsys, *argv, "--storage", storage)
        assert "cannot be written" in line and "read-only" in line.lower()


@pytest.mark.slow
def test_a_full_disk_is_one_line_before_work(pristine, mount_dir, capsys):
    mount_tmpfs(mount_dir, "size=2m")
    shutil.copytree(pristine, mount_dir / "studies")
    fill_disk(mount_dir, 65536)
    storage = str(mount_dir / "studies")
    for argv in [("report", NAME), ("resume", NAME), ("run", "--name", "new", "--dry-run")]:
        line = _refused(capsys, *argv, "--storage", storage)
        assert "MiB free" in line and "No space" in line, line


@pytest.mark.slow
def test_a_disk_filling_up_while_the_report_is_written_is_one_line(
    pristine, mount_dir, capsys, monkeypatch
):
    import study.storage.files

    mount_tmpfs(mount_dir, "size=2m")
    shutil.copytree(pristine, mount_dir / "studies")
    fill_disk(mount_dir, 4096)
    monkeypatch.setattr(study.storage.files, "MIN_FREE_BYTES", 0)  # past the check before work
    line = _refused(capsys, "report", NAME, "--storage", str(mount_dir / "studies"))
    assert "No space left on device" in line and f"study report {NAME}" in line
