"""Make trainables/data/frost/frost{1..5}.png, the frost textures of Fashion-MNIST-C, from the
``imagecorruptions`` package's (MIT; the same images as hendrycks/robustness, Apache-2.0).

Each texture is read as OpenCV does (RGB, alpha dropped), turned into ITU-R 601 luma (the
package's ``rgb2gray`` weights, applied to RGB) and shrunk by 0.2 * 28/32 / 1.1 with OpenCV's
bilinear ``resize(fx, fy)`` rule (no antialiasing), as ``make_cifar_c.py`` shrinks them by 0.2 for
32-px CIFAR: 28/32 keeps the frost's scale relative to the object, and the 1.1 undoes the 1.1x
enlargement the package's frost (and ``trainables.data.corruptions.frost``) applies to any texture.
frost6.jpg is not made: both draw ``randint(5)`` over the six files, so it is never used.

    pip download imagecorruptions==1.1.2 --no-deps && unzip imagecorruptions-1.1.2-*.whl
    python bench/make_frost_textures.py [--source imagecorruptions/frost] [--out trainables/data/frost]

Without ``--source`` it reads the installed package's folder (found without importing it).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.data.corruptions import FROST_FILES, IMAGE_SIZE

SOURCES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
SCALE = 0.2 * IMAGE_SIZE / 32 / 1.1


def _package_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("imagecorruptions is not installed; pass --source DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


def _linear_taps(src: int, scale: float) -> tuple[int, np.ndarray, np.ndarray]:
    """cv2.resize(fx=scale) along one axis: output size, left index and weight of the right."""
    dst = int(round(src * scale))
    f = (np.arange(dst) + 0.5) / scale - 0.5
    s = np.floor(f).astype(np.int64)
    t = f - s
    t[s < 0] = 0
    s[s < 0] = 0
    t[s >= src - 1] = 0
    s[s >= src - 1] = src - 1
    return dst, s, t


def shrink_linear(img: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear shrink of a float 2-D image by ``scale``, OpenCV's INTER_LINEAR sample points."""
    h, w = img.shape
    _, ys, yt = _linear_taps(h, scale)
    _, xs, xt = _linear_taps(w, scale)
    x1 = np.minimum(xs + 1, w - 1)
    y1 = np.minimum(ys + 1, h - 1)
    rows = img[:, xs] * (1 - xt) + img[:, x1] * xt
    return rows[ys] * (1 - yt)[:, None] + rows[y1] * yt[:, None]


def make_texture(path: Path, scale: float = SCALE) -> np.ndarray:
    """The uint8 gray texture of one of the package's frost files."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    gray = rgb @ np.array([0.2989, 0.5870, 0.1140])
    return np.clip(np.rint(shrink_linear(gray, scale)), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help="the package's frost folder")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parents[1] / "trainables/data/frost"
    )
    args = parser.parse_args()
    source = args.source or _package_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, out_name in zip(SOURCES, FROST_FILES):
        texture = make_texture(source / name)
        target = args.out / out_name
        Image.fromarray(texture, mode="L").save(target, optimize=True)
        total += target.stat().st_size
        print(f"{out_name}: {texture.shape[1]}x{texture.shape[0]} from {name}")
    print(f"{len(SOURCES)} textures, {math.ceil(total / 1024)} KB in {args.out}")


if __name__ == "__main__":
    main()
