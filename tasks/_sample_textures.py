"""Pure numeric helpers for the sample-area generator: noise, warped Voronoi, mode aggregation.

No I/O here; every function takes a ``numpy.random.Generator`` so the caller controls the seed.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage
from scipy.spatial import cKDTree

__all__ = [
    "double_logistic",
    "fractal_noise",
    "mode_aggregate",
    "smooth_noise",
    "upsample",
    "warped_voronoi",
]


def fractal_noise(
    shape: tuple[int, int],
    beta: float,
    rng: np.random.Generator,
    *,
    outer_px: float | None = None,
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise with a power spectrum ``P(k) ~ k^-beta``.

    ``beta = 0`` is white noise, ``beta ~ 2`` looks like terrain or soil patterns, ``beta ~ 3``
    like cloud fields. ``outer_px`` flattens the spectrum below ``k = 1 / outer_px`` so that one
    random lowest mode does not dominate the field.

    Returns
    -------
    np.ndarray
        ``shape`` float32.
    """
    h, w = shape
    ky = np.fft.fftfreq(h).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    k2 = kx * kx + ky * ky
    k0 = 1.0 / outer_px if outer_px else 1.0 / max(h, w)
    amp = (k2 + np.float32(k0 * k0)) ** np.float32(-beta / 4.0)
    amp[0, 0] = 0.0
    spec = rng.standard_normal((2, h, w // 2 + 1), dtype=np.float32)
    field = fft.irfft2((spec[0] + 1j * spec[1]) * amp, s=shape, workers=-1).astype(np.float32)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def upsample(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2D field to ``shape`` (float32)."""
    zoom = (shape[0] / field.shape[0], shape[1] / field.shape[1])
    out = ndimage.zoom(field.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def smooth_noise(
    shape: tuple[int, int], beta: float, rng: np.random.Generator, *, factor: int = 4
) -> np.ndarray:
    """Fractal noise computed at ``1 / factor`` resolution and upsampled (cheap, smooth fields)."""
    small = (max(8, -(-shape[0] // factor)), max(8, -(-shape[1] // factor)))
    return upsample(fractal_noise(small, beta, rng), shape)


def warped_voronoi(
    shape: tuple[int, int],
    spacing_px: float,
    rng: np.random.Generator,
    *,
    warp_px: float,
    chunk_rows: int = 512,
) -> np.ndarray:
    """Irregular polygons: nearest-seed labels of a jittered seed lattice on warped coordinates.

    Seeds sit on a lattice of ``spacing_px`` with a jitter of up to 0.45 spacing; pixel
    coordinates are displaced by two smooth noise fields of amplitude ``warp_px`` so that
    boundaries curve instead of running straight.

    Returns
    -------
    np.ndarray
        ``shape`` int32 polygon ids in ``[0, n_seeds)``.
    """
    h, w = shape
    ny, nx = int(np.ceil(h / spacing_px)) + 2, int(np.ceil(w / spacing_px)) + 2
    gy, gx = np.meshgrid(np.arange(ny) - 1.0, np.arange(nx) - 1.0, indexing="ij")
    # Anisotropy: Iowa fields are longer than wide along the section lines.
    seeds = np.stack(
        [
            (gy + 0.5 + rng.uniform(-0.45, 0.45, gy.shape)) * spacing_px,
            (gx + 0.5 + rng.uniform(-0.45, 0.45, gx.shape)) * spacing_px,
        ],
        axis=-1,
    ).reshape(-1, 2)
    tree = cKDTree(seeds)
    wy = smooth_noise(shape, 3.0, rng, factor=8) * warp_px
    wx = smooth_noise(shape, 3.0, rng, factor=8) * warp_px
    out = np.empty(shape, dtype=np.int32)
    xs = np.arange(w, dtype=np.float32)
    for r0 in range(0, h, chunk_rows):
        r1 = min(h, r0 + chunk_rows)
        yy = np.arange(r0, r1, dtype=np.float32)[:, None] + wy[r0:r1]
        xx = xs[None, :] + wx[r0:r1]
        _, idx = tree.query(np.stack([yy.ravel(), xx.ravel()], axis=1), workers=-1)
        out[r0:r1] = idx.reshape(r1 - r0, w)
    return out


def mode_aggregate(labels: np.ndarray, bins: np.ndarray, n_bins: int, n_classes: int) -> np.ndarray:
    """Majority class per bin.

    Parameters
    ----------
    labels : np.ndarray
        Class indices in ``[0, n_classes)``.
    bins : np.ndarray
        Same shape, target bin of each label in ``[0, n_bins)``; negative values are dropped.
    n_bins, n_classes : int
        Sizes.

    Returns
    -------
    np.ndarray
        ``(n_bins,)`` int64 majority class, ``-1`` for bins without any label.
    """
    keep = bins >= 0
    flat = bins[keep].astype(np.int64) * n_classes + labels[keep].astype(np.int64)
    counts = np.bincount(flat, minlength=n_bins * n_classes).reshape(n_bins, n_classes)
    out = counts.argmax(axis=1)
    out[counts.sum(axis=1) == 0] = -1
    return out


def double_logistic(
    t: np.ndarray | float, rise: np.ndarray | float, fall: np.ndarray | float,
    rate_rise: float | np.ndarray, rate_fall: float | np.ndarray,
) -> np.ndarray:
    """``sigmoid(rate_rise (t - rise)) * (1 - sigmoid(rate_fall (t - fall)))`` in ``[0, 1]``."""
    up = 1.0 / (1.0 + np.exp(-np.asarray(rate_rise) * (np.asarray(t) - rise)))
    down = 1.0 / (1.0 + np.exp(-np.asarray(rate_fall) * (np.asarray(t) - fall)))
    return up * (1.0 - down)
