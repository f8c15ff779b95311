"""Dataset readers, seeded splits and batching, on tiny files written in the real formats."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from trainables.data.datasets import (
    DATASETS,
    FASHION_MNIST_SYSTEM_DIR,
    Data,
    DataError,
    FolderData,
    InMemoryData,
    dataset_source,
    load_data,
    main,
    random_crop_flip,
)

# ----------------------------------------------------------------------------- file writers
# Every image i is constant with value i in channel 0, so a batch reveals which samples it holds.


def id_images(n: int, channels: int, size: int) -> np.ndarray:
    x = np.zeros((n, channels, size, size), dtype=np.uint8)
    x[:, 0] = np.arange(n, dtype=np.uint8)[:, None, None]
    return x


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(root: Path, n_train: int = 40, n_test: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", id_images(n, 1, 28)[:, 0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def write_pickle(
    path: Path, images: np.ndarray, labels: np.ndarray, key: bytes, protocol: int = 2
) -> None:
    """A CIFAR batch as the official files hold it (a protocol-2 pickle of a bytes-keyed dict)."""
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"data": images.reshape(len(images), 3 * 32 * 32),
        key: labels.tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


class _CreatesAFile:
    """Unpickled by plain ``pickle.load``, this opens ``path`` for writing: arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def write_crafted_cifar10(root: Path, marker: Path) -> Path:
    """A CIFAR-10 directory whose first batch runs code when unpickled the usual way."""
    write_cifar10(root)
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _CreatesAFile(marker), b"labels": [0]}, f, protocol=2)
    return root


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 8) -> Path:
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    x = id_images(5 * per_batch, 3, 32)
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        labels = np.arange(5 * per_batch)[part] % 10
        write_pickle(directory / f"data_batch_{i + 1}", x[part], labels, b"labels")
    write_pickle(
        directory / "test_batch", id_images(n_test, 3, 32), np.arange(n_test) % 10, b"labels"
    )
    return root


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 6) -> Path:
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) * 7) % 100
        write_pickle(directory / name, id_images(n, 3, 32), labels, b"fine_labels")
    return root


def write_svhn(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        x = id_images(n, 3, 32).transpose(2, 3, 1, 0)  # official layout [32, 32, 3, N]
        y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, 10 is digit 0
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": x, "y": y})
    return root


def write_image_folder(
    root: Path, per_class: int = 6, classes: tuple[str, ...] = ("a", "b")
) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- helpers


def eval_all(data: Data, split: str, batch_size: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(data.eval_batches(split, batch_size))
    if not batches:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def raw_pixels(data: Data, x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: back to 0..255 values."""
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round()


def ids(data: Data, split: str) -> list[int]:
    """The sample ids (channel-0 values) of ``split`` in eval order."""
    x, _ = eval_all(data, split)
    return raw_pixels(data, x)[:, 0, 14, 14].long().tolist() if len(x) else []


# ----------------------------------------------------------------------------- readers


def test_fashion_mnist_idx_reader(tmp_path: Path) -> None:
    data = load_data("fashion_mnist", root=str(write_fashion(tmp_path)), val_fraction=0.25)
    assert (data.info.num_classes, data.info.in_channels, data.info.image_size) == (10, 1, 28)
    assert [data.split_size(s) for s in ("train", "val", "test")] == [30, 10, 12]
    x, y = eval_all(data, "train")
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(torch.tensor(ids(data, "train")) % 10, y)
    assert ids(data, "test") == list(range(12))


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    assert load_data("fashion_mnist", root=str(tmp_path)).split_size("test") == 12


def test_fashion_mnist_bad_magic(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((40, 1), dtype=np.uint8))
    with pytest.raises(DataError, match="magic"):
        load_data("fashion_mnist", root=str(tmp_path))


def test_cifar10_pickles(tmp_path: Path) -> None:
    data = load_data("cifar10", root=str(write_cifar10(tmp_path)), val_fraction=0.2)
    assert data.info.in_channels == 3 and data.info.num_classes == 10
    assert [data.split_size(s) for s in ("train", "val", "test")] == [24, 6, 8]
    x, y = eval_all(data, "train")
    assert x.shape == (24, 3, 32, 32)
    assert torch.equal(torch.tensor(ids(data, "train")) % 10, y)
    # root may also be the batches directory itself
    direct = load_data("cifar10", root=str(tmp_path / "cifar-10-batches-py"))
    assert direct.split_size("test") == 8


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_read_from_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    for name, n in (("train", 6), ("test", 4)):
        write_pickle(directory / name, id_images(n, 3, 32), np.arange(n), b"fine_labels", protocol)
    data = load_data("cifar100", root=str(tmp_path), val_fraction=0.0)
    assert eval_all(data, "test")[1].tolist() == [0, 1, 2, 3]


def test_a_crafted_cifar_batch_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(
        DataError, match=r"io\.open, which a CIFAR batch never does\); refused without running it"
    ):
        load_data("cifar10", root=str(write_crafted_cifar10(tmp_path / "data", marker)))
    assert not marker.exists()
    with open(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        pickle.load(f)  # the plain unpickler would have run it
    assert marker.exists()


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    data = load_data("cifar100", root=str(write_cifar100(tmp_path)), val_fraction=0.0)
    assert data.info.num_classes == 100
    _, y = eval_all(data, "test")
    assert y.tolist() == [(i * 7) % 100 for i in range(6)]
    assert data.split_size("val") == 0 and list(data.eval_batches("val", 4)) == []


def test_svhn_mat_maps_label_10_to_0(tmp_path: Path) -> None:
    data = load_data("svhn", root=str(write_svhn(tmp_path)), val_fraction=0.0)
    x, y = eval_all(data, "test")
    assert x.shape == (10, 3, 32, 32)
    assert y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert ids(data, "test") == list(range(10))  # channel and sample axes transposed correctly
    assert isinstance(data, InMemoryData) and not data.flip


def test_digits_fixed_test_split() -> None:
    a, b = load_data("digits", seed=0), load_data("digits", seed=1)
    assert (a.info.image_size, a.info.in_channels) == (8, 1)
    assert a.split_size("test") == 359 and a.split_size("train") + a.split_size("val") == 1438
    assert torch.equal(eval_all(a, "test")[0], eval_all(b, "test")[0])
    assert isinstance(a, InMemoryData) and not a.flip


def test_image_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path)
    data = load_data("imagefolder", root=str(root), image_size=16, num_workers=0, val_fraction=0.25)
    assert isinstance(data, FolderData)
    assert (data.info.num_classes, data.info.image_size) == (2, 16)
    assert [data.split_size(s) for s in ("train", "val", "test")] == [9, 3, 4]
    x, y = eval_all(data, "test", batch_size=3)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1, 1]
    assert torch.equal(x, eval_all(data, "test", batch_size=4)[0])

    first = list(data.train_batches(4, epoch_seed=3))
    assert [len(b[1]) for b in first] == [4, 4]  # 9 = 4 + 4 + 1, the single leftover is dropped
    again = list(data.train_batches(4, epoch_seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    other = list(data.train_batches(4, epoch_seed=4))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_image_folder_workers_do_not_change_batches(tmp_path: Path) -> None:
    root = str(write_image_folder(tmp_path))
    serial = load_data("imagefolder", root=root, image_size=8, num_workers=0)
    parallel = load_data("imagefolder", root=root, image_size=8, num_workers=2)
    a, b = next(serial.train_batches(5, 7)), next(parallel.train_batches(5, 7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- splits


def test_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    root = str(write_fashion(tmp_path, n_train=60))

    def split(seed: int) -> tuple[list[int], list[int]]:
        data = load_data("fashion_mnist", root=root, seed=seed, train_subset=40, val_fraction=0.1)
        return ids(data, "train"), ids(data, "val")

    train, val = split(0)
    assert (len(train), len(val)) == (36, 4)
    assert not set(train) & set(val) and len(set(train) | set(val)) == 40
    assert split(0) == (train, val)
    assert set(split(1)[1]) != set(val)


def test_test_subset_and_tiny_val(tmp_path: Path) -> None:
    root = str(write_fashion(tmp_path))
    data = load_data("fashion_mnist", root=root, test_subset=5, val_fraction=0.01)
    assert data.split_size("test") == 5 and data.split_size("val") == 1
    assert len(set(ids(data, "test"))) == 5
    other = load_data("fashion_mnist", root=root, test_subset=5, seed=3)
    assert ids(other, "test") != ids(data, "test")


def test_data_seed_shares_the_splits_across_seeds_and_leaves_training_to_the_seed(
    tmp_path: Path,
) -> None:
    from trainables.config import parse_config
    from trainables.engine.loop import Trainer

    root = str(write_fashion(tmp_path, n_train=60))
    fixed = dict(
        dataset="fashion_mnist", data_root=root, train_subset=40, test_subset=6, model="cnn_fc"
    )

    def trainer(**settings: int) -> Trainer:
        return Trainer(parse_config({**fixed, **settings}))

    def splits(t: Trainer) -> tuple[list[int], ...]:
        return ids(t.data, "test"), ids(t.data, "val"), sorted(ids(t.data, "train"))

    a, b = trainer(seed=0, data_seed=7), trainer(seed=1, data_seed=7)
    assert splits(a) == splits(b) == splits(trainer(seed=7))  # data_seed is the splits' seed
    assert splits(trainer(seed=0)) != splits(trainer(seed=1))  # None: the run's seed draws them
    weights = [next(t.model.parameters()).detach() for t in (a, b)]
    assert not torch.equal(*weights)  # the training seed still gives each repeat its own init
    assert torch.equal(weights[0], next(trainer(seed=0).model.parameters()).detach())


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        load_data("synthetic", val_fraction=fraction, synthetic_size=64)


# ----------------------------------------------------------------------------- batching


def test_eval_order_is_fixed(tmp_path: Path) -> None:
    data = load_data("fashion_mnist", root=str(write_fashion(tmp_path)), seed=5)
    x7, y7 = eval_all(data, "train", batch_size=7)
    x100, y100 = eval_all(data, "train", batch_size=100)
    assert torch.equal(x7, x100) and torch.equal(y7, y100)


def test_train_batches_seeded_and_complete(tmp_path: Path) -> None:
    data = load_data("fashion_mnist", root=str(write_fashion(tmp_path)), val_fraction=0.0)

    def epoch(seed: int, batch_size: int = 8) -> list[int]:
        xs = [x for x, _ in data.train_batches(batch_size, seed, augment=False)]
        return raw_pixels(data, torch.cat(xs))[:, 0, 0, 0].long().tolist()

    assert sorted(epoch(1)) == list(range(40))
    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)
    assert [len(y) for _, y in data.train_batches(13, 0)] == [13, 13, 13]  # 40 = 3 * 13 + 1
    assert [len(y) for _, y in data.train_batches(19, 0)] == [19, 19, 2]


def test_augmentation_keeps_shape_and_changes_images() -> None:
    data = load_data("synthetic", synthetic_size=64)
    plain = next(data.train_batches(16, 9, augment=False))
    augmented = next(data.train_batches(16, 9, augment=True))
    assert augmented[0].shape == plain[0].shape == (16, 3, 32, 32)
    assert torch.equal(augmented[1], plain[1])  # same shuffle, augmentation drawn afterwards
    changed = (augmented[0] != plain[0]).flatten(1).any(1)
    assert changed.sum() >= 8
    repeat = next(data.train_batches(16, 9, augment=True))
    assert torch.equal(repeat[0], augmented[0])


@pytest.mark.parametrize("flip", [False, True])
def test_random_crop_flip_is_a_shifted_padded_view(flip: bool) -> None:
    pad, g = 2, torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 2, 6, 6), dtype=torch.uint8)
    out = random_crop_flip(x, pad, flip, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    mirrored_any = False
    for img, src in zip(out, padded, strict=True):
        candidates = {
            (dy, dx, m): src[:, dy : dy + 6, dx : dx + 6].flip(2)
            if m
            else src[:, dy : dy + 6, dx : dx + 6]
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for m in ((False, True) if flip else (False,))
        }
        matches = [k for k, c in candidates.items() if torch.equal(c, img)]
        assert matches
        mirrored_any |= all(k[2] for k in matches)
    assert mirrored_any == flip


def test_normalisation_and_channels_last() -> None:
    data = load_data("synthetic", synthetic_size=512, channels_last=True)
    x, _ = eval_all(data, "train", batch_size=128)
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02
    batch, _ = next(data.train_batches(8, 0))
    assert batch.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "svhn", "imagefolder"])
def test_missing_root_names_the_path(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_data(name, root=str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_default_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trainables.data.datasets.FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHARPCAL_DATA", str(tmp_path / "shared"))
    with pytest.raises(DataError) as err:
        load_data("fashion_mnist")
    message = str(err.value)
    for searched in ("system", "shared/fashion-mnist", "home/.cache/sharpcal/fashion-mnist"):
        assert str(tmp_path / searched) in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=true" in message
    write_fashion(tmp_path / "shared" / "fashion-mnist")
    assert load_data("fashion_mnist").split_size("test") == 12


def test_download_only_fetches_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []

    def fake_download(name: str, root: str | Path | None = None) -> Path:
        fetched.append(name)
        return write_svhn(Path(root))

    monkeypatch.setattr("trainables.data.datasets.download_dataset", fake_download)
    root = str(tmp_path / "svhn")
    assert load_data("svhn", root=root, download=True).split_size("test") == 10
    assert load_data("svhn", root=root, download=True).split_size("test") == 10
    assert fetched == ["svhn"]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DataError) as err:
        load_data("mnist-ish")
    assert all(name in str(err.value) for name in DATASETS)


def test_unknown_split() -> None:
    with pytest.raises(DataError, match="split"):
        list(load_data("synthetic", synthetic_size=64).eval_batches("dev", 4))


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "digits"]) == 0
    assert main(["fetch"]) == 2
    assert main(["download", "nope"]) == 1
    assert "unknown dataset" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real files


@pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_SYSTEM_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_subset() -> None:
    data = load_data("fashion_mnist", root=str(FASHION_MNIST_SYSTEM_DIR), train_subset=500)
    assert [data.split_size(s) for s in ("train", "val", "test")] == [450, 50, 10000]
    x, y = next(data.train_batches(64, 0))
    assert x.shape == (64, 1, 28, 28) and set(y.tolist()) <= set(range(10))
    test_x, test_y = eval_all(data, "test", batch_size=2500)
    assert abs(test_x.mean().item()) < 0.1 and abs(test_x.std().item() - 1) < 0.1
    assert torch.bincount(test_y).tolist() == [1000] * 10


def test_dataset_source_digests_the_files_and_sees_a_change(tmp_path):
    root = write_cifar10(tmp_path / "c10", per_batch=4, n_test=4)
    source, digest = dataset_source("cifar10", str(root))
    assert Path(source).is_dir() and len(digest) == 64
    copy = write_cifar10(tmp_path / "again", per_batch=4, n_test=4)
    assert dataset_source("cifar10", str(copy))[1] == digest  # same bytes, same digest
    batch = Path(source) / "test_batch"
    data = bytearray(batch.read_bytes())
    data[-2] ^= 0xFF
    batch.write_bytes(bytes(data))
    assert dataset_source("cifar10", str(root))[1] != digest
    assert dataset_source("synthetic", seed=1)[1] != dataset_source("synthetic", seed=2)[1]
    assert dataset_source("digits")[0].endswith("digits.csv.gz")
