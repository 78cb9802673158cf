"""Descriptive statistics of data tensors: how low-rank and how smooth a cube is, and a fast
median over the observed entries of an axis.

Used by the realism benchmark to put the built-in sample area beside real data, so that no figure
measured on the sample flatters a method (DESIGN.md, "The built-in sample area").

Reference for the unfolding: T. G. Kolda and B. W. Bader, "Tensor Decompositions and
Applications", SIAM Review 51(3), 455-500, 2009.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = ["lag1_autocorrelation", "masked_median", "top_energy_share", "unfold"]


def unfold(x: np.ndarray, mode: int, *, order: Literal["tensorly", "kolda"] = "tensorly") -> np.ndarray:
    """Mode-``mode`` unfolding (matricization) of a tensor.

    The mode-n fibres of ``x`` become the columns of a matrix of shape
    ``(x.shape[mode], prod(other sizes))``.

    Parameters
    ----------
    x : np.ndarray
        Tensor with at least one dimension.
    mode : int
        The mode whose fibres become columns, ``0 <= mode < x.ndim`` (negative values count from
        the end).
    order : {"tensorly", "kolda"}, optional
        Column ordering. ``"tensorly"`` (default) equals ``tensorly.base.unfold``: the remaining
        modes in C order (last index fastest). ``"kolda"`` is Kolda and Bader (2009): element
        ``(i_1, ..., i_N)`` goes to column ``j = sum_{k != n} i_k J_k`` with
        ``J_k = prod_{m < k, m != n} I_m`` (first index fastest). Both orderings hold the same
        columns, so singular values and energies are identical.

    Returns
    -------
    np.ndarray
        ``(x.shape[mode], x.size // x.shape[mode])``.
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("unfold needs a tensor with at least one dimension; got a scalar")
    if not -x.ndim <= mode < x.ndim:
        raise ValueError(
            f"mode must be in [0, {x.ndim}) for a {x.ndim}-way tensor of shape {x.shape}; "
            f"got mode={mode}"
        )
    mode = mode % x.ndim
    moved = np.moveaxis(x, mode, 0)
    if order == "tensorly":
        return moved.reshape(x.shape[mode], -1)
    if order == "kolda":
        return moved.reshape(x.shape[mode], -1, order="F")
    raise ValueError(f"order must be 'tensorly' or 'kolda'; got order={order!r}")


def top_energy_share(x: np.ndarray, mode: int, fraction: float = 0.1) -> float:
    """Share of the energy of the mode-``mode`` unfolding held by its top singular values.

    With singular values ``s_1 >= ... >= s_r`` of ``X_(n)`` and ``k = max(1, ceil(fraction * r))``,
    the share is ``sum_{i<=k} s_i^2 / sum_i s_i^2``. A rank-1 tensor gives 1.0; white noise gives
    about ``k / r`` plus a little. The higher the share, the easier the tensor is to compress or
    to complete from few entries.

    Parameters
    ----------
    x : np.ndarray
        Tensor, finite values only (fill or crop NaNs first).
    mode : int
        Mode of the unfolding.
    fraction : float, optional
        Fraction of the ``r = min(X_(n).shape)`` singular values to count, in ``(0, 1]``.

    Returns
    -------
    float
        In ``[0, 1]``; NaN for an all-zero tensor.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got fraction={fraction}")
    matrix = unfold(np.asarray(x, dtype=np.float64), mode)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(
            "top_energy_share needs finite values; got NaN or inf in a tensor of shape "
            f"{np.shape(x)}: crop or fill the missing entries first"
        )
    # Singular values of the short side through the Gram matrix: cheap for a long unfolding.
    if matrix.shape[0] > matrix.shape[1]:
        matrix = matrix.T
    eig = np.linalg.eigvalsh(matrix @ matrix.T)[::-1]
    energy = np.clip(eig, 0.0, None)  # s_i^2
    total = float(energy.sum())
    if total == 0.0:
        return float("nan")
    k = max(1, math.ceil(fraction * energy.size))
    return float(energy[:k].sum() / total)


def lag1_autocorrelation(x: np.ndarray, axis: int) -> float:
    """Pooled lag-1 autocorrelation of ``x`` along ``axis``, ignoring NaNs.

    The Pearson correlation between all pairs ``(x[..., i, ...], x[..., i + 1, ...])`` along
    ``axis`` where both values are finite, with one pooled mean and variance per side.
    White noise gives about 0, a smooth field close to 1, a constant-slope ramp exactly 1.

    Parameters
    ----------
    x : np.ndarray
        Array with ``x.shape[axis] >= 2``.
    axis : int
        Axis along which neighbours are paired.

    Returns
    -------
    float
        In ``[-1, 1]``; NaN when fewer than two valid pairs exist or a side is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [0, {x.ndim}) for shape {x.shape}; got axis={axis}")
    if x.shape[axis] < 2:
        raise ValueError(
            f"lag-1 autocorrelation needs at least 2 samples along axis {axis}; got shape {x.shape}"
        )
    a = np.moveaxis(x, axis, -1)
    lead, lag = a[..., :-1].ravel(), a[..., 1:].ravel()
    ok = np.isfinite(lead) & np.isfinite(lag)
    if ok.sum() < 2:
        return float("nan")
    lead, lag = lead[ok], lag[ok]
    da, db = lead - lead.mean(), lag - lag.mean()
    denom = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    if denom == 0.0:
        return float("nan")
    return float(np.dot(da, db) / denom)


def masked_median(x: np.ndarray, mask: np.ndarray, axis: int, *, empty: float = 0.0) -> np.ndarray:
    """Median of ``x`` along ``axis`` over the entries where ``mask`` is true, keeping the axis
    (length 1); ``empty`` where no entry is.

    The same values as ``np.nanmedian`` of ``x`` with NaN off the mask (the mean of the two middle
    values for an even count), from one sort with the masked-out entries set to ``+inf`` (so they
    sort last) and the count of each line: about eight times faster than ``np.nanmedian``, which
    goes through masked arrays, on a ``64 x 27 x 64`` tile. ``x`` must be finite on the mask.
    """
    x = np.asarray(x)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), x.shape)
    ordered = np.sort(np.where(mask, x, np.inf), axis=axis)
    count = mask.sum(axis=axis, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=axis)
    high = np.take_along_axis(ordered, count // 2, axis=axis) if x.shape[axis] else low
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, 0.5 * (low + high), empty)
