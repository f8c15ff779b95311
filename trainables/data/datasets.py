"""Image-classification datasets: readers, seeded splits and device-side batching.

Small datasets live as one uint8 tensor on the training device and are augmented there in
whole batches; ImageNet-style folders stream through a seeded ``DataLoader``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.data import DATASETS
from trainables.errors import DataError

SPLITS = ("train", "val", "test")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
# Digits has no official test split; a fixed seed keeps its test set identical across runs.
_DIGITS_TEST_SEED = 0
_DIGITS_TEST_FRACTION = 0.2
_CROP_PADDING = {32: 4, 28: 2, 8: 1}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset; ``mean``/``std`` are per channel on the 0..1 scale."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Data(Protocol):
    """What the training loop uses; both ``InMemoryData`` and ``FolderData`` satisfy it."""

    @property
    def info(self) -> DatasetInfo:
        """The dataset's static description."""
        ...

    def split_size(self, split: str) -> int:
        """Number of samples in ``split`` (one of ``SPLITS``)."""
        ...

    def train_batches(
        self, batch_size: int, epoch_seed: int, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of the train split; identical ``epoch_seed`` => identical batches."""
        ...

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``split`` in fixed order without augmentation."""
        ...


@dataclass(frozen=True)
class Arrays:
    """A dataset as read from disk: uint8 images [N, C, H, W] and int64 labels [N]."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


_Arrays = Arrays  # its name before issue 35


class _InfoView(Mapping[str, DatasetInfo]):
    """The static ``DatasetInfo`` of every registered dataset that has one, by name (a view of
    ``DATASETS``: a plugin's dataset is in it once registered)."""

    def _infos(self) -> dict[str, DatasetInfo]:
        return {n: d.info for n, d in DATASETS.items() if d.info is not None}

    def __getitem__(self, name: str) -> DatasetInfo:
        return self._infos()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos())

    def __len__(self) -> int:
        return len(self._infos())


# Static description of every dataset that has one (not imagefolder: its classes are its folders).
DATASET_INFO: Mapping[str, DatasetInfo] = _InfoView()


def __getattr__(name: str) -> Any:
    if name == "DOWNLOADABLE":  # the datasets ``download=true`` fetches
        return tuple(n for n, d in DATASETS.items() if d.downloadable)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- locating files


def _default_roots(name: str) -> list[Path]:
    """Directories searched when no root is given, most preferred first: a registered
    dataset's (``Dataset.default_roots``), else those of a directory called ``name``."""
    if name in DATASETS:
        return DATASETS.get(name).default_roots()
    roots = []
    if os.environ.get("SHARPCAL_DATA"):
        roots.append(Path(os.environ["SHARPCAL_DATA"]) / name)
    roots.append(Path.home() / ".cache" / "sharpcal" / name)
    return roots


def search_dirs(name: str, root: str | Path | None, subdirs: Sequence[str]) -> list[Path]:
    """The directories searched for ``name``'s files, most preferred first: each
    ``<root>/<subdir>`` of the given root, or of every default root when ``root`` is None."""
    roots = [Path(root).expanduser()] if root is not None else _default_roots(name)
    return [r / sub if sub else r for r in roots for sub in subdirs]


def default_download_root(name: str) -> Path:
    """Where ``download=True`` stores ``name`` when no root is given."""
    return _default_roots(name)[-1]


def check_data_available(name: str, root: str | None, download: bool) -> None:
    """Raise ``DataError`` (one line: what was searched, how to get it) when dataset ``name``
    cannot be found and will not be downloaded; datasets without files always pass."""
    check_dataset_name(name)
    DATASETS.get(name).check_available(root, download)


def _locate(name: str, root: str | Path | None) -> Path:
    return DATASETS.get(name).locate(root)


# ----------------------------------------------------------------------------- readers


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a gzipped IDX file (big-endian header, uint8 payload) after checking its magic."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); re-fetch the file") from e
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(
            f"{path}: bad IDX magic number {found!r} (expected {magic:#010x}); re-fetch the file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{path}: size does not match IDX header dims {dims}; re-fetch the file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# The only globals a CIFAR batch pickle names: NumPy's array reconstruction (``numpy.core`` in
# the original Python 2 files, ``numpy._core`` in files NumPy 2 wrote).
_CIFAR_GLOBALS = {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")
    for module, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),  # pickle protocol 5
    )
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes, protocol < 3


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR batch holds (dicts, lists, bytes, strings,
    numbers and NumPy arrays): any other global — a function, a class, ``os.system`` — is
    refused before it is looked up, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which a CIFAR batch never does"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(
            f"{path}: not a CIFAR batch pickle ({e}); refused without running it — re-fetch the file"
        ) from e
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR batch (a {type(batch).__name__}); re-fetch the file")
    return batch


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        return data.reshape(len(data), 3, 32, 32), labels
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{path}: malformed CIFAR batch (need b'data' [N,3072] and {label_key!r}: {e}); "
            "re-fetch the file"
        ) from e


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 [N, 3, 32, 32]) and labels (int64 [N], digit 0 as class 0) of an SVHN
    ``.mat`` file; DataError when it is malformed."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
        x = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1))
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError, MatReadError) as e:
        raise DataError(
            f"{path}: malformed SVHN .mat (need X [32,32,3,N] and y [N,1]: {e}); re-fetch the file"
        ) from e
    y[y == 10] = 0  # SVHN stores digit 0 as class 10
    return x, y


def check_arrays(arrays: Arrays, info: DatasetInfo) -> None:
    """Reject files whose shapes or labels disagree with ``info``."""
    shape = (info.in_channels, info.image_size, info.image_size)
    parts = (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y))
    for split, x, y in parts:
        if x.ndim != 4 or x.shape[1:] != shape or len(x) != len(y):
            raise DataError(
                f"{info.name}: {split} images {x.shape} / labels {y.shape} do not match "
                f"[N,{','.join(map(str, shape))}] / [N]; re-fetch the files"
            )
        if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
            raise DataError(
                f"{info.name}: {split} labels outside 0..{info.num_classes - 1}; re-fetch the files"
            )


# ----------------------------------------------------------------------------- splits


def _permutation(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} is outside [0, 1); pass e.g. 0.1")


def _subset_size(what: str, subset: int | None, n: int) -> int:
    if subset is None:
        return n
    if subset < 1:
        raise DataError(f"{what}={subset} must be >= 1 (or None for all {n} images)")
    return min(subset, n)


def _split_indices(
    n_train: int, *, val_fraction: float, seed: int, train_subset: int | None = None
) -> tuple[Tensor, Tensor]:
    """Seeded (train, val) indices into the official train set; val indices are sorted."""
    _check_val_fraction(val_fraction)
    chosen = _permutation(n_train, seed)[: _subset_size("train_subset", train_subset, n_train)]
    n_val = max(1, round(val_fraction * len(chosen))) if val_fraction > 0 else 0
    if n_val >= len(chosen):
        raise DataError(
            f"val_fraction={val_fraction} leaves no training images out of {len(chosen)}; "
            "lower val_fraction or raise train_subset"
        )
    return chosen[n_val:], chosen[:n_val].sort().values


def subset_indices(
    n: int, *, seed: int, subset: int | None = None, what: str = "test_subset"
) -> Tensor:
    """Seeded choice of ``subset`` of ``n`` images (all of them when None), sorted: the test split
    and the OOD sets are chosen with it. ``what`` names the setting when ``subset`` < 1."""
    if subset is None:
        return torch.arange(n)
    chosen = _permutation(n, seed)[: _subset_size(what, subset, n)]
    return chosen.sort().values


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _batch_starts(n: int, batch_size: int) -> range:
    """Batch offsets; a trailing batch of one sample is dropped (BatchNorm cannot train on it)."""
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be >= 1")
    end = n - 1 if batch_size > 1 and n % batch_size == 1 else n
    return range(0, end, batch_size)


def train_steps(n: int, batch_size: int) -> int:
    """The steps of a training epoch over ``n`` images in batches of ``batch_size``."""
    return len(_batch_starts(n, batch_size))


# ----------------------------------------------------------------------------- in-memory data


def crop_padding(image_size: int) -> int:
    """Zero padding of the random-crop augmentation for square images of ``image_size``."""
    return _CROP_PADDING.get(image_size, max(1, image_size // 8))


def random_crop_flip(x: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Batched random crop of the zero-padded images (and optional mirror) with one gather.

    ``x`` is [B, C, H, W]; output pixel (i, j) of image b is padded[b, i + dy_b, j' + dx_b]
    where j' = W-1-j for mirrored images.
    """
    b, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirrored = torch.rand(b, 1, generator=generator, device=dev) < 0.5
        cols = torch.where(mirrored, w - 1 - cols, cols)
    rows = torch.arange(h, device=dev) + dy
    cols = cols + dx
    batch = torch.arange(b, device=dev)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class Normaliser:
    """uint8 [B,C,H,W] -> float32 (x/255 - mean)/std in the requested memory format."""

    def __init__(self, info: DatasetInfo, device: torch.device, channels_last: bool) -> None:
        mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        out = x.float().mul_(self.scale).sub_(self.shift)
        return out.contiguous(memory_format=self.memory_format)


class InMemoryData:
    """A whole dataset as uint8 tensors on ``device``, batched and augmented there."""

    def __init__(
        self,
        info: DatasetInfo,
        splits: dict[str, tuple[Tensor, Tensor]],
        *,
        flip: bool,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
    ) -> None:
        self.info = info
        self.device = torch.device(device)
        self.flip = flip
        self.pad = crop_padding(info.image_size)
        self._splits = {
            s: (x.to(self.device).contiguous(), y.to(self.device, torch.int64))
            for s, (x, y) in splits.items()
        }
        self._normalise = Normaliser(info, self.device, channels_last)

    def split_size(self, split: str) -> int:
        """Number of samples in ``split``."""
        _check_split(split)
        return len(self._splits[split][1])

    def train_batches(
        self, batch_size: int, epoch_seed: int, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch; shuffle and augmentation use a generator seeded by epoch_seed."""
        x, y = self._splits["train"]
        g = torch.Generator(device=self.device).manual_seed(epoch_seed)
        perm = torch.randperm(len(y), generator=g, device=self.device)
        for start in _batch_starts(len(y), batch_size):
            idx = perm[start : start + batch_size]
            xb = x[idx]
            if augment:
                xb = random_crop_flip(xb, self.pad, self.flip, g)
            yield self._normalise(xb), y[idx]

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``split`` in stored order: sample i of the split is the i-th sample yielded."""
        _check_split(split)
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be >= 1")
        x, y = self._splits[split]
        for start in range(0, len(y), batch_size):
            yield self._normalise(x[start : start + batch_size]), y[start : start + batch_size]


def _without_classes(arrays: Arrays, held_out: Sequence[int], num_classes: int) -> Arrays:
    """``arrays`` without the images of ``held_out`` classes, the other labels renumbered in
    order (the classes 0..C-1 less the held-out ones become 0..C-1-k)."""
    renumber = np.full(num_classes, -1, dtype=np.int64)
    kept = np.setdiff1d(np.arange(num_classes), held_out)
    renumber[kept] = np.arange(len(kept))
    train = ~np.isin(arrays.train_y, held_out)
    test = ~np.isin(arrays.test_y, held_out)
    return Arrays(
        arrays.train_x[train], renumber[arrays.train_y[train]],
        arrays.test_x[test], renumber[arrays.test_y[test]],
    )  # fmt: skip


def read_test_images(
    name: str, *, root: str | None = None, synthetic_size: int = 2048, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Dataset ``name``'s whole test set as read from disk: uint8 [N, C, H, W] and labels."""
    check_dataset_name(name)
    arrays = DATASETS.get(name).read(root, seed, synthetic_size)
    return arrays.test_x, arrays.test_y


def held_out_test_images(
    name: str, classes: Sequence[int], *, root: str | None = None, synthetic_size: int = 2048,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The test images (uint8 [N, C, H, W]) of ``classes`` and their original labels: the OOD
    set of the near-OOD protocol (``ood.heldout``), in the test set's order."""
    x, y = read_test_images(name, root=root, synthetic_size=synthetic_size, seed=seed)
    chosen = np.isin(y, classes)
    return x[chosen], y[chosen]


def in_memory(
    info: DatasetInfo,
    arrays: Arrays,
    *,
    flip: bool,
    val_fraction: float,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
    device: str | torch.device,
    channels_last: bool,
    held_out: Sequence[int] = (),
) -> InMemoryData:
    """A dataset's arrays split (seeded) into train/val/test, on ``device``: the held-out
    classes left out and the others renumbered in order."""
    check_arrays(arrays, info)
    if held_out:
        arrays = _without_classes(arrays, held_out, info.num_classes)
        info = replace(info, num_classes=info.num_classes - len(held_out))
    train, val = _split_indices(
        len(arrays.train_y), val_fraction=val_fraction, seed=seed, train_subset=train_subset
    )
    test = subset_indices(len(arrays.test_y), seed=seed, subset=test_subset)

    def take(x: np.ndarray, y: np.ndarray, idx: Tensor) -> tuple[Tensor, Tensor]:
        i = idx.numpy()
        return torch.from_numpy(np.ascontiguousarray(x[i])), torch.from_numpy(y[i].astype(np.int64))

    splits = {
        "train": take(arrays.train_x, arrays.train_y, train),
        "val": take(arrays.train_x, arrays.train_y, val),
        "test": take(arrays.test_x, arrays.test_y, test),
    }
    return InMemoryData(info, splits, flip=flip, device=device, channels_last=channels_last)


# ----------------------------------------------------------------------------- image folders


class _SeededView(torch.utils.data.Dataset):
    """Applies ``transform`` to items of ``subset``; a ``(index, seed)`` key seeds its randomness.

    Seeding per sample makes augmented batches independent of the worker count and order.
    """

    def __init__(self, subset: torch.utils.data.Subset, transform: Callable[[Any], Tensor]) -> None:
        self.subset = subset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        if isinstance(key, int):
            image, label = self.subset[key]
            return self.transform(image), label
        index, seed = key
        image, label = self.subset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class _EpochBatchSampler(torch.utils.data.Sampler):
    """Shuffled ``(index, sample_seed)`` batches drawn from a generator seeded per epoch."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n = n
        self.batch_size = batch_size
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(_batch_starts(self.n, self.batch_size))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.epoch_seed)
        perm = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        for start in _batch_starts(self.n, self.batch_size):
            stop = start + self.batch_size
            yield list(zip(perm[start:stop], seeds[start:stop], strict=True))


class FolderData:
    """ImageNet-style ``root/train/<class>/*`` and ``root/val/<class>/*`` streamed from disk.

    The official ``val`` folder is the test split; our val split is held out of ``train``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        image_size: int = 224,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_subset: int | None = None,
        test_subset: int | None = None,
        device: str | torch.device = "cpu",
        num_workers: int = 2,
        channels_last: bool = False,
    ) -> None:
        from torchvision import datasets

        directory = _locate("imagefolder", root)
        train_set = datasets.ImageFolder(str(directory / "train"))
        test_set = datasets.ImageFolder(str(directory / "val"))
        if train_set.classes != test_set.classes:
            raise DataError(
                f"imagefolder: class folders of {directory / 'train'} and {directory / 'val'} "
                "differ; give both the same class subfolders"
            )
        self.info = imagefolder_info(len(train_set.classes), image_size)
        self.device = torch.device(device)
        self.num_workers = num_workers
        train, val = _split_indices(
            len(train_set), val_fraction=val_fraction, seed=seed, train_subset=train_subset
        )
        test = subset_indices(len(test_set), seed=seed, subset=test_subset)
        self._subsets = {
            "train": torch.utils.data.Subset(train_set, train.tolist()),
            "val": torch.utils.data.Subset(train_set, val.tolist()),
            "test": torch.utils.data.Subset(test_set, test.tolist()),
        }
        self._train_tf, self._eval_tf = _folder_transforms(image_size)
        self._loaders: dict[tuple[str, int, bool], torch.utils.data.DataLoader] = {}
        self._normalise = Normaliser(self.info, self.device, channels_last)

    def split_size(self, split: str) -> int:
        """Number of samples in ``split``."""
        _check_split(split)
        return len(self._subsets[split])

    def _loader(self, split: str, batch_size: int, augment: bool) -> torch.utils.data.DataLoader:
        key = (split, batch_size, augment)
        if key not in self._loaders:
            view = _SeededView(self._subsets[split], self._train_tf if augment else self._eval_tf)
            workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
            pin = self.device.type == "cuda"
            if split == "train":
                sampler = _EpochBatchSampler(len(view), batch_size)
                loader = torch.utils.data.DataLoader(
                    view, batch_sampler=sampler, pin_memory=pin, **workers
                )
            else:
                loader = torch.utils.data.DataLoader(
                    view, batch_size=batch_size, shuffle=False, pin_memory=pin, **workers
                )
            self._loaders[key] = loader
        return self._loaders[key]

    def _to_device(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        return self._normalise(x), y.to(self.device, torch.int64, non_blocking=True)

    def train_batches(
        self, batch_size: int, epoch_seed: int, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch; order and per-sample augmentation are seeded by epoch_seed."""
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be >= 1")
        loader = self._loader("train", batch_size, augment)
        loader.batch_sampler.epoch_seed = epoch_seed
        for batch in loader:
            yield self._to_device(batch)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``split`` in fixed order, resized and centre-cropped, never augmented."""
        _check_split(split)
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be >= 1")
        if self.split_size(split) == 0:
            return
        for batch in self._loader(split, batch_size, False):
            yield self._to_device(batch)


def imagefolder_info(num_classes: int, image_size: int) -> DatasetInfo:
    """``DatasetInfo`` of an ImageNet-style folder of ``num_classes`` RGB classes (ImageNet's
    mean and std), its images resized to ``image_size``."""
    return DatasetInfo("imagefolder", num_classes, 3, image_size, _IMAGENET_MEAN, _IMAGENET_STD)


def _folder_transforms(image_size: int) -> tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]:
    """(train, eval) PIL -> uint8 tensor transforms; normalisation happens on the device."""
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.PILToTensor()])
    evaluate = T.Compose(
        [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.PILToTensor()]
    )
    return train, evaluate


# ----------------------------------------------------------------------------- entry points


def download_dataset(name: str, root: str | Path | None = None) -> Path:
    """Fetch ``name`` into ``root`` (default ``~/.cache/sharpcal/<dir>``; ``Dataset.download``).

    A downloadable dataset is fetched (files already there and verified are kept); the others
    have nothing to fetch and only the target directory is returned.
    """
    check_dataset_name(name)
    target = Path(root).expanduser() if root is not None else default_download_root(name)
    dataset = DATASETS.get(name)
    if not dataset.downloadable:
        return target
    try:
        dataset.download(target)
    except (OSError, RuntimeError) as e:
        raise DataError(f"{name}: download into {target} failed ({e}); check the network") from e
    return target


@functools.lru_cache(maxsize=16)
def files_digest(files: tuple[tuple[str, int, int], ...], contents: bool) -> str:
    """sha256 over each file's name and size and, with ``contents``, its bytes (the stats in
    ``files`` — path, size, mtime — key the cache, so a changed file is hashed again)."""
    digest = hashlib.sha256()
    for path, size, _ in files:
        digest.update(f"{Path(path).name}:{size}\n".encode())
        if contents:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def file_stats(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def dataset_source(
    name: str, root: str | None = None, seed: int = 0, synthetic_size: int = 2048
) -> tuple[str, str]:
    """Where dataset ``name`` is read from and a digest of its source (sha256 hex;
    ``Dataset.source``). For an MLflow dataset input."""
    check_dataset_name(name)
    return DATASETS.get(name).source(root, seed, synthetic_size)


def check_dataset_name(name: str) -> None:
    """Raise ``DataError`` unless ``name`` is a registered dataset (one line: the known ones)."""
    if name not in DATASETS:
        raise DataError(DATASETS.unknown(name))


def load_data(
    name: str,
    *,
    root: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
    num_workers: int = 2,
    synthetic_size: int = 2048,
    channels_last: bool = False,
    image_size: int = 224,
    held_out: Sequence[int] = (),
) -> Data:
    """Read dataset ``name`` and split it into seeded train/val/test parts on ``device``.

    With ``download=True`` files that cannot be read are fetched first (see
    ``download_dataset``). ``image_size`` and ``num_workers`` only apply to ``imagefolder``.
    ``held_out`` classes are left out of every split, the others renumbered in order (the
    near-OOD protocol; not for ``imagefolder``).
    """
    check_dataset_name(name)
    _check_val_fraction(val_fraction)
    dataset = DATASETS.get(name)
    if held_out and not dataset.held_out_ok:
        raise DataError(f"ood.heldout: classes cannot be held out of {name}; remove it")
    return dataset.load(
        root,
        val_fraction=val_fraction,
        seed=seed,
        train_subset=train_subset,
        test_subset=test_subset,
        device=device,
        download=download,
        num_workers=num_workers,
        synthetic_size=synthetic_size,
        channels_last=channels_last,
        image_size=image_size,
        held_out=held_out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainables.data.datasets download NAME [ROOT]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3) or args[0] != "download":
        print("usage: python -m trainables.data.datasets download NAME [ROOT]", file=sys.stderr)
        return 2
    try:
        target = download_dataset(args[1], args[2] if len(args) == 3 else None)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    done = "ready in" if DATASETS.get(args[1]).downloadable else "needs no download; root would be"
    print(f"{args[1]} {done} {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
