"""Procedural RGB sprites with known factors of variation (NumPy only, deterministic from a seed).

Each image is one anti-aliased shape on a black background. Factors, drawn independently and
uniformly per image (columns of ``factors``, in this order):

* ``shape``: 0 square, 1 circle, 2 triangle, 3 cross (also the integer ``labels``);
* ``scale``: half-size of the shape as a fraction of the image side, in ``[0.1, 0.2]``;
* ``rotation``: angle in radians, in ``[0, 2 pi)`` (visible except for circles);
* ``pos_x``, ``pos_y``: centre as a fraction of the image side, in ``[0.3, 0.7]``
  (so the shape always stays inside the image);
* ``hue``: in ``[0, 1)``, rendered with saturation 0.8 and value 1.

Pixels are quantised to uint8 (256 levels) so the data can be used with discretised likelihoods.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FACTOR_NAMES", "SHAPE_NAMES", "generate_shapes"]

SHAPE_NAMES = ("square", "circle", "triangle", "cross")
FACTOR_NAMES = ("shape", "scale", "rotation", "pos_x", "pos_y", "hue")
SCALE_RANGE = (0.1, 0.2)
POS_RANGE = (0.3, 0.7)
_SATURATION = 0.8
_CHUNK = 1024


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    # Piecewise-linear HSV -> RGB, vectorised: channel k uses (5, 3, 1) offsets.
    k = np.stack([(5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0], axis=-1)
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _signed_distance(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Distance-like field in units of the shape's half-size: < 0 inside, 0 on the edge."""
    au, av = np.abs(u), np.abs(v)
    square = np.maximum(au, av) - 1.0
    circle = np.sqrt(u * u + v * v) - 1.0
    # Equilateral triangle with circumradius 1 (inradius 0.5): the max over its three edge normals.
    tri = v * -1.0
    for ang in (np.pi / 6.0, 5.0 * np.pi / 6.0):
        tri = np.maximum(tri, u * np.cos(ang) + v * np.sin(ang))
    tri = tri - 0.5
    arm = 0.35
    cross = np.minimum(np.maximum(au - 1.0, av - arm), np.maximum(au - arm, av - 1.0))
    s = shape[:, None, None]
    return np.where(s == 0, square, np.where(s == 1, circle, np.where(s == 2, tri, cross)))


def generate_shapes(num: int, size: int, seed: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render ``num`` sprites of ``size`` x ``size`` pixels.

    Parameters
    ----------
    num
        Number of images.
    size
        Image side in pixels.
    seed, stream
        The generator is ``numpy.random.default_rng([seed, stream])``: the train and test splits use
        different streams of one seed, so they never share images.

    Returns
    -------
    images : ndarray
        uint8 ``[num, 3, size, size]``.
    factors : ndarray
        float32 ``[num, 6]``, columns :data:`FACTOR_NAMES`.
    """
    rng = np.random.default_rng([seed, stream])
    shape = rng.integers(0, len(SHAPE_NAMES), size=num)
    scale = rng.uniform(*SCALE_RANGE, size=num)
    rotation = rng.uniform(0.0, 2.0 * np.pi, size=num)
    pos = rng.uniform(*POS_RANGE, size=(num, 2))
    hue = rng.uniform(0.0, 1.0, size=num)
    factors = np.column_stack([shape, scale, rotation, pos, hue]).astype(np.float32)

    images = np.empty((num, 3, size, size), dtype=np.uint8)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in [0, 1]
    rgb = _hsv_to_rgb(hue, _SATURATION, 1.0).astype(np.float32)
    for start in range(0, num, _CHUNK):
        sl = slice(start, min(start + _CHUNK, num))
        dx = grid[None, None, :] - pos[sl, 0, None, None].astype(np.float32)
        dy = grid[None, :, None] - pos[sl, 1, None, None].astype(np.float32)
        c = np.cos(rotation[sl]).astype(np.float32)[:, None, None]
        s = np.sin(rotation[sl]).astype(np.float32)[:, None, None]
        r = scale[sl].astype(np.float32)[:, None, None]
        # Inverse rotation into the shape's frame, in units of its half-size.
        u = (c * dx + s * dy) / r
        v = (-s * dx + c * dy) / r
        d = _signed_distance(shape[sl], u, v)
        # One pixel of anti-aliasing: coverage ramps over the pixel straddling the edge.
        alpha = np.clip(0.5 - d * (r * size), 0.0, 1.0)
        img = alpha[:, None] * rgb[sl, :, None, None]
        images[sl] = np.rint(img * 255.0).astype(np.uint8)
    return images, factors
