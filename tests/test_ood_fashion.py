"""Out-of-distribution sets for Fashion-MNIST that ship with packages here: scikit-learn's digits
(far-OOD) and held-out classes (near-OOD), through the trial's own path, on the real data."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from sklearn.metrics import average_precision_score

from trainables.config import ConfigError, parse_config
from trainables.data.datasets import DataError, load_data, read_test_images
from trainables.engine.loop import EpochRecord, Trainer
from trainables.evaluation.evidence import open_evidence
from trainables.evaluation.ood import (
    DETECTION_METRICS,
    aupr,
    auroc,
    check_ood_config,
    digits_images,
    max_softmax,
    negative_entropy,
    ood_metric_names,
)
from trainables.trial.outputs import TrialContext, epoch_metrics, run_ood

HELD_OUT = (3, 7)  # dress and sneaker


def _hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_auroc_and_aupr_of_both_scores_against_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    in_logits = torch.randn(60, 10, generator=g) * 3
    out_logits = torch.randn(40, 10, generator=g)
    for score in (max_softmax, negative_entropy):
        pos, neg = score(in_logits).double(), score(out_logits).double()
        pairs = [(p > n) + 0.5 * (p == n) for p in pos.tolist() for n in neg.tolist()]
        assert auroc(pos, neg) == pytest.approx(np.mean(pairs), abs=1e-12)
        # average precision by hand: precision at each positive, in score order (no ties here)
        order = np.argsort(-np.r_[pos.numpy(), neg.numpy()], kind="stable")
        truth = np.r_[np.ones(60), np.zeros(40)][order]
        precision = np.cumsum(truth) / np.arange(1, 101)
        assert aupr(pos, neg) == pytest.approx(precision[truth == 1].mean(), abs=1e-12)
        scores = np.r_[pos.numpy(), neg.numpy()]
        expected = average_precision_score(np.r_[np.ones(60), np.zeros(40)], scores)
        assert aupr(pos, neg) == pytest.approx(expected, abs=1e-12)
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).log()
    assert negative_entropy(p).tolist() == pytest.approx([-np.log(2), 0.0])


def test_digits_are_28x28_on_fashion_mnists_black_background() -> None:
    x, y = digits_images()
    assert x.shape == (1797, 1, 28, 28) and x.dtype == np.uint8 and set(y) == set(range(10))
    border = np.concatenate([x[:, 0, 0], x[:, 0, -1], x[:, 0, :, 0], x[:, 0, :, -1]], axis=1)
    assert border.max() == 0 and x.max() == 255  # black frame, bright strokes
    fashion, _ = read_test_images("fashion_mnist")
    assert np.median(fashion[:, 0, [0, -1]][:, :, [0, -1]]) == 0  # its corners: black too


def _train(settings: dict[str, Any]) -> Trainer:
    base = dict(
        model="cnn", epochs=1, batch_size=64, lr=0.05, method="sgd", device="cpu",
        train_subset=600, test_subset=300,
    )  # fmt: skip
    trainer = Trainer(parse_config({**base, **settings}))
    trainer.fit()
    return trainer


def _trial(trainer: Trainer, root: Path) -> dict[str, float]:
    """The trial's OOD step: evidence under ``root``, the metrics it reports."""
    record = EpochRecord(epoch=1, train_loss=0.0, seconds=0.0, final=trainer.final_metrics())
    ctx = TrialContext(study="s", objective_weight=None, cpus_per_trial=1, study_uri=str(root))
    run_ood(trainer, record, ctx, trial_id="t1")
    return epoch_metrics(trainer, record, ctx)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, dict, Path]:
    trainer = _train(dict(ood=dict(digits=dict(subset=300), heldout=dict(classes=HELD_OUT))))
    root = tmp_path_factory.mktemp("fashion-ood")
    return trainer, _trial(trainer, root), root


def test_held_out_classes_are_in_no_split_the_model_trains_or_is_validated_on(trained) -> None:
    trainer, _, _ = trained
    assert trainer.data.info.num_classes == 8
    x, y = read_test_images("fashion_mnist")
    held = {_hash(image) for image in x[np.isin(y, HELD_OUT)]}
    data = load_data("fashion_mnist", train_subset=None, held_out=HELD_OUT, seed=0)
    for split in ("train", "val", "test"):
        batches = list(data.eval_batches(split, 4096))
        labels = torch.cat([b[1] for b in batches])
        assert labels.min() >= 0 and labels.max() <= 7 and len(labels.unique()) == 8
    # the stored uint8 images: none is a held-out class's
    stored = {s: data._splits[s][0].numpy() for s in ("train", "val", "test")}
    assert sum(len(v) for v in stored.values()) == 70_000 - 2 * 7_000
    for split, images in stored.items():
        assert not held & {_hash(image) for image in images}, split


def test_digits_and_held_out_classes_through_the_trial_path(trained) -> None:
    trainer, reported, root = trained
    names = ood_metric_names(trainer.cfg.ood)
    assert names == [f"ood_{s}_{m}" for s in ("digits", "heldout") for m in DETECTION_METRICS]
    table = open_evidence(str(root / "evidence")).to_table()
    in_logits = trainer.predictions("test")[0]
    for split, n in (("ood_digits", 300), ("ood_heldout", 2000)):
        rows = table.filter(ds.field("split") == split)
        assert rows.num_rows == n
        out_conf = torch.from_numpy(rows.column("confidence").to_numpy())
        expected = auroc(max_softmax(in_logits), out_conf)
        assert reported[f"{split}_auroc"] == pytest.approx(expected, abs=1e-6)
        assert 0.0 <= reported[f"{split}_aupr_entropy"] <= 1.0
    held = table.filter(ds.field("split") == "ood_heldout").column("label").to_numpy()
    assert set(held.tolist()) == set(HELD_OUT)  # the original labels, outside the model's 0..7


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        (dict(dataset="digits", ood=dict(digits={})), DataError, "ood digits: needs a model of"),
        (dict(ood=dict(heldout=dict(classes=[3, 10]))), DataError, r"among fashion_mnist's 0..9"),
        (dict(ood=dict(heldout=dict(classes=list(range(9))))), DataError, "at least 2 to train"),
        (dict(ood=dict(heldout=dict(classes=[2, 2]))), ConfigError, "distinct class numbers"),
        (dict(ood=dict(heldout=dict(classes=[]))), ConfigError, "ood.heldout.classes"),
    ],
)
def test_bad_ood_settings_fail_in_one_line_before_training(settings, error, match) -> None:
    with pytest.raises(error, match=match) as err:
        check_ood_config(parse_config(settings))
    assert "\n" not in str(err.value)


def test_fashion_mnist_c_is_generated_once_cached_and_evaluated_like_cifar_c(tmp_path) -> None:
    cache = tmp_path / "fmnist-c"
    section = dict(root=str(cache), subset_per_severity=20, corruptions=["fog", "shot_noise"])
    trainer = _train(dict(ood=dict(fashion_mnist_c=section)))
    reported = _trial(trainer, tmp_path / "study")
    directory = cache / "subset-20"
    assert len(list(directory.glob("*.npy"))) == 15 + 1  # all 15 made, whichever are evaluated
    frame = open_evidence(str(tmp_path / "study" / "evidence")).to_table().to_pandas()
    assert len(frame) == 2 * 5 * 20 and set(frame.corruption) == {"fog", "shot_noise"}
    accuracy = frame.groupby(["corruption", "severity"]).correct.mean()
    assert reported["fashion_mnist_c_accuracy"] == pytest.approx(accuracy.mean(), abs=1e-6)
    assert set(reported) >= {"fashion_mnist_c_ece_ts", "fashion_mnist_c_s5_ece"}
    # the images are the test set's chosen ones, corrupted: fog at severity 1 of image 0
    x, y = read_test_images("fashion_mnist")
    chosen = frame[frame.severity == 1].sample_id.unique()
    labels = np.load(directory / "labels.npy")[:20]
    assert sorted(labels.tolist()) == sorted(y[np.sort(chosen)].tolist())
    # a second trial reuses the files; a changed one is refused in one line
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    _trial(trainer, tmp_path / "again")
    assert before == {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    fog = np.load(directory / "fog.npy")
    fog[0, 0, 0] ^= 1
    np.save(directory / "fog.npy", fog)
    with pytest.raises(DataError, match="fog.npy") as err:
        _trial(trainer, tmp_path / "changed")
    assert "\n" not in str(err.value)


def test_a_changed_fashion_mnist_c_file_is_refused_before_any_work(tmp_path, capsys) -> None:
    """Issue 34, item 10: `study train` with a changed Fashion-MNIST-C file trained, then
    printed a 12-frame traceback; `study run` refused it only after each trial had trained."""
    import yaml

    from study.cli.main import main
    from trainables.config import CorruptionSettings
    from trainables.data.corruptions import CORRUPTIONS
    from trainables.data.fashion_mnist_c import build_fashion_mnist_c
    from trainables.evaluation.ood import SUBSET_SEED, fashion_mnist_c_dir, subset_indices

    section = {"root": str(tmp_path / "fmnist-c"), "subset_per_severity": 5}
    x, y = read_test_images("fashion_mnist")  # generated as a trial generates it
    chosen = subset_indices(len(y), seed=SUBSET_SEED, subset=5).numpy()
    directory = fashion_mnist_c_dir(CorruptionSettings(**section), None)
    build_fashion_mnist_c(x[chosen, 0], y[chosen], directory, CORRUPTIONS, seed=SUBSET_SEED)
    fog = np.load(directory / "fog.npy")
    fog[0, 0, 0] ^= 1
    np.save(directory / "fog.npy", fog)
    space = tmp_path / "space.yaml"
    fixed = {"dataset": "fashion_mnist", "model": "cnn", "epochs": 1, "method": "sgd",
             "train_subset": 200, "test_subset": 100, "device": "cpu"}  # fmt: skip
    space.write_text(yaml.safe_dump({"fixed": fixed, "ood": {"fashion_mnist_c": section}}))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "studies"
    for argv in (
        ["train", "--space", str(space), "--tracking-uri", tracking],
        ["run", str(space), "--name", "c", "--storage", str(storage), "--dry-run"],
        ["run", str(space), "--name", "c", "--storage", str(storage), "--tracking-uri", tracking],
    ):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "fog.npy changed since it was generated" in lines[0], err
        assert "epoch" not in out  # nothing trained
    assert not (tmp_path / "mlflow.db").exists() and not (storage / "c").exists()
