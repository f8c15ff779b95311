"""Out-of-distribution and corruption evaluation of a trained model (the optional ``ood`` section,
whose settings are ``trainables.evaluation.settings.OodSettings``).

Every split of ``trainables.evaluation.SPLITS`` is evaluated once on the final model, in
registration order, and written as its own evidence split; the built-in ones' checks and
evaluation are here, among them:

- ``ood_svhn``: the SVHN test set (``test_32x32.mat``) against the model's own test split;
  metric ``ood_svhn_auroc``, the AUROC of the max-softmax confidence with in-distribution as
  the positive class (ties count one half).
- ``cifar10_c`` / ``cifar100_c``: one ``<corruption>.npy`` per corruption (uint8
  ``[5k, 32, 32, 3]``, severities 1..5 stacked in order, ``k`` images each) and ``labels.npy``;
  accuracy and ECE of every corruption x severity, reported as their mean (``<split>_accuracy``,
  ``<split>_ece``, ``<split>_ece_ts`` after the val-fitted temperature) and per severity
  (``<split>_s<k>_accuracy``, ``<split>_s<k>_ece``).
- ``imagenet_c``: ``<root>/<corruption>/<severity>/<wnid>/<image>``; the same metrics.

``check_ood`` (or ``check_ood_config``) checks roots, files, shapes and label spaces before any
training, so a study fails fast with a one-line ``DataError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from trainables.data import DATASETS
from trainables.data.datasets import (
    DATASET_INFO,
    DataError,
    DatasetInfo,
    Normaliser,
    held_out_test_images,
    read_svhn_mat,
    read_test_images,
    search_dirs,
    subset_indices,
)
from trainables.evaluation import evidence
from trainables.evaluation.sections import (
    CorruptionSettings,
    HeldoutSettings,
    SvhnSettings,
)
from trainables.evaluation.splits import DETECTION_METRICS as DETECTION_METRICS
from trainables.evaluation.splits import SPLITS, ood_section_key
from trainables.metrics import calibration

if TYPE_CHECKING:
    from trainables.evaluation.settings import OodSettingsBase as OodSettings

# a ``trainables.engine.loop.Trainer``; not imported, not even for types: the engine imports the
# settings (``trainables.config``), which import this package's OOD section models
Trainer = Any

SUBSET_SEED = 0  # the same OOD images for every trial, so trials compare on equal footing
SVHN_FILE = "test_32x32.mat"
LABELS_FILE = "labels.npy"
EVAL_BATCH = 1024
# the built-in splits (trainables.evaluation.builtin_splits) whose checks and evaluation are here
_SVHN, _DIGITS, _HELDOUT = "ood_svhn", "ood_digits", "ood_heldout"
_CIFAR10_C, _CIFAR100_C, _FASHION_MNIST_C, _IMAGENET_C = (
    "cifar10_c", "cifar100_c", "fashion_mnist_c", "imagenet_c"
)  # fmt: skip
DIGITS_SIZE = 28  # the 8x8 digits resized to Fashion-MNIST's size
# C split -> (the training dataset whose label space it uses, subfolder of the official archive)
_CIFAR_C = {_CIFAR10_C: ("cifar10", "CIFAR-10-C"), _CIFAR100_C: ("cifar100", "CIFAR-100-C")}


# ----------------------------------------------------------------------------- locating files


def _locate(what: str, root: str | None, subdirs: tuple[str, ...], marker: str) -> Path:
    """First candidate directory holding ``marker`` (a file, or "" for the directory itself)."""
    searched = search_dirs(what, root, subdirs)
    for directory in searched:
        if (directory / marker).exists() if marker else directory.is_dir():
            return directory
    where = ", ".join(str(d) for d in searched)
    needs = f"{marker} not found" if marker else "directory not found"
    raise DataError(f"ood {what}: {needs} (searched {where}); set ood.{what}.root to its directory")


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e}); re-fetch the file") from e
    return array.shape, array.dtype


def _chosen(
    split: str, cfg: CorruptionSettings, present: list[str], directory: Path, kind: str, item: str
) -> list[str]:
    """The corruptions to evaluate (all present ones by default); a missing one is an error.
    ``item`` names one in the message (``{}.npy``), ``kind`` all of them."""
    names = list(cfg.corruptions) if cfg.corruptions is not None else present
    missing = [n for n in names if n not in present]
    if missing or not names:
        listed = ", ".join(item.format(n) for n in missing) or f"{kind} at all"
        raise DataError(
            f"ood {split}: no {listed} in {directory} (present: {', '.join(present) or 'none'}); "
            f"fix ood.{split}"
        )
    return names


def _cifar_c_files(split: str, cfg: CorruptionSettings) -> tuple[Path, list[str]]:
    """(directory, corruption names in evaluation order) of a CIFAR-C split."""
    directory = _locate(split, cfg.root, ("", _CIFAR_C[split][1]), LABELS_FILE)
    present = sorted(p.stem for p in directory.glob("*.npy") if p.name != LABELS_FILE)
    return directory, _chosen(split, cfg, present, directory, "corruption .npy file", "{}.npy")


def _imagenet_c_dirs(cfg: CorruptionSettings) -> tuple[Path, list[str]]:
    directory = _locate(_IMAGENET_C, cfg.root, ("",), "")
    present = sorted(p.name for p in directory.iterdir() if p.is_dir())
    return directory, _chosen(
        _IMAGENET_C, cfg, present, directory, "corruption folder", "corruption folder {}"
    )


def _class_folders(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir())


# ----------------------------------------------------------------------------- checks


def _require_rgb32(what: str, info: DatasetInfo) -> None:
    if (info.in_channels, info.image_size) != (3, 32):
        raise DataError(
            f"ood {what}: needs a model of 3-channel 32x32 images, but {info.name} is "
            f"{info.in_channels}-channel {info.image_size}x{info.image_size}; remove ood.{what}"
        )


def _check_svhn(cfg: SvhnSettings, info: DatasetInfo) -> Path:
    from scipy.io import whosmat

    key = ood_section_key(_SVHN)
    _require_rgb32(key, info)
    if info.name == "svhn":
        raise DataError(
            f"ood {key}: the model is trained on svhn, so it is not OOD; remove ood.{key}"
        )
    path = _locate(key, cfg.root, ("",), SVHN_FILE) / SVHN_FILE
    try:
        shapes = {name: shape for name, shape, _ in whosmat(path)}
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable SVHN .mat ({e}); re-fetch the file") from e
    x, y = shapes.get("X", ()), shapes.get("y", ())
    if len(x) != 4 or x[:3] != (32, 32, 3) or len(y) != 2 or y[0] != x[3]:
        raise DataError(f"{path}: need X [32,32,3,N] and y [N,1], got {x} / {y}; re-fetch the file")
    return path


def _check_cifar_c(split: str, cfg: CorruptionSettings, info: DatasetInfo) -> None:
    dataset = _CIFAR_C[split][0]
    if info.name != dataset:
        raise DataError(
            f"ood {split}: uses {dataset}'s {DATASET_INFO[dataset].num_classes} classes, but the "
            f"model is trained on {info.name} ({info.num_classes} classes); remove ood.{split}"
        )
    directory, names = _cifar_c_files(split, cfg)
    labels_shape, labels_dtype = _npy_header(directory / LABELS_FILE)
    if len(labels_shape) != 1 or labels_shape[0] % 5 or labels_dtype.kind not in "iu":
        raise DataError(
            f"{directory / LABELS_FILE}: need integer labels [5k] (severities 1..5 stacked), got "
            f"{labels_dtype} {labels_shape}; re-fetch the file"
        )
    labels = np.load(directory / LABELS_FILE, allow_pickle=False)
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DataError(
            f"{directory / LABELS_FILE}: labels outside 0..{info.num_classes - 1}; re-fetch it"
        )
    for name in names:
        shape, dtype = _npy_header(directory / f"{name}.npy")
        if shape != (labels_shape[0], 32, 32, 3) or dtype != np.uint8:
            raise DataError(
                f"{directory / name}.npy: need uint8 [{labels_shape[0]},32,32,3] like "
                f"{LABELS_FILE}, got {dtype} {list(shape)}; re-fetch the file"
            )


def _check_imagenet_c(cfg: CorruptionSettings, info: DatasetInfo) -> None:
    split = _IMAGENET_C
    if info.name != "imagefolder" or info.in_channels != 3:
        raise DataError(
            f"ood {split}: needs a model trained on an ImageNet imagefolder, but it is "
            f"trained on {info.name}; remove ood.{split}"
        )
    directory, names = _imagenet_c_dirs(cfg)
    for name in names:
        for severity in cfg.severities:
            level = directory / name / str(severity)
            if not level.is_dir():
                raise DataError(f"ood {split}: {level} is missing; fix ood.{split}")
            classes = _class_folders(level)
            if len(classes) != info.num_classes:
                raise DataError(
                    f"ood {split}: {level} has {len(classes)} class folders but the model has "
                    f"{info.num_classes} classes; train on the matching classes"
                )


def _check_digits(info: DatasetInfo) -> None:
    key = ood_section_key(_DIGITS)
    if (info.in_channels, info.image_size) != (1, DIGITS_SIZE) or info.name == "digits":
        raise DataError(
            f"ood {key}: needs a model of 1-channel {DIGITS_SIZE}x{DIGITS_SIZE} images other "
            f"than digits (Fashion-MNIST), but it is trained on {info.name}; remove ood.{key}"
        )


def _check_heldout(cfg: HeldoutSettings, info: DatasetInfo) -> None:
    """``info`` is the whole dataset's (before the classes are held out)."""
    key = ood_section_key(_HELDOUT)
    if info.name == "imagefolder":
        raise DataError(f"ood {key}: classes cannot be held out of an imagefolder; remove it")
    outside = [c for c in cfg.classes if c >= info.num_classes]
    if outside or info.num_classes - len(cfg.classes) < 2:
        raise DataError(
            f"ood {key}: classes {list(cfg.classes)} must be among {info.name}'s 0.."
            f"{info.num_classes - 1} and leave at least 2 to train on; fix ood.{key}.classes"
        )


def fashion_mnist_c_dir(cfg: CorruptionSettings, data_root: str | None) -> Path:
    """Where Fashion-MNIST-C is generated and cached: ``ood.fashion_mnist_c.root``, else
    ``<data_root>/fashion-mnist-c``, else ``$SHARPCAL_DATA/fashion-mnist-c`` or
    ``~/.cache/sharpcal/fashion-mnist-c``; one subfolder per image subset."""
    if cfg.root is not None:
        base = Path(cfg.root).expanduser()
    elif data_root is not None:
        base = Path(data_root).expanduser() / "fashion-mnist-c"
    elif os.environ.get("SHARPCAL_DATA"):
        base = Path(os.environ["SHARPCAL_DATA"]) / "fashion-mnist-c"
    else:
        base = Path.home() / ".cache" / "sharpcal" / "fashion-mnist-c"
    subset = cfg.subset_per_severity
    return base / (f"subset-{subset}" if subset else "all")


def _check_fashion_mnist_c(
    cfg: CorruptionSettings, info: DatasetInfo, heldout: HeldoutSettings | None
) -> None:
    from trainables.data.corruptions import CORRUPTIONS

    key = _FASHION_MNIST_C
    if info.name != "fashion_mnist":
        raise DataError(
            f"ood {key}: corrupts Fashion-MNIST's test images, but the model is trained on "
            f"{info.name}; remove ood.{key}"
        )
    if heldout is not None:
        raise DataError(f"ood {key}: not with ood.heldout (its labels are the 10 classes'); "
                        "remove one of them")  # fmt: skip
    unknown = [n for n in cfg.corruptions or () if n not in CORRUPTIONS]
    if unknown:
        raise DataError(
            f"ood {key}: unknown corruption {', '.join(unknown)} (known: "
            f"{', '.join(CORRUPTIONS)}); fix ood.{key}.corruptions"
        )


def check_ood(settings: OodSettings, info: DatasetInfo) -> None:
    """Raise a one-line ``DataError`` unless every configured OOD set can be evaluated.

    Checks that roots and files exist, that their shapes and labels are well formed, and that
    their images and label space fit the model trained on ``info``. Reads file headers and
    directory listings only (and CIFAR-C's small ``labels.npy``).
    """
    for name, split in SPLITS.items():
        cfg = settings.section(name)
        if cfg is not None:
            split.check(cfg, settings, info)


def static_dataset_info(name: str, root: str | None = None, image_size: int = 224) -> DatasetInfo:
    """``DatasetInfo`` of a training dataset without reading its images (imagefolder: lists
    the class folders of ``<root>/train``)."""
    if name in DATASET_INFO:
        return DATASET_INFO[name]
    if name not in DATASETS:
        raise DataError(DATASETS.unknown(name))
    return DATASETS.get(name).static_info(root, image_size)


def check_ood_config(cfg: Any) -> None:
    """``check_ood`` of ``cfg.ood`` against ``cfg``'s dataset (``cfg``: a ``TrainConfig``);
    nothing to do without ``ood``."""
    if cfg.ood is not None:
        check_ood(cfg.ood, static_dataset_info(cfg.dataset, cfg.data_root))


# ----------------------------------------------------------------------------- metrics


def auroc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve of scores whose higher values mean "positive".

    Exact Mann-Whitney form: the probability that a random positive outscores a random negative,
    ties counting one half (average ranks), computed in float64.
    """
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    scores = torch.cat([positive.flatten(), negative.flatten()]).double()
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    n_pos, n_neg = positive.numel(), negative.numel()
    rank_sum = average_rank[inverse[:n_pos]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def max_softmax(logits: Tensor) -> Tensor:
    """Max-softmax confidence of each row."""
    return logits.float().softmax(dim=1).max(dim=1).values


def negative_entropy(logits: Tensor) -> Tensor:
    """Minus the predictive entropy of each row (higher: more in-distribution), in nats."""
    p = logits.double().softmax(dim=1)
    return torch.special.xlogy(p, p).sum(dim=1)  # 0 log 0 = 0


def aupr(positive: Tensor, negative: Tensor) -> float:
    """Area under the precision-recall curve of scores whose higher values mean "positive", as
    scikit-learn's average precision (precision at each threshold weighted by the recall it
    adds; no interpolation)."""
    from sklearn.metrics import average_precision_score

    scores = torch.cat([positive.flatten(), negative.flatten()]).double().cpu().numpy()
    truth = np.r_[np.ones(positive.numel()), np.zeros(negative.numel())]
    return float(average_precision_score(truth, scores))


def detection_metrics(split: str, in_logits: Tensor, out_logits: Tensor) -> dict[str, float]:
    """How well a score tells in-distribution test images (the positive class) from ``split``'s:
    AUROC and AUPR of the max-softmax confidence (``<split>_auroc``, ``_aupr``) and of minus the
    predictive entropy (``_auroc_entropy``, ``_aupr_entropy``)."""
    out: dict[str, float] = {}
    for suffix, score in (("", max_softmax), ("_entropy", negative_entropy)):
        pos, neg = score(in_logits).cpu(), score(out_logits).cpu()
        out[f"{split}_auroc{suffix}"] = auroc(pos, neg)
        out[f"{split}_aupr{suffix}"] = aupr(pos, neg)
    return out


@dataclass
class OodResult:
    """One OOD split evaluated: logits/labels on the device, per-row extras and its metrics.

    ``sample_id`` is the image's index in its source file (for C splits: within its severity
    block, so the same id is the same clean image across corruptions and severities);
    ``corruption`` and ``severity`` are None for ``ood_svhn``.
    """

    split: str
    logits: Tensor
    labels: Tensor
    sample_id: np.ndarray
    corruption: np.ndarray | None = None  # object array of str, one per row
    severity: np.ndarray | None = None  # int8, one per row
    metrics: dict[str, float] = field(default_factory=dict)


def corruption_metrics(
    split: str,
    logits: Tensor,
    labels: Tensor,
    groups: list[tuple[str, int, int]],
    temperature: float,
) -> dict[str, float]:
    """Mean accuracy, ECE and ECE after temperature scaling over the ``(corruption, severity,
    rows)`` groups (consecutive rows), and per-severity means; one host sync for all."""
    values = []
    start = 0
    for _, _, rows in groups:
        z, y = logits[start : start + rows], labels[start : start + rows]
        probs = z.softmax(dim=1)
        ece_ts = calibration.ece((z / temperature).softmax(dim=1), y)
        values.append(
            torch.stack([calibration.accuracy(probs, y), calibration.ece(probs, y), ece_ts])
        )
        start += rows
    table = torch.stack(values).double().cpu().numpy()  # [groups, 3]
    severity = np.array([s for _, s, _ in groups])
    out = {
        f"{split}_accuracy": float(table[:, 0].mean()),
        f"{split}_ece": float(table[:, 1].mean()),
        f"{split}_ece_ts": float(table[:, 2].mean()),
    }
    for s in sorted(set(severity.tolist())):
        out[f"{split}_s{s}_accuracy"] = float(table[severity == s, 0].mean())
        out[f"{split}_s{s}_ece"] = float(table[severity == s, 1].mean())
    return out


# ----------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def _logits(trainer: Trainer, info: DatasetInfo, batches: Iterable[Tensor]) -> Tensor:
    """Float32 logits of uint8 [B,C,H,W] batches, normalised with ``info``; no host sync."""
    normalise = Normaliser(info, trainer.device, trainer.channels_last)
    out = []
    with trainer.evaluating():
        for x in batches:
            out.append(trainer.eval_logits(normalise(x.to(trainer.device, non_blocking=True))))
    return torch.cat(out)


def _tensor_batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def _evaluate_svhn(trainer: Trainer, cfg: SvhnSettings, info: DatasetInfo) -> OodResult:
    path = _check_svhn(cfg, info)
    x, y = read_svhn_mat(path)
    chosen = subset_indices(len(y), seed=SUBSET_SEED, subset=cfg.subset).numpy()
    images = torch.from_numpy(np.ascontiguousarray(x[chosen])).to(trainer.device)
    logits = _logits(trainer, info, _tensor_batches(images, EVAL_BATCH))
    labels = torch.from_numpy(y[chosen]).to(trainer.device)
    in_logits, _ = trainer.predictions("test")
    metrics = detection_metrics(_SVHN, in_logits, logits)
    return OodResult(_SVHN, logits, labels, chosen.astype(np.int64), metrics=metrics)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as uint8 [N, 1, 28, 28] on 0..255 and their labels: each 8x8
    image scaled from 0..16, resized to 20x20 (bilinear) and centred in 28x28 with a 4-pixel
    black border, as MNIST frames its digits (and Fashion-MNIST its objects)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    inner, pad = DIGITS_SIZE - 8, 4
    resample = Image.Resampling.BILINEAR
    big = np.stack([np.asarray(Image.fromarray(x).resize((inner, inner), resample)) for x in small])
    framed = np.zeros((len(big), DIGITS_SIZE, DIGITS_SIZE), dtype=np.uint8)
    framed[:, pad : pad + inner, pad : pad + inner] = big
    return framed[:, None], digits.target.astype(np.int64)


def _evaluate_detection(
    trainer: Trainer, split: str, images: np.ndarray, labels: np.ndarray, subset: int | None
) -> OodResult:
    """Images of other classes (uint8 [N, C, H, W]) against the model's own test split."""
    chosen = subset_indices(len(labels), seed=SUBSET_SEED, subset=subset).numpy()
    x = torch.from_numpy(np.ascontiguousarray(images[chosen])).to(trainer.device)
    logits = _logits(trainer, trainer.data.info, _tensor_batches(x, EVAL_BATCH))
    in_logits, _ = trainer.predictions("test")
    metrics = detection_metrics(split, in_logits, logits)
    y = torch.from_numpy(labels[chosen]).to(trainer.device)
    return OodResult(split, logits, y, chosen.astype(np.int64), metrics=metrics)


def _evaluate_heldout(trainer: Trainer, cfg: HeldoutSettings) -> OodResult:
    """The test images of the held-out classes; their evidence rows keep the original labels
    (outside the model's renumbered classes: no class of the model is right on them)."""
    tc = trainer.cfg
    images, labels = held_out_test_images(
        tc.dataset, cfg.classes, root=tc.data_root, synthetic_size=tc.synthetic_size,
        seed=tc.split_seed,
    )  # fmt: skip
    return _evaluate_detection(trainer, _HELDOUT, images, labels, None)


def _evaluate_cifar_c(
    trainer: Trainer, split: str, cfg: CorruptionSettings, info: DatasetInfo, temperature: float
) -> OodResult:
    _check_cifar_c(split, cfg, info)
    directory, names = _cifar_c_files(split, cfg)
    all_labels = np.load(directory / LABELS_FILE, allow_pickle=False).astype(np.int64)
    per_severity = len(all_labels) // 5
    chosen = subset_indices(per_severity, seed=SUBSET_SEED, subset=cfg.subset_per_severity).numpy()
    rows = np.concatenate([(s - 1) * per_severity + chosen for s in cfg.severities])
    labels = torch.from_numpy(all_labels[rows]).to(trainer.device)
    logits = []
    for name in names:
        images = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)[
            rows
        ]  # [M, 32, 32, 3]
        x = torch.from_numpy(np.ascontiguousarray(images)).to(trainer.device)
        logits.append(_logits(trainer, info, _tensor_batches(x.permute(0, 3, 1, 2), EVAL_BATCH)))
    groups = [(n, s, len(chosen)) for n in names for s in cfg.severities]
    return _corruption_result(
        split, torch.cat(logits), labels.repeat(len(names)), groups, chosen, temperature
    )


def _fashion_mnist_c(trainer: Trainer, cfg: CorruptionSettings) -> tuple[Path, np.ndarray]:
    """The cached Fashion-MNIST-C of ``cfg``'s images, generated once (under a lock, so trials
    on one machine do not generate it side by side): its directory and the chosen images'
    indices in the test set."""
    import fcntl

    from trainables.data.corruptions import CORRUPTIONS
    from trainables.data.fashion_mnist_c import build_fashion_mnist_c

    tc = trainer.cfg
    x, y = read_test_images(tc.dataset, root=tc.data_root, synthetic_size=tc.synthetic_size)
    chosen = subset_indices(len(y), seed=SUBSET_SEED, subset=cfg.subset_per_severity).numpy()
    directory = fashion_mnist_c_dir(cfg, tc.data_root)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_fashion_mnist_c(x[chosen, 0], y[chosen], directory, CORRUPTIONS, seed=SUBSET_SEED)
    return directory, chosen


def _evaluate_fashion_mnist_c(
    trainer: Trainer, cfg: CorruptionSettings, temperature: float
) -> OodResult:
    from trainables.data.corruptions import CORRUPTIONS

    directory, chosen = _fashion_mnist_c(trainer, cfg)
    names = list(cfg.corruptions or CORRUPTIONS)
    labels = np.load(directory / LABELS_FILE, allow_pickle=False).astype(np.int64)
    n = len(chosen)
    rows = np.concatenate([np.arange((s - 1) * n, s * n) for s in cfg.severities])
    logits = []
    for name in names:
        images = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)[rows]
        x = torch.from_numpy(np.ascontiguousarray(images[:, None])).to(trainer.device)
        logits.append(_logits(trainer, trainer.data.info, _tensor_batches(x, EVAL_BATCH)))
    y = torch.from_numpy(labels[rows]).to(trainer.device).repeat(len(names))
    groups = [(name, s, n) for name in names for s in cfg.severities]
    return _corruption_result(_FASHION_MNIST_C, torch.cat(logits), y, groups, chosen, temperature)


def _evaluate_imagenet_c(
    trainer: Trainer, cfg: CorruptionSettings, info: DatasetInfo, temperature: float
) -> OodResult:
    from torchvision import datasets
    from torchvision import transforms as T

    _check_imagenet_c(cfg, info)
    directory, names = _imagenet_c_dirs(cfg)
    # ImageNet-C images are already 224 centre crops: scale the short side, crop, no enlarging.
    transform = T.Compose(
        [T.Resize(info.image_size), T.CenterCrop(info.image_size), T.PILToTensor()]
    )
    logits, labels, groups, ids = [], [], [], []
    for name in names:
        for severity in cfg.severities:
            images = datasets.ImageFolder(str(directory / name / str(severity)), transform)
            chosen = subset_indices(
                len(images), seed=SUBSET_SEED, subset=cfg.subset_per_severity
            ).tolist()
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(images, chosen),
                batch_size=EVAL_BATCH,
                num_workers=trainer.cfg.num_workers,
                pin_memory=trainer.device.type == "cuda",
            )
            labels.append(torch.tensor([images.targets[i] for i in chosen], dtype=torch.int64))
            logits.append(_logits(trainer, info, (x for x, _ in loader)))
            groups.append((name, severity, len(chosen)))
            ids.append(np.asarray(chosen, dtype=np.int64))
    return _corruption_result(
        _IMAGENET_C,
        torch.cat(logits),
        torch.cat(labels).to(trainer.device),
        groups,
        np.concatenate(ids),
        temperature,
    )


def _corruption_result(
    split: str,
    logits: Tensor,
    labels: Tensor,
    groups: list[tuple[str, int, int]],
    sample_ids: np.ndarray,
    temperature: float,
) -> OodResult:
    """Per-row corruption/severity columns of consecutive groups, and the split's metrics."""
    counts = [rows for _, _, rows in groups]
    names = np.empty(len(groups), dtype=object)
    names[:] = [n for n, _, _ in groups]
    if len(sample_ids) != len(labels):  # CIFAR-C: the same chosen images in every group
        sample_ids = np.tile(sample_ids, len(groups))
    return OodResult(
        split,
        logits,
        labels,
        sample_ids.astype(np.int64),
        corruption=np.repeat(names, counts),
        severity=np.repeat(np.array([s for _, s, _ in groups], dtype=np.int8), counts),
        metrics=corruption_metrics(split, logits, labels, groups, temperature),
    )


def evaluate_ood(
    trainer: Trainer, settings: OodSettings, temperature: float | None = None
) -> list[OodResult]:
    """Evaluate the trainer's current model on every configured OOD split, in ``SPLITS`` order.

    Images are normalised with the training dataset's mean/std, run in batches of
    ``EVAL_BATCH`` on the trainer's device in float32 (``Trainer.eval_logits``: no autocast,
    which is for training only). ``temperature`` (default: fitted
    on val) gives the ``_ece_ts`` metrics.
    """
    if temperature is None:
        temperature = trainer.fit_temperature()
    return [
        split.evaluate(trainer, cfg, temperature)
        for name, split in SPLITS.items()
        if (cfg := settings.section(name)) is not None
    ]


def ood_metric_names(settings: OodSettings) -> list[str]:
    """The metric names ``evaluate_ood`` reports for ``settings`` (for report columns)."""
    names = []
    for name, split in SPLITS.items():
        cfg = settings.section(name)
        if cfg is not None:
            names += split.metric_names(cfg)
    return names


def ood_evidence_table(
    result: OodResult, *, study: str, epoch: int, temperature: float
) -> pa.Table:
    """The evidence rows of one OOD split (``evidence.evidence_table`` plus its extra columns)."""
    return evidence.evidence_table(
        result.logits,
        result.labels,
        study=study,
        epoch=epoch,
        temperature=temperature,
        sample_ids=result.sample_id,
        corruption=result.corruption,
        severity=result.severity,
    )
