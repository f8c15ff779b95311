"""A user's dataset is one file: a ``Dataset`` subclass registered with ``@register_dataset``
that reads a folder of ``.npy`` arrays; a run names it, trains on it, splits it and records its
source as it does a built-in one; a missing file, a taken name, a broken contract and an unknown
name are one line each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainables.config import parse_config
from trainables.data import DATASETS, Arrays, Dataset, DatasetInfo, register_dataset
from trainables.data.datasets import (
    DATASET_INFO,
    check_data_available,
    dataset_source,
    load_data,
)
from trainables.engine.loop import Trainer
from trainables.errors import DataError, PluginError


class NpyFolder(Dataset):
    """Three classes of 8x8 grey images as ``.npy`` arrays."""

    title = "Npy folder"
    info = DatasetInfo("test_npy", 3, 1, 8, (0.5,), (0.25,))
    files = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")
    how_to_get = "pass data_root=DIR holding train_x.npy, train_y.npy, test_x.npy, test_y.npy"
    flip = False

    def read(self, root, seed, synthetic_size):
        d = self.locate(root)
        return Arrays(*(np.load(d / f) for f in self.files))


def write_npy(root: Path, n_train: int = 120, n_test: int = 30) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 3, n).astype(np.int64)
        x = np.zeros((n, 1, 8, 8), dtype=np.uint8)
        for k in range(3):  # a learnable pattern: class k lights row band k
            x[y == k, 0, 2 * k : 2 * k + 3] = 200
        x += rng.integers(0, 40, x.shape).astype(np.uint8)
        np.save(root / f"{split}_x.npy", x)
        np.save(root / f"{split}_y.npy", y)
    return root


@pytest.fixture
def npy() -> Iterator[str]:
    register_dataset("test_npy")(NpyFolder)
    yield "test_npy"
    DATASETS._parts.pop("test_npy", None)
    DATASETS._origins.pop("test_npy", None)


def test_a_plugin_dataset_trains_and_is_split_and_recorded_like_a_built_in(npy, tmp_path):
    root = str(write_npy(tmp_path / "npy"))
    assert DATASET_INFO[npy].num_classes == 3
    cfg = parse_config(
        dict(
            dataset=npy,
            data_root=root,
            model="cnn",
            epochs=1,
            batch_size=32,
            device="cpu",
            train_subset=None,
            val_fraction=0.2,
        )  # fmt: skip
    )
    trainer = Trainer(cfg)
    assert [trainer.data.split_size(s) for s in ("train", "val", "test")] == [96, 24, 30]
    result = trainer.fit()
    assert result.status == "completed" and 0 <= result.final["test_accuracy"] <= 1
    source, digest = dataset_source(npy, root)
    assert source == root and len(digest) == 64
    held = load_data(npy, root=root, held_out=(2,))
    assert held.info.num_classes == 2


def test_a_missing_file_is_one_line_with_the_datasets_fix(npy, tmp_path):
    with pytest.raises(DataError) as err:
        check_data_available(npy, str(tmp_path), download=False)
    message = str(err.value)
    assert message.startswith("test_npy: files train_x.npy") and "\n" not in message
    assert message.endswith("pass data_root=DIR holding train_x.npy, train_y.npy, test_x.npy, "
                            "test_y.npy")  # fmt: skip


def test_a_taken_name_a_broken_contract_and_an_unknown_name_are_one_line(npy):
    with pytest.raises(PluginError, match=r"^dataset 'cifar10' from .* is already registered by "):
        register_dataset("cifar10")(NpyFolder)

    class Unread(Dataset):
        info = DatasetInfo("test_unread", 2, 1, 8, (0.5,), (0.25,))

    with pytest.raises(PluginError, match=r"contract: it implements neither Dataset.read nor"):
        register_dataset("test_unread")(Unread)

    class Misnamed(NpyFolder):
        pass

    with pytest.raises(PluginError, match=r"its info is named 'test_npy', not 'test_other'"):
        register_dataset("test_other")(Misnamed)
    with pytest.raises(
        DataError,
        match=r"^unknown dataset 'mnist': known are fashion_mnist, "
        r"digits, cifar10, cifar100, svhn, synthetic, imagefolder, test_npy \(",
    ):
        parse_config({"dataset": "mnist"})


def test_the_built_in_datasets_are_parts():
    assert DATASETS.names() == (
        "fashion_mnist", "digits", "cifar10", "cifar100", "svhn", "synthetic", "imagefolder"
    )  # fmt: skip
    downloadable = [n for n, d in DATASETS.items() if d.downloadable]
    assert downloadable == ["fashion_mnist", "cifar10", "cifar100", "svhn"]
    assert not DATASETS.get("imagefolder").held_out_ok
