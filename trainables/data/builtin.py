"""The built-in datasets, each one ``Dataset`` registered as a plugin's would be: Fashion-MNIST,
scikit-learn's digits, CIFAR-10/100, SVHN, synthetic noise and an ImageNet-style image folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.data import datasets, register_dataset
from trainables.data.base import Dataset
from trainables.data.datasets import (
    _CIFAR10_TRAIN,
    _DIGITS_TEST_FRACTION,
    _DIGITS_TEST_SEED,
    _FASHION_FILES,
    _IDX_IMAGES_MAGIC,
    _IDX_LABELS_MAGIC,
    Arrays,
    Data,
    DatasetInfo,
    FolderData,
    _cifar_batch,
    _permutation,
    _read_idx,
    file_stats,
    files_digest,
    imagefolder_info,
    read_svhn_mat,
)
from trainables.errors import DataError


class TorchvisionDataset(Dataset):
    """A dataset torchvision downloads (``torchvision_class``, train and test)."""

    torchvision_class = ""

    def download(self, target: Path) -> None:
        from torchvision import datasets as tv

        for train in (True, False):
            getattr(tv, self.torchvision_class)(str(target), train=train, download=True)


@register_dataset("fashion_mnist")
class FashionMnist(TorchvisionDataset):
    """Fashion-MNIST: 70 000 28x28 grey images of 10 kinds of clothing."""

    title = "Fashion-MNIST"
    reference = "Xiao et al. 2017"
    info = DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))
    dir_name = "fashion-mnist"
    subdirs = ("", "FashionMNIST/raw")
    files = _FASHION_FILES
    how_to_get = "apt-get install dataset-fashion-mnist, or pass --set download=true"
    torchvision_class = "FashionMNIST"

    def system_roots(self) -> list[Path]:
        return [datasets.FASHION_MNIST_SYSTEM_DIR]

    def read(self, root: str | Path | None, seed: int, synthetic_size: int) -> Arrays:
        directory = self.locate(root)

        def part(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            x = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz", _IDX_IMAGES_MAGIC)
            y = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", _IDX_LABELS_MAGIC)
            return x[:, None], y.astype(np.int64)

        return Arrays(*part("train"), *part("t10k"))


@register_dataset("digits")
class Digits(Dataset):
    """scikit-learn's 1 797 8x8 digits; a fixed-seed 20% is its test set."""

    title = "Digits"
    info = DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3759,))
    flip = False

    def read(self, root: str | Path | None, seed: int, synthetic_size: int) -> Arrays:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        y = digits.target.astype(np.int64)
        perm = _permutation(len(y), _DIGITS_TEST_SEED).numpy()
        n_test = round(_DIGITS_TEST_FRACTION * len(y))
        test, train = perm[:n_test], perm[n_test:]
        return Arrays(x[train], y[train], x[test], y[test])

    def source(self, root: str | None, seed: int, synthetic_size: int) -> tuple[str, str]:
        from sklearn import datasets as sk

        path = Path(sk.__file__).parent / "data" / "digits.csv.gz"
        return str(path), files_digest(file_stats([path]), True)


class Cifar(TorchvisionDataset):
    """CIFAR pickles: the train batches, then the test batch (``files``)."""

    label_key = b"labels"

    def read(self, root: str | Path | None, seed: int, synthetic_size: int) -> Arrays:
        directory = self.locate(root)
        parts = [_cifar_batch(directory / f, self.label_key) for f in self.files[:-1]]
        test_x, test_y = _cifar_batch(directory / self.files[-1], self.label_key)
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1] for p in parts])
        return Arrays(train_x, train_y, test_x, test_y)


@register_dataset("cifar10")
class Cifar10(Cifar):
    """CIFAR-10: 60 000 32x32 colour images of 10 classes."""

    title = "CIFAR-10"
    reference = "Krizhevsky 2009"
    info = DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    subdirs = ("cifar-10-batches-py", "")
    files = (*_CIFAR10_TRAIN, "test_batch")
    torchvision_class = "CIFAR10"


@register_dataset("cifar100")
class Cifar100(Cifar):
    """CIFAR-100: 60 000 32x32 colour images of 100 classes."""

    title = "CIFAR-100"
    reference = "Krizhevsky 2009"
    info = DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    subdirs = ("cifar-100-python", "")
    files = ("train", "test")
    torchvision_class = "CIFAR100"
    label_key = b"fine_labels"


@register_dataset("svhn")
class Svhn(Dataset):
    """SVHN: house-number digits, 32x32 colour (digit 0 as class 0)."""

    title = "SVHN"
    reference = "Netzer et al. 2011"
    info = DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
    flip = False
    files = ("train_32x32.mat", "test_32x32.mat")

    def read(self, root: str | Path | None, seed: int, synthetic_size: int) -> Arrays:
        directory = self.locate(root)
        train = read_svhn_mat(directory / "train_32x32.mat")
        return Arrays(*train, *read_svhn_mat(directory / "test_32x32.mat"))

    def download(self, target: Path) -> None:
        from torchvision import datasets as tv

        for split in ("train", "test"):
            tv.SVHN(str(target), split=split, download=True)


@register_dataset("synthetic")
class Synthetic(Dataset):
    """Uniform uint8 noise with random labels, drawn from the data seed (``synthetic_size``
    train images and a quarter as many test images): for tests and benchmarks."""

    title = "Synthetic"
    # mean 127.5/255, std sqrt((256**2 - 1) / 12) / 255
    info = DatasetInfo("synthetic", 10, 3, 32, (0.5,) * 3, (0.2898,) * 3)

    def read(self, root: str | Path | None, seed: int, synthetic_size: int) -> Arrays:
        if synthetic_size < 4:
            raise DataError(f"synthetic: synthetic_size={synthetic_size} is too small; pass >= 4")
        g = torch.Generator().manual_seed(seed)

        def part(n: int) -> tuple[np.ndarray, np.ndarray]:
            x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
            y = torch.randint(0, 10, (n,), generator=g)
            return x.numpy(), y.numpy()

        return Arrays(*part(synthetic_size), *part(synthetic_size // 4))


@register_dataset("imagefolder")
class ImageFolder(Dataset):
    """An ImageNet-style folder, ``root/train/<class>/*`` and ``root/val/<class>/*`` (the
    official val is the test split), streamed from disk and resized to 224."""

    title = "Image folder"
    files = ("train", "val")
    how_to_get = "pass root=DIR holding train/<class>/* and val/<class>/* images"
    held_out_ok = False

    def static_info(self, root: str | None = None, image_size: int = 224) -> DatasetInfo:
        with os.scandir(self.locate(root) / "train") as entries:
            classes = [e.name for e in entries if e.is_dir()]
        return imagefolder_info(len(classes), image_size)

    def load(
        self,
        root: str | None,
        *,
        val_fraction: float,
        seed: int,
        train_subset: int | None,
        test_subset: int | None,
        device: Any,
        download: bool,
        num_workers: int,
        synthetic_size: int,
        channels_last: bool,
        image_size: int,
        held_out: Sequence[int],
    ) -> Data:
        return FolderData(
            root,
            image_size=image_size,
            val_fraction=val_fraction,
            seed=seed,
            train_subset=train_subset,
            test_subset=test_subset,
            device=device,
            num_workers=num_workers,
            channels_last=channels_last,
        )

    def source(self, root: str | None, seed: int, synthetic_size: int) -> tuple[str, str]:
        # the file listing (names and sizes): hashing a whole ImageNet per trial would cost minutes
        directory = self.locate(root)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        return str(directory), files_digest(file_stats(files), False)
