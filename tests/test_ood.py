"""OOD and corruption evaluation end to end, on tiny files written in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import scipy.io
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from tests.test_data import write_cifar10, write_image_folder
from trainables.config import (
    OOD_SPLITS,
    ConfigError,
    CorruptionSettings,
    OodSettings,
    SvhnSettings,
    ood_section_key,
    parse_config,
)
from trainables.data.datasets import DATASET_INFO, DataError, DatasetInfo
from trainables.engine.loop import EpochRecord, Trainer
from trainables.evaluation.evidence import SCHEMA_KEY, evidence_table, open_evidence, write_evidence
from trainables.evaluation.ood import (
    auroc,
    check_ood,
    check_ood_config,
    evaluate_ood,
    max_softmax,
    ood_metric_names,
)
from trainables.metrics import calibration
from trainables.trial.outputs import TrialContext, epoch_metrics, run_ood

PER_SEVERITY = 6  # CIFAR-C images per severity
CORRUPTIONS = ("fog", "gaussian_noise")
CIFAR10 = DATASET_INFO["cifar10"]

# ----------------------------------------------------------------------------- file writers


def write_svhn_test(root: Path, n: int = 40, seed: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # official layout [32, 32, 3, N]
    y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, 10 is digit 0
    scipy.io.savemat(root / "test_32x32.mat", {"X": x, "y": y})
    return root


def write_cifar_c(
    root: Path,
    corruptions: tuple[str, ...] = CORRUPTIONS,
    per_severity: int = PER_SEVERITY,
    num_classes: int = 10,
) -> Path:
    """``<corruption>.npy`` uint8 [5k, 32, 32, 3] (severities 1..5 stacked) and ``labels.npy``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    labels = np.tile(rng.integers(0, num_classes, per_severity), 5).astype(np.int64)
    np.save(root / "labels.npy", labels)
    for name in corruptions:
        images = rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", images)
    return root


def write_imagenet_c(
    root: Path, corruptions: tuple[str, ...] = ("blur", "snow"), classes=("a", "b"), n: int = 2
) -> Path:
    """``<root>/<corruption>/<severity>/<wnid>/<image>.JPEG`` for severities 1..5."""
    rng = np.random.default_rng(3)
    for name in corruptions:
        for severity in range(1, 6):
            for cls in classes:
                folder = root / name / str(severity) / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{cls}_{i}.JPEG")
    return root


# ----------------------------------------------------------------------------- fixtures


def _train(settings: dict[str, Any]) -> Trainer:
    base = dict(model="cnn", epochs=1, batch_size=8, lr=0.05, method="sgd", device="cpu")
    trainer = Trainer(parse_config({**base, **settings}))
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ood")
    write_cifar10(root / "cifar10", per_batch=8, n_test=20)
    write_svhn_test(root / "svhn")
    write_cifar_c(root / "CIFAR-10-C")
    write_image_folder(root / "imagenet", per_class=4)
    write_imagenet_c(root / "imagenet_c")
    return root


@pytest.fixture(scope="module")
def cifar_trainer(files: Path) -> Trainer:
    settings = dict(dataset="cifar10", data_root=str(files / "cifar10"), train_subset=None)
    return _train(dict(settings, val_fraction=0.25, ood=_cifar_ood(files).model_dump()))


def _cifar_ood(files: Path, **c10: Any) -> OodSettings:
    return OodSettings(
        svhn=SvhnSettings(root=str(files / "svhn")),
        cifar10_c=CorruptionSettings(root=str(files), **c10),  # finds the CIFAR-10-C subfolder
    )


# ----------------------------------------------------------------------------- AUROC


def test_auroc_equals_sklearn_with_and_without_ties() -> None:
    g = torch.Generator().manual_seed(0)
    for pos, neg in (
        (torch.rand(300, generator=g), torch.rand(200, generator=g) * 0.8),
        (
            torch.randint(0, 5, (300,), generator=g).float(),
            torch.randint(0, 4, (50,), generator=g).float(),
        ),
        (torch.ones(7), torch.ones(3)),  # all tied: 0.5
    ):
        truth = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        expected = roc_auc_score(truth, torch.cat([pos, neg]).numpy())
        assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    with pytest.raises(ValueError):
        auroc(torch.tensor([1.0]), torch.tensor([]))


# ----------------------------------------------------------------------------- end to end


def test_cifar_ood_end_to_end_through_the_trial_path(
    cifar_trainer: Trainer, files: Path, tmp_path: Path
) -> None:
    trainer = cifar_trainer
    settings = _cifar_ood(files)
    check_ood(settings, trainer.data.info)
    record = EpochRecord(epoch=1, train_loss=0.0, seconds=0.0, final=trainer.final_metrics())
    ctx = TrialContext(study="s", objective_weight=None, cpus_per_trial=1, study_uri=str(tmp_path))
    assert trainer.cfg.ood == settings
    run_ood(trainer, record, ctx, trial_id="t1")

    reported = epoch_metrics(trainer, record, ctx)
    names = ood_metric_names(settings)
    assert set(names) <= set(reported) and set(names) == set(record.final) - set(
        trainer.final_metrics()
    )
    assert len(names) == 4 + 3 + 2 * 5  # SVHN: AUROC, AUPR, each by MSP and entropy

    table = open_evidence(str(tmp_path / "evidence")).to_table()
    splits = set(table.column("split").to_pylist())
    assert splits == {"ood_svhn", "cifar10_c"}

    # AUROC of the written confidences (SVHN) against the trainer's test split, as sklearn has it
    svhn = table.filter(ds.field("split") == "ood_svhn")
    assert svhn.num_rows == 40 and svhn.column("corruption").null_count == 40
    in_conf = max_softmax(trainer.predictions("test")[0]).numpy()
    out_conf = svhn.column("confidence").to_numpy()
    truth = np.r_[np.ones(len(in_conf)), np.zeros(len(out_conf))]
    assert reported["ood_svhn_auroc"] == pytest.approx(
        roc_auc_score(truth, np.r_[in_conf, out_conf]), abs=1e-9
    )
    assert sorted(svhn.column("label").to_pylist()) == sorted(np.arange(40) % 10)

    # every corruption x severity recomputed from the evidence; means equal the reported ones
    frame = table.filter(ds.field("split") == "cifar10_c").to_pandas()
    assert len(frame) == len(CORRUPTIONS) * 5 * PER_SEVERITY
    accs, eces, by_severity = [], [], {}
    for (corruption, severity), rows in frame.groupby(["corruption", "severity"]):
        assert corruption in CORRUPTIONS and 1 <= severity <= 5
        assert sorted(rows.sample_id) == list(range(PER_SEVERITY))
        probs = torch.from_numpy(np.stack(rows.probs.to_list()).astype(np.float32))
        labels = torch.tensor(rows.label.to_numpy(), dtype=torch.int64)
        acc = float(rows.correct.mean())
        ece = calibration.ece(probs / probs.sum(1, keepdim=True), labels).item()
        accs.append(acc)
        eces.append(ece)
        by_severity.setdefault(severity, []).append((acc, ece))
    assert len(accs) == 10
    assert reported["cifar10_c_accuracy"] == pytest.approx(np.mean(accs), abs=1e-9)
    assert reported["cifar10_c_ece"] == pytest.approx(np.mean(eces), abs=2e-3)  # float16 probs
    for severity, values in by_severity.items():
        assert reported[f"cifar10_c_s{severity}_accuracy"] == pytest.approx(
            np.mean([a for a, _ in values]), abs=1e-9
        )
        assert reported[f"cifar10_c_s{severity}_ece"] == pytest.approx(
            np.mean([e for _, e in values]), abs=2e-3
        )


def test_cifar_c_reader_takes_severity_blocks_in_order(cifar_trainer: Trainer, files: Path) -> None:
    """The logits of (fog, severity 4) are the model's on rows 3k..4k of fog.npy, NHWC -> NCHW."""
    settings = OodSettings(cifar10_c=CorruptionSettings(root=str(files / "CIFAR-10-C")))
    (result,) = evaluate_ood(cifar_trainer, settings)
    assert result.split == "cifar10_c"
    group = (result.corruption == "fog") & (result.severity == 4)
    k = PER_SEVERITY
    images = np.load(files / "CIFAR-10-C" / "fog.npy")[3 * k : 4 * k]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR10.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10.std).view(1, 3, 1, 1)
    cifar_trainer.model.eval()
    with torch.no_grad():
        expected = cifar_trainer.model((x - mean) / std)
    torch.testing.assert_close(
        result.logits[torch.from_numpy(group)], expected, rtol=1e-4, atol=1e-4
    )
    labels = np.load(files / "CIFAR-10-C" / "labels.npy")[3 * k : 4 * k]
    assert result.labels[torch.from_numpy(group)].tolist() == labels.tolist()


def test_severity_choice_and_subset_use_the_same_images(
    cifar_trainer: Trainer, files: Path
) -> None:
    settings = _cifar_ood(
        files, corruptions=["gaussian_noise"], severities=[4, 2], subset_per_severity=4
    )
    settings = settings.model_copy(
        update={"svhn": SvhnSettings(root=str(files / "svhn"), subset=9)}
    )
    svhn, c10 = evaluate_ood(cifar_trainer, settings)
    assert len(svhn.labels) == 9 and len(set(svhn.sample_id.tolist())) == 9
    assert len(c10.labels) == 2 * 4
    assert c10.severity.tolist() == [2] * 4 + [4] * 4
    assert set(c10.corruption) == {"gaussian_noise"}
    assert c10.sample_id[:4].tolist() == c10.sample_id[4:].tolist()
    assert set(c10.metrics) == {
        "cifar10_c_accuracy",
        "cifar10_c_ece",
        "cifar10_c_ece_ts",
        "cifar10_c_s2_accuracy",
        "cifar10_c_s2_ece",
        "cifar10_c_s4_accuracy",
        "cifar10_c_s4_ece",
    }
    s2, s4 = c10.metrics["cifar10_c_s2_accuracy"], c10.metrics["cifar10_c_s4_accuracy"]
    assert c10.metrics["cifar10_c_accuracy"] == pytest.approx((s2 + s4) / 2)


def test_imagenet_c_folder_layout_end_to_end(files: Path) -> None:
    trainer = _train(
        dict(
            dataset="imagefolder",
            data_root=str(files / "imagenet"),
            train_subset=None,
            val_fraction=0.25,
            num_workers=0,
        )
    )
    settings = OodSettings(
        imagenet_c=CorruptionSettings(root=str(files / "imagenet_c"), severities=[1, 5])
    )
    check_ood(settings, trainer.data.info)
    (result,) = evaluate_ood(trainer, settings)
    assert result.split == "imagenet_c"
    assert len(result.labels) == 2 * 2 * 4  # corruptions x severities x images
    assert result.labels.tolist() == [0, 0, 1, 1] * 4  # class folders in sorted-wnid order
    assert list(result.corruption) == ["blur"] * 8 + ["snow"] * 8
    assert result.severity.tolist() == ([1] * 4 + [5] * 4) * 2
    accs = (result.logits.argmax(1) == result.labels).double().view(4, 4).mean(1)
    assert result.metrics["imagenet_c_accuracy"] == pytest.approx(accs.mean().item())
    assert result.metrics["imagenet_c_s5_accuracy"] == pytest.approx(accs[[1, 3]].mean().item())
    assert set(result.metrics) == set(ood_metric_names(settings))


# ----------------------------------------------------------------------------- evidence schema


def test_version_one_evidence_still_reads_with_null_corruption_columns(tmp_path: Path) -> None:
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    current = evidence_table(logits, labels, study="s", epoch=1, temperature=1.0)
    old = current.drop_columns(["corruption", "severity"]).replace_schema_metadata(
        {SCHEMA_KEY: b"1"}
    )
    root = tmp_path / "evidence"
    directory = root / "trial_id=old" / "split=test"
    directory.mkdir(parents=True)
    pq.write_table(old, directory / "epoch-0001.parquet")
    severity = np.array([1, 1, 2, 2, 5], dtype=np.int8)
    corruption = np.array(["fog"] * 5, dtype=object)
    new = evidence_table(
        logits,
        labels,
        study="s",
        epoch=1,
        temperature=1.0,
        corruption=corruption,
        severity=severity,
    )
    write_evidence(new, str(root), "new", "cifar10_c", 1)
    table = open_evidence(str(root)).to_table().sort_by("trial_id")
    assert table.num_rows == 10
    assert table.column("severity").to_pylist() == [1, 1, 2, 2, 5] + [None] * 5
    assert table.column("corruption").to_pylist() == ["fog"] * 5 + [None] * 5
    assert table.schema.field("severity").type == pa.int8()


# ----------------------------------------------------------------------------- bad inputs


def _one_line_error(settings: OodSettings, info: DatasetInfo, match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        check_ood(settings, info)
    assert "\n" not in str(err.value)


def test_bad_roots_and_files_fail_before_training(files: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    _one_line_error(
        OodSettings(svhn=SvhnSettings(root=missing)),
        CIFAR10,
        "test_32x32.mat not found.*ood.svhn.root",
    )
    _one_line_error(
        OodSettings(cifar10_c=CorruptionSettings(root=missing)), CIFAR10, "labels.npy not found"
    )
    no_labels = write_cifar_c(tmp_path / "no_labels")
    (no_labels / "labels.npy").unlink()
    _one_line_error(
        OodSettings(cifar10_c=CorruptionSettings(root=str(no_labels))),
        CIFAR10,
        "labels.npy not found",
    )
    c_root = str(files / "CIFAR-10-C")
    _one_line_error(
        OodSettings(cifar10_c=CorruptionSettings(root=c_root, corruptions=["frost"])),
        CIFAR10,
        "no frost.npy.*present: fog, gaussian_noise",
    )
    gray = write_cifar_c(tmp_path / "gray")
    np.save(gray / "fog.npy", np.zeros((5 * PER_SEVERITY, 32, 32, 1), dtype=np.uint8))
    _one_line_error(
        OodSettings(cifar10_c=CorruptionSettings(root=str(gray))),
        CIFAR10,
        r"fog.npy: need uint8 \[30,32,32,3\]",
    )
    odd = write_cifar_c(tmp_path / "odd")
    np.save(odd / "labels.npy", np.zeros(31, dtype=np.int64))
    _one_line_error(
        OodSettings(cifar10_c=CorruptionSettings(root=str(odd))), CIFAR10, r"labels \[5k\]"
    )
    svhn_bad = tmp_path / "svhn_bad"
    svhn_bad.mkdir()
    scipy.io.savemat(
        svhn_bad / "test_32x32.mat",
        {"X": np.zeros((28, 28, 1, 4), np.uint8), "y": np.zeros((4, 1))},
    )
    _one_line_error(
        OodSettings(svhn=SvhnSettings(root=str(svhn_bad))), CIFAR10, r"need X \[32,32,3,N\]"
    )


def test_incompatible_models_are_refused(files: Path) -> None:
    c100 = write_cifar_c(files / "c100", num_classes=100)
    _one_line_error(
        OodSettings(cifar100_c=CorruptionSettings(root=str(c100))),
        CIFAR10,
        "100 classes.*cifar10 \\(10 classes\\)",
    )
    svhn = OodSettings(svhn=SvhnSettings(root=str(files / "svhn")))
    _one_line_error(svhn, DATASET_INFO["fashion_mnist"], "3-channel 32x32.*1-channel 28x28")
    _one_line_error(svhn, DATASET_INFO["svhn"], "not OOD")
    imagenet_c = OodSettings(imagenet_c=CorruptionSettings(root=str(files / "imagenet_c")))
    _one_line_error(imagenet_c, CIFAR10, "imagefolder")
    three_classes = DatasetInfo("imagefolder", 3, 3, 224, (0.5,) * 3, (0.2,) * 3)
    _one_line_error(imagenet_c, three_classes, "2 class folders but the model has 3 classes")
    wrong_level = OodSettings(
        imagenet_c=CorruptionSettings(root=str(files / "imagenet_c"), corruptions=["fog"])
    )
    _one_line_error(wrong_level, three_classes, "no corruption folder fog")


def test_check_ood_config_derives_the_dataset_without_reading_images(files: Path) -> None:
    ok = parse_config(
        dict(
            dataset="imagefolder",
            data_root=str(files / "imagenet"),
            ood=dict(imagenet_c=dict(root=str(files / "imagenet_c"))),
        )
    )
    check_ood_config(ok)
    check_ood_config(parse_config(dict(dataset="cifar10")))  # no ood section: nothing to check
    bad = parse_config(
        dict(dataset="cifar10", ood=dict(imagenet_c=dict(root=str(files / "imagenet_c"))))
    )
    with pytest.raises(DataError, match="imagefolder"):
        check_ood_config(bad)


@pytest.mark.parametrize(
    ("section", "match"),
    [
        (dict(cifar10_c=dict(severities=[0, 3])), r"ood.cifar10_c.severities.*outside 1..5"),
        (dict(cifar10_c=dict(severities=[])), "at least one severity"),
        (dict(cifar10_c=dict(severities=[2, 2])), "twice"),
        (dict(imagenet_c=dict(corruptions=[])), "as null"),
        (dict(imagenet_c=dict(corruptions=["fog.npy"])), "not a corruption name"),
        (dict(svhn=dict(subset=0)), "ood.svhn.subset"),
        (dict(svhn=dict(rootz="x")), r"unknown key 'ood.svhn.rootz' \(known keys: root, subset\)"),
        (dict(tiny_imagenet=dict()), "unknown key 'ood.tiny_imagenet'"),
    ],
)
def test_bad_settings_are_one_line_config_errors(section: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        parse_config(dict(ood=section))
    assert "\n" not in str(err.value)


def test_the_ood_section_has_one_key_per_split_in_evaluation_order() -> None:
    assert tuple(OodSettings.model_fields) == tuple(ood_section_key(s) for s in OOD_SPLITS)
    settings = OodSettings(svhn=SvhnSettings(), imagenet_c=CorruptionSettings())
    assert [s for s in OOD_SPLITS if settings.section(s) is not None] == ["ood_svhn", "imagenet_c"]
