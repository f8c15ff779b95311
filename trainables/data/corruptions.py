"""The 15 common corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019) for small images.

Each corruption is the algorithm of the ``imagecorruptions`` package (bethgelab, 1.1.2, MIT),
rewritten with numpy, scipy and PIL in place of OpenCV and scikit-image, and fed the 32-pixel
constants of Hendrycks' ``make_cifar_c.py`` (``hendrycks/robustness``, Apache-2.0), the script
that made CIFAR-10-C. The package's own constants are ImageNet's (224 px): at 28 px its blur,
elastic and pixelate levels flatten an object, and its noise levels are 2-4x CIFAR-10-C's.

Every function ``f(x, c, rng)`` takes an HxW (grayscale) or HxWx3 image in [0, 255] (uint8 or
float), one severity's constant ``c`` and a ``numpy.random.RandomState`` from which it draws all
its randomness, in the package's order: seeding ``np.random`` and calling the package's function
with the same ``c`` gives the same result (``tests/test_corruptions.py`` checks this for every
corruption and severity). It returns floats in [0, 255] (uint8 for pixelate and jpeg), as the
package does. ``corrupt`` turns one uint8 HxW image into its uint8 corruption, rounding (the
package and CIFAR-10-C truncate with ``np.uint8``, which darkens by half a level on average).

Grayscale is handled in 2-D throughout, never by averaging channels. The blurs, zoom, snow,
fog, brightness, contrast, elastic and pixelate give the first channel of their result on the
image stacked to 3 channels (how the package's ``corrupt`` treats a gray image). The three
noises draw one value per pixel, with the variance each channel of a stacked image would get.
``jpeg_compression`` follows the package's own 2-D branch (encode as RGB, decode to luma), and
``frost`` blends a gray frost texture (ITU-R 601 luma of the package's RGB texture; the package's
2-D branch applies those weights to OpenCV's BGR order, which swaps the red and blue weights).

Adaptations to 28x28 grayscale (constants in ``SEVERITY_CONSTANTS``; the 32s of
``make_cifar_c.py`` become the image size, everything in pixels is kept as CIFAR-10-C's, so
pixel-scale effects are 32/28 = 1.14x larger relative to the object than in CIFAR-10-C):

- motion_blur, snow: CIFAR-10-C used ImageMagick's motion blur (Wand); the package's numpy
  ``_motion_blur`` (a half-Gaussian kernel of width 2*radius+1 along the angle, edges
  replicated) stands in for it with the same (radius, sigma). The package's motion_blur fails
  on 2-D input; here a 2-D image is blurred directly.
- glass_blur: the package's pixel "swap" on an HxWx3 array is a copy (``x[h, w], x[h', w'] =
  x[h', w'], x[h, w]`` assigns through views), and ImageNet-C and CIFAR-10-C were made that way;
  a 2-D image gets the same copy, not a true swap. With delta 1 (all CIFAR levels) no copy reads
  a pixel written earlier in the same pass, so a pass is one vectorised gather.
- frost: the package reads a full-size texture (315x560 to 600x900), enlarges it by 1.1
  (OpenCV INTER_CUBIC) and crops the image size, so a 28-px crop shows a tiny patch of frost.
  ``make_cifar_c.py`` first shrinks the texture by 0.2 (cv2.resize, bilinear, no antialias).
  The bundled ``trainables/data/frost/frost{1..5}.png`` are the package's textures as 601 luma,
  shrunk the same way by 0.2 * 28/32 / 1.1, so that after the package's own 1.1 enlargement
  the frost has CIFAR-10-C's scale relative to the object (made by
  ``bench/make_frost_textures.py``). frost6.jpg is never drawn (the package and CIFAR-10-C draw
  ``randint(5)``), so it is not bundled.
- fog: the plasma map's size is the next power of 2 of the image side (32 at 28 px), as in both.
- elastic_transform: ``make_cifar_c.py`` re-parametrises it with IMSIZE=32 and adds a random
  affine warp (cv2.warpAffine, reflect-101 border) before the smoothed displacement field; the
  package has no affine step and derives its constants from the image size. One algorithm
  covers both: ``c = (alpha, sigma, max_d, affine)``, with the field
  ``gaussian(uniform(-max_d, max_d), sigma, reflect, truncate=3) * alpha`` and, when
  ``affine > 0``, CIFAR's warp of three points jittered by ``uniform(-affine, affine)`` first.
  CIFAR's levels are ``(IMSIZE*a, IMSIZE*s, 1, IMSIZE*f)`` with IMSIZE = 28; the package's are
  ``(250*k, 0.01*H, 0.005*H, 0)``.
- pixelate: the package shrinks with PIL BOX and enlarges with NEAREST (``make_cifar_c.py``
  enlarges with BOX); the package is followed, at ``int(28 * c)`` px.
- jpeg_compression, brightness, contrast, noise, defocus, zoom: as the package, CIFAR levels.

Where OpenCV cannot be matched bit for bit without it: defocus_blur's 3x3 anti-alias Gaussian
of the disk (cv2.GaussianBlur in float32) is computed in float64, and cv2.filter2D's
reflect-101 correlation is ``scipy.ndimage.correlate(mode='mirror')`` (OpenCV uses a DFT for a
17x17 kernel), so results agree to ~1e-6 of a level; snow's cv2 RGB->gray of a colour image is
computed in float32 in one fixed order (~1e-5 of a level); frost's 1.1x INTER_CUBIC
enlargement is emulated (OpenCV's taps and A = -0.75 weights, replicated border, float32 sums)
and differs from OpenCV 5.1's by one level where a value is within ~5e-4 of a tie, about one
texture pixel in 10^4; elastic's cv2.warpAffine is bilinear ``map_coordinates(mode='mirror')``
at the inverse map's float coordinates, as OpenCV 5.1 does it (to ~1e-6; OpenCV 3, which made
CIFAR-10-C, rounded coordinates to 1/32 px).

Licences: the algorithms are adapted from ``imagecorruptions`` (Copyright (c) 2019 Bethge Lab;
MIT in the GitHub repository, while the 1.1.2 wheel ships an Apache-2.0 LICENSE) and
``hendrycks/robustness`` (Apache-2.0). The frost textures are the same images in both and keep
those licences (frost2 and frost3 have identical pixels there too).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SIZE = 28
FROST_DIR = Path(__file__).with_name("frost")
FROST_FILES = tuple(f"frost{i}.png" for i in range(1, 6))

Batch = Callable[[np.ndarray, Any, Sequence[np.random.RandomState]], np.ndarray]


def _zoom_levels(step_end: float) -> tuple[float, ...]:
    return tuple(np.arange(1, step_end, 0.01).tolist())


def severity_constants(size: int = IMAGE_SIZE) -> dict[str, tuple[Any, ...]]:
    """The five constants per corruption of ``make_cifar_c.py``, its 32s replaced by ``size``.

    Only elastic_transform's depend on the size (IMSIZE); pixelate's fraction, fog's map and
    frost's crop take the image size inside the algorithm.
    """
    s = float(size)
    return {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": tuple(_zoom_levels(e) for e in (1.06, 1.11, 1.16, 1.21, 1.26)),
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": tuple(
            (s * a, s * sg, 1.0, s * af)
            for a, sg, af in (
                (0, 0, 0.08),
                (0.05, 0.2, 0.07),
                (0.08, 0.06, 0.06),
                (0.1, 0.04, 0.05),
                (0.1, 0.03, 0.03),
            )
        ),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
    }


SEVERITY_CONSTANTS: dict[str, tuple[Any, ...]] = severity_constants(IMAGE_SIZE)


# ---------------------------------------------------------------------------------------------
# Helpers. A batch is (N, H, W) or (N, H, W, 3); the spatial axes are 1 and 2. Batched code
# computes every image exactly as it would alone (element-wise ops, per-line filters, per-image
# reductions), so a batch gives the same bytes as its images one at a time.


def _spatial(xs: np.ndarray, value: Any, other: Any) -> tuple[Any, ...]:
    """A per-axis argument: ``value`` on the spatial axes, ``other`` on batch and channel."""
    return (other, value, value) + (other,) * (xs.ndim - 3)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The package's anti-aliased disk kernel (float32); cv2.GaussianBlur is done in float64."""
    if radius <= 8:
        grid = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        grid = np.arange(-radius, radius + 1)
        ksize = 5
    xx, yy = np.meshgrid(grid, grid)
    aliased = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    aliased /= np.sum(aliased)
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g /= g.sum()
    out = ndimage.correlate1d(aliased.astype(np.float64), g, axis=0, mode="mirror")
    out = ndimage.correlate1d(out, g, axis=1, mode="mirror")
    return out.astype(np.float32)


def _trim_zero_border(kernel: np.ndarray) -> np.ndarray:
    """The kernel without all-zero outer rings (it stays centred; zero taps add nothing)."""
    while kernel.shape[0] > 1 and not (
        kernel[0].any() or kernel[-1].any() or kernel[:, 0].any() or kernel[:, -1].any()
    ):
        kernel = kernel[1:-1, 1:-1]
    return kernel


def _plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.RandomState) -> np.ndarray:
    """The package's diamond-square height map in [0, 1]."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + (ulgrid + np.roll(ulgrid, -1, axis=1))
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + (ulgrid + np.roll(ulgrid, -1, axis=0))
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def _clipped_zoom(xs: np.ndarray, zoom_factor: float) -> np.ndarray:
    """The package's clipped_zoom on a batch: zoom the central crop; larger than the input."""
    h, w = xs.shape[1:3]
    ch0 = int(np.ceil(h / float(zoom_factor)))
    top0 = (h - ch0) // 2
    ch1 = int(np.ceil(w / float(zoom_factor)))
    top1 = (w - ch1) // 2
    crop = xs[:, top0 : top0 + ch0, top1 : top1 + ch1]
    return ndimage.zoom(crop, _spatial(xs, zoom_factor, 1), order=1)


def _motion_offsets(radius: int, angle: float, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The (dy, dx) of each tap of the package's ``_motion_blur`` until it leaves the image."""
    width = radius * 2 + 1
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    offsets = []
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if np.abs(dy) >= shape[0] or np.abs(dx) >= shape[1]:
            break
        offsets.append((dy, dx))
    return offsets


def _motion_blur_batch(
    xs: np.ndarray, radius: int, sigma: float, angles: Sequence[float]
) -> np.ndarray:
    """The package's ``_motion_blur`` of each image at its own angle (float64).

    Its ``shift(x, dx, dy)`` is ``x[clip(row - dy), clip(col - dx)]``, so each tap is a gather.
    """
    width = radius * 2 + 1
    t = np.arange(width)
    kernel = (np.exp(-(t**2) / (2 * (sigma**2)))) / (np.sqrt(2 * np.pi) * sigma)
    kernel = kernel / np.sum(kernel)
    n, h, w = xs.shape[:3]
    taps = [_motion_offsets(radius, a, (h, w)) for a in angles]
    rows, cols = np.arange(h), np.arange(w)
    nidx = np.arange(n)[:, None, None]
    blurred: np.ndarray = np.zeros(xs.shape, dtype=np.float32)
    for i in range(width):
        active = np.array([i < len(tp) for tp in taps])
        if not active.any():
            break
        dy = np.array([tp[i][0] if i < len(tp) else 0 for tp in taps])
        dx = np.array([tp[i][1] if i < len(tp) else 0 for tp in taps])
        r = np.clip(rows[None, :] - dy[:, None], 0, h - 1)[:, :, None]
        c = np.clip(cols[None, :] - dx[:, None], 0, w - 1)[:, None, :]
        shifted = xs[nidx, r, c]
        if active.all():
            blurred = blurred + kernel[i] * shifted
        else:
            blurred = blurred.astype(np.result_type(blurred, kernel[i] * shifted[:1]))
            blurred[active] = blurred[active] + kernel[i] * shifted[active]
    return blurred


def _rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's rgb2hsv (float64, last axis)."""
    out = np.empty_like(rgb)
    out_v = rgb.max(-1)
    delta = np.ptp(rgb, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_s = delta / out_v
        out_s[delta == 0.0] = 0.0
        idx = rgb[..., 0] == out_v
        out[idx, 0] = (rgb[idx, 1] - rgb[idx, 2]) / delta[idx]
        idx = rgb[..., 1] == out_v
        out[idx, 0] = 2.0 + (rgb[idx, 2] - rgb[idx, 0]) / delta[idx]
        idx = rgb[..., 2] == out_v
        out[idx, 0] = 4.0 + (rgb[idx, 0] - rgb[idx, 1]) / delta[idx]
        out_h = (out[..., 0] / 6.0) % 1.0
    out_h[delta == 0.0] = 0.0
    out[..., 0] = out_h
    out[..., 1] = out_s
    out[..., 2] = out_v
    out[np.isnan(out)] = 0
    return out


def _hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's hsv2rgb (float64, last axis)."""
    hi = np.floor(hsv[..., 0] * 6)
    f = hsv[..., 0] * 6 - hi
    p = hsv[..., 2] * (1 - hsv[..., 1])
    q = hsv[..., 2] * (1 - f * hsv[..., 1])
    t = hsv[..., 2] * (1 - (1 - f) * hsv[..., 1])
    v = hsv[..., 2]
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    choices = np.stack(
        [
            np.stack((v, t, p), axis=-1),
            np.stack((q, v, p), axis=-1),
            np.stack((p, v, t), axis=-1),
            np.stack((p, q, v), axis=-1),
            np.stack((t, p, v), axis=-1),
            np.stack((v, p, q), axis=-1),
        ]
    )
    return np.choose(hi, choices)


def _rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """The package's rgb2gray (ITU-R 601 luma), applied here to RGB order."""
    return np.dot(rgb[..., :3], [0.2989, 0.5870, 0.1140])


def _cubic_taps(dst: int, src: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (dst, 4) and float32 weights of OpenCV's INTER_CUBIC resize (A = -0.75)."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    t = (f - s).astype(np.float32)
    a = np.float32(-0.75)
    one = np.float32(1)
    w0 = ((a * (t + one) - 5 * a) * (t + one) + 8 * a) * (t + one) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + one
    w2 = ((a + 2) * (one - t) - (a + 3)) * (one - t) * (one - t) + one
    w3 = one - w0 - w1 - w2
    idx = np.clip(s.astype(np.int64)[:, None] + np.arange(-1, 3), 0, src - 1)
    return idx, np.stack([w0, w1, w2, w3], axis=1)


def _resize_cubic(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(img, (width, height), interpolation=INTER_CUBIC) of a uint8 image: OpenCV's
    taps and weights, replicated border, summed in float32 and rounded. Matches OpenCV 5.1
    except where a value is within ~5e-4 of x.5 (about 1 pixel in 10^4), off by one there."""
    xi, xw = _cubic_taps(width, img.shape[1])
    yi, yw = _cubic_taps(height, img.shape[0])
    extra = (1,) * (img.ndim - 2)
    src = img.astype(np.float32)[:, xi]
    rows = src[:, :, 0] * xw[:, 0].reshape((-1,) + extra)
    for k in range(1, 4):
        rows = rows + src[:, :, k] * xw[:, k].reshape((-1,) + extra)
    acc = rows[yi[:, 0]] * yw[:, 0].reshape((-1, 1) + extra)
    for k in range(1, 4):
        acc = acc + rows[yi[:, k]] * yw[:, k].reshape((-1, 1) + extra)
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def _frost_rescaled(texture: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The package's frost texture scaling: at least the image size, then 1.1x (INTER_CUBIC)."""
    th, tw = texture.shape[:2]
    h, w = shape
    if th >= h and tw >= w:
        factor = 1.0
    elif th < h and tw >= w:
        factor = h / th
    elif th >= h and tw < w:
        factor = w / tw
    else:
        factor = float(np.maximum(h / th, w / tw))
    factor *= 1.1
    return _resize_cubic(texture, int(np.ceil(tw * factor)), int(np.ceil(th * factor)))


@cache
def _bundled_texture(index: int, shape: tuple[int, int]) -> np.ndarray:
    with Image.open(FROST_DIR / FROST_FILES[index]) as im:
        texture = np.asarray(im.convert("L"))
    out = _frost_rescaled(texture, shape)
    out.setflags(write=False)
    return out


def _affine_matrices(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """cv2.getAffineTransform of each (3, 2) point pair, inverted as cv2.warpAffine does."""
    n = len(src)
    a = np.zeros((n, 6, 6))
    a[:, 0::2, 0:2] = src
    a[:, 0::2, 2] = 1
    a[:, 1::2, 3:5] = src
    a[:, 1::2, 5] = 1
    m = np.linalg.solve(a, dst.reshape(n, 6).astype(np.float64)[..., None])[..., 0]
    d = m[:, 0] * m[:, 4] - m[:, 1] * m[:, 3]
    d = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0)
    inv = np.empty_like(m)
    inv[:, 0] = m[:, 4] * d
    inv[:, 1] = m[:, 1] * -d
    inv[:, 3] = m[:, 3] * -d
    inv[:, 4] = m[:, 0] * d
    inv[:, 2] = -inv[:, 0] * m[:, 2] - inv[:, 1] * m[:, 5]
    inv[:, 5] = -inv[:, 3] * m[:, 2] - inv[:, 4] * m[:, 5]
    return inv


def _warp_affine(images: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """cv2.warpAffine(float32 image, M, INTER_LINEAR, BORDER_REFLECT_101) of each image, given
    the inverse maps: bilinear at float source coordinates, as OpenCV 5 computes them (OpenCV 3,
    which made CIFAR-10-C, rounded them to 1/32 px)."""
    n, h, w = images.shape[:3]
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    m = [inv[:, k][:, None, None] for k in range(6)]
    coords = [
        np.broadcast_to(np.arange(n)[:, None, None], (n, h, w)).astype(np.float64),
        m[3] * xx + m[4] * yy + m[5],
        m[0] * xx + m[1] * yy + m[2],
    ]
    if images.ndim == 4:
        coords = [np.repeat(c[..., None], images.shape[3], axis=3) for c in coords]
        coords.append(np.broadcast_to(np.arange(images.shape[3]), coords[0].shape))
    return ndimage.map_coordinates(images, np.stack(coords), order=1, mode="mirror")


# ---------------------------------------------------------------------------------------------
# The corruptions on a batch ``xs`` with one RandomState per image.


def _gaussian_noise(xs: np.ndarray, c: float, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    x = xs / 255.0
    noise = np.stack([r.normal(size=x.shape[1:], scale=c) for r in rngs])
    return np.clip(x + noise, 0, 1) * 255


def _shot_noise(xs: np.ndarray, c: float, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    x = xs / 255.0
    counts = np.stack([r.poisson(xi * c) for r, xi in zip(rngs, x)])
    return np.clip(counts / float(c), 0, 1) * 255


def _impulse_noise(xs: np.ndarray, c: float, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    # scikit-image's random_noise(mode='s&p', amount=c, salt_vs_pepper=0.5): its Bernoulli draws
    # `rng.random(shape) <= p`, here from each image's RandomState (the package leaves
    # scikit-image an unseeded Generator).
    x = xs / 255.0
    out = x.copy()
    shape = x.shape[1:]
    for i, r in enumerate(rngs):
        # scikit-image's _bernoulli draws nothing when p is 0 or 1.
        flipped = np.full(shape, c == 1) if c in (0, 1) else r.random_sample(shape) <= c
        salted = r.random_sample(shape) <= 0.5
        out[i][flipped & salted] = 1
        out[i][flipped & ~salted] = 0
    return np.clip(out, 0, 1) * 255


def _defocus_blur(xs: np.ndarray, c: tuple[float, float], rngs: Sequence[Any]) -> np.ndarray:
    x = xs / 255.0
    kernel = _trim_zero_border(_disk(radius=c[0], alias_blur=c[1])).astype(np.float64)
    kernel = kernel.reshape((1,) + kernel.shape + (1,) * (x.ndim - 3))
    return np.clip(ndimage.correlate(x, kernel, mode="mirror"), 0, 1) * 255


def _glass_blur(
    xs: np.ndarray, c: tuple[float, int, int], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    sigma, delta, iterations = c
    sig = _spatial(xs, sigma, 0)
    x = np.uint8(ndimage.gaussian_filter(xs / 255.0, sig, mode="nearest", truncate=4.0) * 255)
    n, h, w = x.shape[:3]
    hs = np.arange(h - delta, delta, -1)
    ws = np.arange(w - delta, delta, -1)
    # dx, dy per pass and position, in the package's loop order (one draw of 2 per position).
    draws = np.stack(
        [r.randint(-delta, delta, size=(iterations, len(hs), len(ws), 2)) for r in rngs]
    )
    nidx = np.arange(n)
    for it in range(iterations):
        dx, dy = draws[:, it, ..., 0], draws[:, it, ..., 1]
        if delta == 1:
            # Offsets in {-1, 0}: every source pixel is at or before its target in raster
            # order, which the descending loop has not written yet in this pass.
            src = x[nidx[:, None, None], hs[None, :, None] + dy, ws[None, None, :] + dx]
            x[:, hs[:, None], ws[None, :]] = src
        else:
            for a, hh in enumerate(hs):
                for b, ww in enumerate(ws):
                    x[nidx, hh, ww] = x[nidx, hh + dy[:, a, b], ww + dx[:, a, b]]
    return (
        np.clip(ndimage.gaussian_filter(x / 255.0, sig, mode="nearest", truncate=4.0), 0, 1) * 255
    )


def _motion_blur(
    xs: np.ndarray, c: tuple[int, float], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    angles = [r.uniform(-45, 45) for r in rngs]
    return np.clip(_motion_blur_batch(np.asarray(xs), c[0], c[1], angles), 0, 255)


def _zoom_blur(xs: np.ndarray, c: Sequence[float], rngs: Sequence[Any]) -> np.ndarray:
    x = (xs / 255.0).astype(np.float32)
    h, w = x.shape[1:3]
    out = np.zeros_like(x)
    for zoom_factor in c:
        out += _clipped_zoom(x, zoom_factor)[:, :h, :w]
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def _snow(
    xs: np.ndarray, c: tuple[float, ...], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    x = np.asarray(xs, dtype=np.float32) / 255.0
    h, w = x.shape[1:3]
    layers, angles = [], []
    for r in rngs:
        layers.append(r.normal(size=(h, w), loc=c[0], scale=c[1]))
        angles.append(r.uniform(-135, -45))
    layer = _clipped_zoom(np.stack(layers)[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = np.clip(layer[..., 0], 0, 1)
    layer = _motion_blur_batch(layer, c[4], c[5], angles)
    layer = np.round(layer * 255).astype(np.uint8) / 255.0
    layer = layer[:, :h, :w]
    if x.ndim == 4:
        f = np.float32
        gray = x[..., 0] * f(0.299) + x[..., 1] * f(0.587) + x[..., 2] * f(0.114)
        x = c[6] * x + (1 - c[6]) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
        layer = layer[..., None]
    else:
        x = c[6] * x + (1 - c[6]) * np.maximum(x, x * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


def _frost(
    xs: np.ndarray,
    c: tuple[float, float],
    rngs: Sequence[np.random.RandomState],
    textures: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    h, w = xs.shape[1:3]
    count = len(FROST_FILES) if textures is None else len(textures)
    rescaled: dict[int, np.ndarray] = {}
    out = np.empty(xs.shape, dtype=np.float64)
    for i, r in enumerate(rngs):
        idx = r.randint(count)
        if idx not in rescaled:
            rescaled[idx] = (
                _bundled_texture(idx, (h, w))
                if textures is None
                else _frost_rescaled(np.asarray(textures[idx]), (h, w))
            )
        tex = rescaled[idx]
        x0 = r.randint(0, tex.shape[0] - h)
        y0 = r.randint(0, tex.shape[1] - w)
        crop = tex[x0 : x0 + h, y0 : y0 + w]
        if xs.ndim == 3 and crop.ndim == 3:
            crop = _rgb2gray(crop)
        elif xs.ndim == 4 and crop.ndim == 2:
            crop = crop[..., None]
        out[i] = np.clip(c[0] * np.asarray(xs[i]) + c[1] * crop, 0, 255)
    return out


def _next_power_of_2(x: int) -> int:
    return 1 if x == 0 else 2 ** (x - 1).bit_length()


def _fog(
    xs: np.ndarray, c: tuple[float, float], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    n, h, w = xs.shape[:3]
    map_size = _next_power_of_2(int(max(xs.shape[1:])))
    x = xs / 255.0
    max_val = x.reshape(n, -1).max(axis=1).reshape((n,) + (1,) * (x.ndim - 1))
    plasma = np.stack([_plasma_fractal(map_size, c[1], r)[:h, :w] for r in rngs])
    x = x + c[0] * (plasma[..., None] if x.ndim == 4 else plasma)
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def _brightness(xs: np.ndarray, c: float, rngs: Sequence[Any]) -> np.ndarray:
    x = xs / 255.0
    if x.ndim == 3:
        x = np.clip(x + c, 0, 1)
    else:
        x = _rgb2hsv(x)
        x[..., 2] = np.clip(x[..., 2] + c, 0, 1)
        x = _hsv2rgb(x)
    return np.clip(x, 0, 1) * 255


def _contrast(xs: np.ndarray, c: float, rngs: Sequence[Any]) -> np.ndarray:
    x = xs / 255.0
    means = np.stack([np.mean(xi, axis=(0, 1), keepdims=True) for xi in x])
    return np.clip((x - means) * c + means, 0, 1) * 255


def _elastic_transform(
    xs: np.ndarray, c: tuple[float, Any, float, float], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    alpha, sigma, max_d, affine = c
    image = np.asarray(xs, dtype=np.float32) / 255.0
    n, h, w = image.shape[:3]
    jitter, fx, fy = [], [], []
    for r in rngs:
        if affine > 0:
            jitter.append(r.uniform(-affine, affine, size=(3, 2)).astype(np.float32))
        fx.append(r.uniform(-max_d, max_d, size=(h, w)))
        fy.append(r.uniform(-max_d, max_d, size=(h, w)))
    if affine > 0:
        center = np.float32((h, w)) // 2
        square = min(h, w) // 3
        pts1 = np.float32(
            [center + square, [center[0] + square, center[1] - square], center - square]
        )
        pts2 = pts1 + np.stack(jitter)
        inv = _affine_matrices(np.broadcast_to(pts1, pts2.shape).astype(np.float64), pts2)
        image = _warp_affine(image, inv)
    sig = (0,) + tuple(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (2,)))
    dx = (ndimage.gaussian_filter(np.stack(fx), sig, mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    dy = (ndimage.gaussian_filter(np.stack(fy), sig, mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    if image.ndim == 3:
        x, y = np.meshgrid(np.arange(w), np.arange(h))
        coords = [np.broadcast_to(np.arange(n)[:, None, None], dx.shape), y + dy, x + dx]
    else:
        dx, dy = dx[..., None], dy[..., None]
        x, y, z = np.meshgrid(np.arange(w), np.arange(h), np.arange(image.shape[3]))
        shape = (n, h, w, image.shape[3])
        coords = [
            np.broadcast_to(np.arange(n)[:, None, None, None], shape),
            np.broadcast_to(y + dy, shape),
            np.broadcast_to(x + dx, shape),
            np.broadcast_to(z, shape),
        ]
    warped = ndimage.map_coordinates(image, np.stack(coords), order=1, mode="reflect")
    return np.clip(warped, 0, 1) * 255


def _pixelate(xs: np.ndarray, c: float, rngs: Sequence[Any]) -> np.ndarray:
    h, w = xs.shape[1:3]
    out = np.empty(xs.shape, dtype=np.uint8)
    for i, xi in enumerate(_to_uint8(xs)):
        im = Image.fromarray(xi).resize((int(w * c), int(h * c)), Image.Resampling.BOX)
        out[i] = np.asarray(im.resize((w, h), Image.Resampling.NEAREST))
    return out


def _jpeg_compression(xs: np.ndarray, c: int, rngs: Sequence[Any]) -> np.ndarray:
    out = np.empty(xs.shape, dtype=np.uint8)
    for i, xi in enumerate(_to_uint8(xs)):
        im = Image.fromarray(xi)
        gray = im.mode != "RGB"
        buffer = io.BytesIO()
        (im.convert("RGB") if gray else im).save(buffer, "JPEG", quality=c)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("L") if gray else decoded.convert("RGB"))
    return out


_BATCH: dict[str, Batch] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}


# ---------------------------------------------------------------------------------------------
# Public API.


def _one(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] != 3):
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {x.shape}")
    return x[None]


def gaussian_noise(x: np.ndarray, c: float, rng: np.random.RandomState) -> np.ndarray:
    """Add N(0, c) noise to x/255; ``c`` is the noise's standard deviation."""
    return _gaussian_noise(_one(x), c, [rng])[0]


def shot_noise(x: np.ndarray, c: float, rng: np.random.RandomState) -> np.ndarray:
    """Poisson(x/255 * c) / c: ``c`` photons at full intensity."""
    return _shot_noise(_one(x), c, [rng])[0]


def impulse_noise(x: np.ndarray, c: float, rng: np.random.RandomState) -> np.ndarray:
    """Salt and pepper on a fraction ``c`` of the values (scikit-image's s&p, drawn from rng)."""
    return _impulse_noise(_one(x), c, [rng])[0]


def defocus_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.RandomState) -> np.ndarray:
    """Correlate with a disk of radius c[0], anti-aliased by a 3x3 Gaussian of sigma c[1]."""
    return _defocus_blur(_one(x), c, [rng])[0]


def glass_blur(x: np.ndarray, c: tuple[float, int, int], rng: np.random.RandomState) -> np.ndarray:
    """Gaussian blur (sigma c[0]), c[2] passes of local pixel copies within c[1], blur again."""
    return _glass_blur(_one(x), c, [rng])[0]


def motion_blur(x: np.ndarray, c: tuple[int, float], rng: np.random.RandomState) -> np.ndarray:
    """The package's numpy motion blur, radius c[0] and sigma c[1], at a uniform(-45, 45) angle."""
    return _motion_blur(_one(x), c, [rng])[0]


def zoom_blur(x: np.ndarray, c: Sequence[float], rng: np.random.RandomState) -> np.ndarray:
    """The mean of x and its centre zoomed by each factor in ``c`` (bilinear)."""
    return _zoom_blur(_one(x), c, [rng])[0]


def snow(x: np.ndarray, c: tuple[float, ...], rng: np.random.RandomState) -> np.ndarray:
    """Motion-blurred thresholded noise flakes over a whitened image (the package's 7 constants)."""
    return _snow(_one(x), c, [rng])[0]


def frost(
    x: np.ndarray,
    c: tuple[float, float],
    rng: np.random.RandomState,
    textures: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """c[0] * x + c[1] * a random crop of one of the frost textures.

    ``textures``: uint8 HxW or HxWx3 (RGB) arrays to draw from, ``rng.randint(len(textures))``;
    by default the five bundled 28-px gray textures. Each is scaled as the package does (to at
    least the image size, then 1.1x with OpenCV's INTER_CUBIC, emulated).
    """
    return _frost(_one(x), c, [rng], textures)[0]


def fog(x: np.ndarray, c: tuple[float, float], rng: np.random.RandomState) -> np.ndarray:
    """Add c[0] * a plasma fractal (wibble decay c[1]) and rescale to the image's maximum."""
    return _fog(_one(x), c, [rng])[0]


def brightness(x: np.ndarray, c: float, rng: np.random.RandomState) -> np.ndarray:
    """Add ``c`` to HSV value (colour) or to the intensity (gray), clipped to 1."""
    return _brightness(_one(x), c, [rng])[0]


def contrast(x: np.ndarray, c: float, rng: np.random.RandomState) -> np.ndarray:
    """Scale each channel's deviation from its mean by ``c``."""
    return _contrast(_one(x), c, [rng])[0]


def elastic_transform(
    x: np.ndarray, c: tuple[float, Any, float, float], rng: np.random.RandomState
) -> np.ndarray:
    """``c = (alpha, sigma, max_d, affine)``: CIFAR's random affine warp (if affine > 0), then a
    displacement field uniform(-max_d, max_d) smoothed by sigma and scaled by alpha (bilinear)."""
    return _elastic_transform(_one(x), c, [rng])[0]


def pixelate(x: np.ndarray, c: float, rng: np.random.RandomState) -> np.ndarray:
    """Shrink to ``int(side * c)`` with PIL BOX, enlarge back with NEAREST (uint8)."""
    return _pixelate(_one(x), c, [rng])[0]


def jpeg_compression(x: np.ndarray, c: int, rng: np.random.RandomState) -> np.ndarray:
    """PIL JPEG at quality ``c`` (uint8); gray is encoded as RGB and decoded to luma."""
    return _jpeg_compression(_one(x), c, [rng])[0]


CORRUPTION_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    f.__name__: f
    for f in (
        gaussian_noise,
        shot_noise,
        impulse_noise,
        defocus_blur,
        glass_blur,
        motion_blur,
        zoom_blur,
        snow,
        frost,
        fog,
        brightness,
        contrast,
        elastic_transform,
        pixelate,
        jpeg_compression,
    )
}


class _Reseeded(Sequence[np.random.RandomState]):
    """``RandomState(seed)`` of each seed, made by re-seeding one shared RandomState.

    Constructing a RandomState costs ~100 us (its throwaway default seeding); re-seeding ~2 us.
    Sound because every batch function iterates its ``rngs`` once, in order, and makes all of an
    image's draws before taking the next image's state.
    """

    def __init__(self, seeds: Sequence[int] | np.ndarray) -> None:
        self._seeds = [int(s) for s in seeds]
        self._state = np.random.RandomState(0)

    def __len__(self) -> int:
        return len(self._seeds)

    def __getitem__(self, i: Any) -> Any:
        raise TypeError("iterate: each item re-seeds one shared RandomState")

    def __iter__(self) -> Iterator[np.random.RandomState]:
        for s in self._seeds:
            self._state.seed(s)
            yield self._state


def _check(name: str, severity: int) -> None:
    if name not in _BATCH:
        raise ValueError(f"unknown corruption {name!r} (known: {', '.join(CORRUPTIONS)})")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1..5, got {severity!r}")


def corrupt_batch(
    images: np.ndarray, name: str, severity: int, seeds: Sequence[int] | np.ndarray
) -> np.ndarray:
    """``corrupt`` of each of ``images`` (N, H, W) uint8 with its own seed, computed together.

    Gives the same bytes as ``corrupt(images[i], name, severity, seeds[i])`` for every i.
    """
    _check(name, severity)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if len(seeds) != len(images):
        raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
    constant = severity_constants(images.shape[1])[name][severity - 1]
    return _to_uint8(_BATCH[name](images, constant, _Reseeded(seeds)))


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """The corruption ``name`` at ``severity`` (1..5) of a uint8 HxW image, as uint8 HxW.

    Deterministic: draws from ``np.random.RandomState(seed)`` only (seed in [0, 2**32)), and
    rounds to the nearest level. Uses ``severity_constants(H)`` (CIFAR-10-C's at 28 px).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a uint8 HxW image, got shape {image.shape}")
    return corrupt_batch(image[None], name, severity, [seed])[0]
