"""trainables.data.corruptions against the ``imagecorruptions`` package, and the Fashion-MNIST-C cache."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from trainables.data import corruptions as C
from trainables.data.corruptions import CORRUPTIONS, SEVERITY_CONSTANTS, corrupt, corrupt_batch
from trainables.data.datasets import FASHION_MNIST_SYSTEM_DIR, DataError
from trainables.data.fashion_mnist_c import (
    LABELS_FILE,
    MANIFEST,
    build_fashion_mnist_c,
    corrupted_images,
    image_seeds,
)

# imagecorruptions 1.1.2's own constants (corruptions.py), ImageNet-C's, for a 32x32 image
# (elastic's sigma and max_d are 0.01 and 0.005 of the side; no affine step).
PACKAGE_CONSTANTS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": (
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ),
    "snow": (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "elastic_transform": tuple(
        (250 * k, 32 * 0.01, 32 * 0.005, 0.0) for k in (0.05, 0.065, 0.085, 0.1, 0.12)
    ),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
}

# Largest |ours - package| allowed, in grey levels (0..255), before any rounding; 0 = identical.
TOLERANCE = {
    # cv2.GaussianBlur (float32) of the disk and cv2.filter2D's DFT vs float64 + scipy.correlate.
    "defocus_blur": 1e-4,
    # cv2.cvtColor's RGB->gray in float32 (its own operation order) vs ours.
    "snow": 1e-4,
    # OpenCV's INTER_CUBIC 1.1x texture enlargement, emulated: a texture level within ~5e-4 of a
    # tie can round the other way (about 1 in 10^4 texture pixels), times c[1] <= 0.75.
    "frost": 0.75,
}
# Fraction of values allowed to differ at all (frost: the rare ties above).
DIFFERING = {"frost": 1e-3}


def _fashion_images(n: int) -> np.ndarray:
    """The first ``n`` Fashion-MNIST test images, or seeded blobs where the dataset is absent."""
    path = FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz"
    if path.exists():
        with gzip.open(path) as f:
            return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n].copy()
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:28, :28]
    blobs = [
        np.exp(-((yy - rng.uniform(8, 20)) ** 2 + (xx - rng.uniform(8, 20)) ** 2) / 40) * 255
        for _ in range(n)
    ]
    return np.clip(np.rint(blobs), 0, 255).astype(np.uint8)


TEST_IMAGES = {
    "colour": np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8),
    "fashion": np.repeat(np.pad(_fashion_images(1)[0], 2)[..., None], 3, axis=2),
}


@pytest.fixture(scope="module")
def imagecorruptions() -> Iterator[types.ModuleType]:
    """The imagecorruptions package, patched to import and run with today's libraries.

    1.1.2 (its latest) does ``from pkg_resources import resource_filename`` (setuptools >= 82 has
    no pkg_resources): a stand-in module is put in sys.modules for the import only. Its fog uses
    ``np.float_`` (gone in NumPy 2): aliased to float64 while these tests run. Its glass_blur
    calls scikit-image's ``gaussian(..., multichannel=True)`` (removed in 0.19): wrapped to
    ``channel_axis=-1``. Its impulse_noise leaves scikit-image an unseeded Generator: given one on
    np.random's own MT19937 instead, so the seeded global state drives it (the same stream our
    RandomState draws: ``Generator.random`` and ``RandomState.random_sample`` read it alike).
    """
    # the test extra installs them (make test): missing is a failure, not a skip
    importlib.import_module("cv2")
    skimage_util = importlib.import_module("skimage.util")
    added = "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None
    if added:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(modname: str, rel: str) -> str:
            return os.path.normpath(
                os.path.join(os.path.dirname(sys.modules[modname].__file__), rel)
            )

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions.corruptions as ic
    finally:
        if added:
            del sys.modules["pkg_resources"]

    gaussian = ic.gaussian
    random_noise = skimage_util.random_noise

    def gaussian_channel_axis(
        image: Any, sigma: Any = 1.0, multichannel: Any = None, **kw: Any
    ) -> Any:
        if multichannel:
            kw.setdefault("channel_axis", -1)
        return gaussian(image, sigma=sigma, **kw)

    def random_noise_global(image: Any, mode: str = "gaussian", rng: Any = None, **kw: Any) -> Any:
        bits = np.random.mtrand._rand._bit_generator  # type: ignore[attr-defined]
        return random_noise(image, mode=mode, rng=np.random.Generator(bits), **kw)

    with pytest.MonkeyPatch.context() as mp:
        if not hasattr(np, "float_"):
            mp.setattr(np, "float_", np.float64, raising=False)
        mp.setattr(ic, "gaussian", gaussian_channel_axis)
        mp.setattr(skimage_util, "random_noise", random_noise_global)
        yield ic


@pytest.fixture(scope="module")
def package_frost() -> list[np.ndarray]:
    """The package's frost1..frost5 as RGB arrays (PIL decodes them as cv2.imread does)."""
    spec = importlib.util.find_spec("imagecorruptions")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    names = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
    return [np.asarray(Image.open(folder / n).convert("RGB")) for n in names]


@pytest.mark.parametrize("image", sorted(TEST_IMAGES))
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_as_the_package(
    imagecorruptions: types.ModuleType,
    package_frost: list[np.ndarray],
    name: str,
    severity: int,
    image: str,
) -> None:
    x = TEST_IMAGES[image]
    seed = 1000 * severity + CORRUPTIONS.index(name)
    np.random.seed(seed)
    theirs = np.asarray(getattr(imagecorruptions, name)(Image.fromarray(x), severity))
    c = PACKAGE_CONSTANTS[name][severity - 1]
    rng = np.random.RandomState(seed)
    ours = C.frost(x, c, rng, package_frost) if name == "frost" else getattr(C, name)(x, c, rng)
    assert ours.shape == theirs.shape == x.shape
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    assert diff.max() <= TOLERANCE.get(name, 0.0)
    assert np.mean(diff > 1e-4) <= DIFFERING.get(name, 0.0) or name in ("defocus_blur", "snow")


def _make_cifar_c_elastic(image: np.ndarray, c: tuple[float, float, float]) -> np.ndarray:
    """``make_cifar_c.py``'s elastic_transform (hendrycks/robustness), c = IMSIZE * its factors."""
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    image = np.array(image, dtype=np.float32) / 255.0
    shape = image.shape
    shape_size = shape[:2]
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32(
        [
            center_square + square_size,
            [center_square[0] + square_size, center_square[1] - square_size],
            center_square - square_size,
        ]
    )
    pts2 = pts1 + np.random.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    M = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, M, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    field = [
        (
            gaussian(np.random.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3)
            * c[0]
        )
        for _ in range(2)
    ]
    dx, dy = (f.astype(np.float32) for f in field)
    if image.ndim == 2:
        x, y = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]))
        indices: tuple[np.ndarray, ...] = ((y + dy).reshape(-1, 1), (x + dx).reshape(-1, 1))
    else:
        dx, dy = dx[..., None], dy[..., None]
        x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
        indices = ((y + dy).reshape(-1, 1), (x + dx).reshape(-1, 1), z.reshape(-1, 1))
    warped = map_coordinates(image, indices, order=1, mode="reflect").reshape(shape)
    return np.clip(warped, 0, 1) * 255


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_elastic_is_make_cifar_c_s(severity: int) -> None:
    """The package has no affine step; CIFAR-10-C's elastic (with cv2, as its script) is the
    reference for it. Tolerance: cv2.warpAffine (float32) vs map_coordinates, ~1e-3 levels."""
    importlib.import_module("cv2")
    importlib.import_module("skimage")
    factors = [
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ]
    for x in (TEST_IMAGES["colour"], _fashion_images(1)[0]):
        size = x.shape[0]
        a, s, f = factors[severity - 1]
        np.random.seed(severity)
        theirs = _make_cifar_c_elastic(x, (size * a, size * s, size * f))
        c = C.severity_constants(size)["elastic_transform"][severity - 1]
        ours = C.elastic_transform(x, c, np.random.RandomState(severity))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-3)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_gray_is_the_first_channel_of_stacked(name: str) -> None:
    """2-D handling: the first channel of the 3-channel result, except where documented.

    The noises draw one value per pixel instead of three, so there the 2-D result matches the
    stacked one in distribution only: its noise has the same variance as any one channel's."""
    x = _fashion_images(1)[0]
    c = SEVERITY_CONSTANTS[name][2]
    gray = getattr(C, name)(x, c, np.random.RandomState(7))
    stacked = getattr(C, name)(np.repeat(x[..., None], 3, 2), c, np.random.RandomState(7))
    assert gray.shape == x.shape
    if name in ("gaussian_noise", "shot_noise", "impulse_noise"):
        many = np.stack([getattr(C, name)(x, c, np.random.RandomState(s)) for s in range(30)])
        gray_sd, channel_sd = many.std(axis=0).mean(), stacked.std(axis=2).mean()
        assert gray_sd > 0 and channel_sd > 0
        assert np.var(many - x) == pytest.approx(np.var(stacked - x[..., None]), rel=0.2)
    elif name in ("frost", "jpeg_compression"):
        assert np.abs(gray.astype(float) - stacked[..., 0]).mean() < 3  # gray texture; 2-D JPEG
    else:
        atol = max(TOLERANCE.get(name, 0.0), 1e-9)  # contrast: a 3-channel mean's rounding
        np.testing.assert_allclose(gray, stacked[..., 0], rtol=0, atol=atol)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_is_deterministic_uint8(name: str) -> None:
    x = _fashion_images(2)
    a = corrupt(x[0], name, 4, seed=11)
    assert a.dtype == np.uint8 and a.shape == (28, 28)
    assert np.array_equal(a, corrupt(x[0], name, 4, seed=11))
    batch = corrupt_batch(x, name, 4, [11, 12])
    assert np.array_equal(batch[0], a)
    assert np.array_equal(batch[1], corrupt(x[1], name, 4, seed=12))
    if name in ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "fog", "snow"):
        assert not np.array_equal(a, corrupt(x[0], name, 4, seed=12))


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "defocus_blur", "contrast"])
def test_severity_is_monotonic(name: str) -> None:
    x = _fashion_images(20)
    change = [
        np.mean(
            [np.abs(corrupt(xi, name, s, i).astype(float) - xi).mean() for i, xi in enumerate(x)]
        )
        for s in range(1, 6)
    ]
    assert all(a < b for a, b in zip(change, change[1:])), change


def test_constants_are_cifar_10_c_at_28_px() -> None:
    assert set(SEVERITY_CONSTANTS) == set(CORRUPTIONS)
    assert all(len(v) == 5 for v in SEVERITY_CONSTANTS.values())
    assert SEVERITY_CONSTANTS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert SEVERITY_CONSTANTS["elastic_transform"][1] == (28 * 0.05, 28 * 0.2, 1.0, 28 * 0.07)
    assert C.severity_constants(32)["elastic_transform"][0] == (0.0, 0.0, 1.0, 32 * 0.08)


def test_bundled_frost_textures() -> None:
    sizes = [os.path.getsize(C.FROST_DIR / n) for n in C.FROST_FILES]
    assert sum(sizes) < 300_000
    for i in range(len(C.FROST_FILES)):
        texture = C._bundled_texture(i, (28, 28))
        assert texture.dtype == np.uint8 and texture.ndim == 2 and min(texture.shape) > 28


def test_image_seeds_are_stable() -> None:
    assert np.array_equal(image_seeds(3, 4, 5, 40)[:20], image_seeds(3, 4, 5, 20))
    assert len({int(s) for s in image_seeds(0, 0, 1, 1000)}) == 1000
    assert not np.array_equal(image_seeds(0, 0, 1, 5), image_seeds(0, 0, 2, 5))


def test_cache_builds_reuses_and_detects_a_changed_file(tmp_path: Path) -> None:
    x = _fashion_images(20)
    y = np.arange(20) % 10
    names = ("gaussian_noise", "glass_blur", "frost")
    directory = build_fashion_mnist_c(x, y, tmp_path / "c", names, seed=5)
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["n"] == 20 and manifest["seed"] == 5 and manifest["corruptions"] == list(names)
    assert sorted(manifest["files"]) == sorted([f"{n}.npy" for n in names] + [LABELS_FILE])
    glass = np.load(directory / "glass_blur.npy")
    assert glass.dtype == np.uint8 and glass.shape == (100, 28, 28)
    assert np.array_equal(glass, corrupted_images(x, "glass_blur", seed=5))
    k = CORRUPTIONS.index("glass_blur")
    assert np.array_equal(
        glass[47], corrupt(x[7], "glass_blur", 3, int(image_seeds(5, k, 3, 20)[7]))
    )
    labels = np.load(directory / LABELS_FILE)
    assert labels.dtype == np.int64 and np.array_equal(labels, np.tile(y, 5))

    mtimes = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    build_fashion_mnist_c(x, y, directory, names, seed=5)
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == mtimes

    path = directory / "glass_blur.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="glass_blur.npy") as info:
        build_fashion_mnist_c(x, y, directory, names, seed=5)
    assert "\n" not in str(info.value) and "delete" in str(info.value)


def test_cache_regenerates_for_other_arguments(tmp_path: Path) -> None:
    x = _fashion_images(6)
    y = np.arange(6)
    directory = build_fashion_mnist_c(x, y, tmp_path, ("contrast", "fog"), severities=(1, 5))
    fog = np.load(tmp_path / "fog.npy")
    build_fashion_mnist_c(x, y, tmp_path, ("fog",), severities=(1, 5), seed=1)
    assert not (tmp_path / "contrast.npy").exists()
    assert json.loads((directory / MANIFEST).read_text())["seed"] == 1
    assert not np.array_equal(np.load(tmp_path / "fog.npy"), fog)
    (tmp_path / "fog.npy").unlink()
    build_fashion_mnist_c(x, y, tmp_path, ("fog",), severities=(1, 5), seed=1)
    assert (tmp_path / "fog.npy").exists()


@pytest.mark.slow
def test_workers_write_the_same_files(tmp_path: Path) -> None:
    x = _fashion_images(8)
    y = np.arange(8)
    names = ("shot_noise", "snow", "elastic_transform")
    one = build_fashion_mnist_c(x, y, tmp_path / "one", names, workers=1)
    two = build_fashion_mnist_c(x, y, tmp_path / "two", names, workers=2)
    files = [json.loads((d / MANIFEST).read_text())["files"] for d in (one, two)]
    assert files[0] == files[1]
