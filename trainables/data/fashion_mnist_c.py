"""Fashion-MNIST-C: Fashion-MNIST test images under the 15 corruptions of ``trainables.data.corruptions``
at five severities, generated once into a directory in CIFAR-10-C's layout and checked by sha256.

Layout: one ``<corruption>.npy`` per corruption, uint8 ``[S*N, H, W]`` (severity 1's N images,
then severity 2's, ...), ``labels.npy`` (int64, the N labels repeated per severity) and
``manifest.json`` (format, seed, N, corruptions, severities, the input's and the constants'
sha256, and the sha256 of every .npy). Image i of corruption k at severity s is
``corrupt(images[i], name, s, seed=image_seeds(seed, k, s, N)[i])``, k the index in
``CORRUPTIONS`` (so a subset of corruptions gives the same images).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from trainables.atomic import atomic_write, atomic_write_text
from trainables.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt_batch, severity_constants
from trainables.data.datasets import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS_FILE = "labels.npy"
_CHUNK = 1000  # images corrupted together: bounds the float intermediates to ~10 MB each


def image_seeds(seed: int, corruption_index: int, severity: int, n: int) -> np.ndarray:
    """The seed of each of ``n`` images: word 0 of ``SeedSequence([seed, k, severity, i])``."""
    return np.array(
        [
            np.random.SeedSequence([seed, corruption_index, severity, i]).generate_state(1)[0]
            for i in range(n)
        ],
        dtype=np.uint32,
    )


def corrupted_images(
    images: np.ndarray, name: str, severities: Sequence[int] = SEVERITIES, seed: int = 0
) -> np.ndarray:
    """One corruption's uint8 array ``[len(severities) * N, H, W]``, severity-major."""
    n = len(images)
    k = CORRUPTIONS.index(name)
    out = np.empty((len(severities) * n,) + images.shape[1:], dtype=np.uint8)
    for j, severity in enumerate(severities):
        seeds = image_seeds(seed, k, severity, n)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            out[j * n + start : j * n + stop] = corrupt_batch(
                images[start:stop], name, severity, seeds[start:stop]
            )
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically (temporary file, then rename); its sha256."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return _sha256(data)


def _build_one(
    images: np.ndarray, name: str, severities: Sequence[int], seed: int, directory: Path
) -> tuple[str, str]:
    array = corrupted_images(images, name, severities, seed)
    return f"{name}.npy", _save(directory / f"{name}.npy", array)


def _key(
    images: np.ndarray,
    labels: np.ndarray,
    corruptions: Sequence[str],
    severities: Sequence[int],
    seed: int,
) -> dict[str, Any]:
    constants = severity_constants(images.shape[1])
    used = {name: constants[name] for name in corruptions}
    return {
        "format": FORMAT_VERSION,
        "seed": seed,
        "n": len(images),
        "image_shape": list(images.shape[1:]),
        "corruptions": list(corruptions),
        "severities": list(severities),
        "images_sha256": _sha256(np.ascontiguousarray(images).tobytes()),
        "labels_sha256": _sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()),
        "constants_sha256": _sha256(repr(used).encode()),
    }


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' table")
    except (OSError, ValueError) as e:
        raise DataError(
            f"Fashion-MNIST-C manifest {path} is unreadable ({e}); delete {path.parent} to "
            "regenerate it"
        ) from None
    return manifest


def _verified(directory: Path, manifest: dict[str, Any]) -> bool:
    """True if every listed file is there with its sha256; False if one is missing."""
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return False
        if _file_sha256(path) != expected:
            raise _changed(path, directory)
    return True


def _changed(path: Path, directory: Path) -> DataError:
    return DataError(
        f"Fashion-MNIST-C file {path} changed since it was generated (its sha256 is not "
        f"the one in {MANIFEST}); delete {directory} to regenerate it"
    )


def check_cached(directory: Path) -> None:
    """Before any work: a one-line ``DataError`` when ``directory`` holds a Fashion-MNIST-C
    (its manifest) with a file whose sha256 is not the manifest's, or an unreadable manifest
    (the build would refuse either, but only when a trial evaluates it, after training).
    Nothing there, or files missing (the build regenerates them): nothing to say. Hashes every
    file present (about a second for the full 588 MB)."""
    directory = Path(directory)
    manifest = _read_manifest(directory / MANIFEST)
    if manifest is None:
        return
    for name, expected in manifest["files"].items():
        path = directory / str(name)
        if path.parent == directory and path.is_file() and _file_sha256(path) != expected:
            raise _changed(path, directory)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("numpy", "scipy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _check_inputs(
    images: np.ndarray, labels: np.ndarray, corruptions: Sequence[str], severities: Sequence[int]
) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected uint8 images (N, H, H), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"expected {len(images)} integer labels, got {labels.dtype} {labels.shape}"
        )
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown or len(set(corruptions)) != len(corruptions) or not corruptions:
        raise ValueError(
            f"corruptions must be distinct names among {CORRUPTIONS}, got {corruptions}"
        )
    if (
        not severities
        or len(set(severities)) != len(severities)
        or not set(severities) <= set(SEVERITIES)
    ):
        raise ValueError(f"severities must be distinct among 1..5, got {severities}")


def build_fashion_mnist_c(
    images: np.ndarray,
    labels: np.ndarray,
    directory: Path,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Generate Fashion-MNIST-C of ``images`` (N, 28, 28) uint8 into ``directory``, or reuse it.

    Reuse: when ``manifest.json`` was written for the same arguments (seed, images, labels,
    corruptions, severities, constants, format), every file it lists is checked against its
    sha256 and nothing is generated. A listed file whose sha256 differs raises a one-line
    ``DataError`` naming it (delete the directory to regenerate). A manifest for other
    arguments, or a listed file that is missing, means regenerating in place: the old manifest is
    removed first, then each file is written under a temporary name and renamed into place, the
    manifest last, so an interrupted build is regenerated, never trusted. ``workers`` > 1
    generates corruptions in that many processes. Returns ``directory``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    corruptions = tuple(corruptions)
    severities = tuple(int(s) for s in severities)
    _check_inputs(images, labels, corruptions, severities)
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    key = _key(images, labels, corruptions, severities, seed)
    old = _read_manifest(manifest_path)
    if old is not None and {k: old.get(k) for k in key} == key and _verified(directory, old):
        return directory

    directory.mkdir(parents=True, exist_ok=True)
    if old is not None:
        manifest_path.unlink()
        for name in old["files"]:
            stale = directory / name
            if name.endswith(".npy") and name != LABELS_FILE and stale.parent == directory:
                stale.unlink(missing_ok=True)

    files: dict[str, str] = {}
    if workers > 1 and len(corruptions) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(corruptions)), mp_context=context) as pool:
            jobs = [
                pool.submit(_build_one, images, name, severities, seed, directory)
                for name in corruptions
            ]
            files.update(job.result() for job in jobs)
    else:
        files.update(_build_one(images, n, severities, seed, directory) for n in corruptions)
    labels_all = np.tile(labels.astype(np.int64), len(severities))
    files[LABELS_FILE] = _save(directory / LABELS_FILE, labels_all)

    manifest = dict(key, files={n: files[n] for n in sorted(files)}, generator=_versions())
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return directory
