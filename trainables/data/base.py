"""What a dataset is to sharpcal: the API a plugin's dataset implements.

A dataset in memory only implements ``read``: its official train and test images as uint8
arrays ``[N, C, H, W]`` with int64 labels, and describes itself in ``info``; sharpcal splits,
subsets, normalises, augments and batches it on the device as it does the built-in ones (the
seeds, the val split, the ``held_out`` classes of the near-OOD protocol). A dataset streamed from
disk overrides ``load`` and returns its own ``Data``. A new dataset is one file::

    import numpy as np
    from trainables.data import Arrays, Dataset, DatasetInfo, register_dataset

    @register_dataset("my_npy")
    class MyNpy(Dataset):
        title = "My arrays"
        info = DatasetInfo("my_npy", num_classes=3, in_channels=1, image_size=8,
                           mean=(0.5,), std=(0.25,))
        files = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")
        how_to_get = "pass data_root=DIR holding train_x.npy, train_y.npy, test_x.npy, test_y.npy"

        def read(self, root, seed, synthetic_size):
            d = self.locate(root)
            load = lambda f: np.load(d / f)
            return Arrays(load("train_x.npy"), load("train_y.npy"),
                          load("test_x.npy"), load("test_y.npy"))

Files are looked for in ``subdirs`` of the run's ``data_root``, else of the default roots
(``system_roots``, ``$SHARPCAL_DATA/<dir_name>``, ``~/.cache/sharpcal/<dir_name>``); a missing
one is a one-line ``DataError`` ending in ``how_to_get``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from trainables.data.datasets import (
    Arrays,
    DatasetInfo,
    check_arrays,
    file_stats,
    files_digest,
    in_memory,
)
from trainables.errors import DataError
from trainables.parts import Part

if TYPE_CHECKING:
    import torch

    from trainables.data.datasets import Data


class Dataset(Part):
    """A registered dataset (``dataset:`` of a run).

    Class attributes:
        info: its static description (classes, channels, image size, per-channel mean and std
            on the 0..1 scale); None when its files decide it (override ``static_info``).
        flip: whether augmentation may mirror its images (not for digits).
        dir_name: its directory under the default roots (default: its name).
        subdirs: the subdirectories of a root its files may be in ("": the root itself).
        files: the files that must be there (none: it reads no files).
        how_to_get: the fix a "not found" message ends with.
        held_out_ok: whether classes can be held out of it (``ood.heldout``).
    """

    info: ClassVar[DatasetInfo | None] = None
    flip: ClassVar[bool] = True
    dir_name: ClassVar[str] = ""
    subdirs: ClassVar[tuple[str, ...]] = ("",)
    files: ClassVar[tuple[str, ...]] = ()
    how_to_get: ClassVar[str] = ""
    held_out_ok: ClassVar[bool] = True

    name: str = ""  # set by ``register_dataset``

    # -- where its files are ------------------------------------------------------------------

    def system_roots(self) -> list[Path]:
        """Directories searched first when no root is given (a system-wide install)."""
        return []

    def default_roots(self) -> list[Path]:
        """Directories searched when no root is given, most preferred first."""
        dir_name = self.dir_name or self.name
        roots = self.system_roots()
        if os.environ.get("SHARPCAL_DATA"):
            roots.append(Path(os.environ["SHARPCAL_DATA"]) / dir_name)
        roots.append(Path.home() / ".cache" / "sharpcal" / dir_name)
        return roots

    def search_dirs(
        self, root: str | Path | None, subdirs: Sequence[str] | None = None
    ) -> list[Path]:
        """Each ``<root>/<subdir>`` of the given root, or of every default root."""
        roots = [Path(root).expanduser()] if root is not None else self.default_roots()
        return [r / sub if sub else r for r in roots for sub in (subdirs or self.subdirs)]

    def fix(self) -> str:
        """How to get the dataset: ``how_to_get``, or a generic hint."""
        if self.how_to_get:
            return self.how_to_get
        hint = f"pass root=DIR holding the {self.name} files"
        return hint + (", or --set download=true" if self.downloadable else "")

    def locate(self, root: str | Path | None) -> Path:
        """The first directory searched that holds all ``files``; ``DataError`` naming the
        search and the fix."""
        searched = self.search_dirs(root)
        for directory in searched:
            if all((directory / f).exists() for f in self.files):
                return directory
        where = ", ".join(str(d) for d in searched)
        raise DataError(
            f"{self.name}: files {', '.join(self.files)} not found (searched {where}); {self.fix()}"
        )

    def check_available(self, root: str | None, download: bool) -> None:
        """``DataError`` (one line) when its files cannot be found and will not be
        downloaded; a dataset without files always passes."""
        if self.files and not (download and self.downloadable):
            self.locate(root)

    # -- reading ------------------------------------------------------------------------------

    def read(self, root: str | Path | None, seed: int, synthetic_size: int) -> Arrays:
        """Its official train and test sets (``Arrays``: uint8 ``[N, C, H, W]`` images, int64
        labels). ``seed`` and ``synthetic_size`` are for generated data."""
        raise NotImplementedError(f"dataset {self.name} reads no arrays: it loads itself")

    def load(
        self,
        root: str | None,
        *,
        val_fraction: float,
        seed: int,
        train_subset: int | None,
        test_subset: int | None,
        device: str | torch.device,
        download: bool,
        num_workers: int,
        synthetic_size: int,
        channels_last: bool,
        image_size: int,
        held_out: Sequence[int],
    ) -> Data:
        """The run's data: ``read`` (once more after ``download`` when the files are
        missing and ``download`` is asked), split and put on ``device`` in memory."""
        from trainables.data import datasets

        try:
            arrays = self.read(root, seed, synthetic_size)
        except DataError:
            if not (download and self.downloadable):
                raise
            arrays = self.read(
                str(datasets.download_dataset(self.name, root)), seed, synthetic_size
            )
        info = self.static_info(root, image_size)
        check_arrays(arrays, info)
        return in_memory(
            info,
            arrays,
            flip=self.flip,
            val_fraction=val_fraction,
            seed=seed,
            train_subset=train_subset,
            test_subset=test_subset,
            device=device,
            channels_last=channels_last,
            held_out=held_out,
        )

    def static_info(self, root: str | None = None, image_size: int = 224) -> DatasetInfo:
        """Its description without reading its images (``info``)."""
        if self.info is None:
            raise NotImplementedError(f"dataset {self.name}: give info or override static_info")
        return self.info

    # -- fetching and provenance --------------------------------------------------------------

    @property
    def downloadable(self) -> bool:
        """Whether ``download`` fetches it (a subclass that overrides ``download``)."""
        return type(self).download is not Dataset.download

    def download(self, target: Path) -> None:
        """Fetch its files into ``target`` (files already there and sound are kept). Raise
        ``OSError`` or ``RuntimeError`` when it fails."""
        raise NotImplementedError

    def source(self, root: str | None, seed: int, synthetic_size: int) -> tuple[str, str]:
        """Where it is read from and a sha256 of its source: its ``files``' bytes, or for
        generated data, of what generates it. For the run's MLflow dataset input."""
        if not self.files:
            spec = f"{self.name}:seed={seed}:size={synthetic_size}"
            return spec, hashlib.sha256(spec.encode()).hexdigest()
        directory = self.locate(root)
        return str(directory), files_digest(file_stats([directory / f for f in self.files]), True)


def check_dataset(name: str, part: object) -> None:
    """The dataset contract, checked when a dataset registers (``ValueError``: why not)."""
    if not isinstance(part, Dataset):
        raise TypeError("register a subclass of trainables.data.Dataset")
    cls = type(part)
    if cls.read is Dataset.read and cls.load is Dataset.load:
        raise ValueError("it implements neither Dataset.read nor Dataset.load")
    if cls.info is None and cls.static_info is Dataset.static_info:
        raise ValueError("it gives no info (a DatasetInfo) and does not override static_info")
    if cls.info is not None and cls.info.name != name:
        raise ValueError(f"its info is named {cls.info.name!r}, not {name!r}")
