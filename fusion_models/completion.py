"""Classical tensor completion baselines: iterative Tucker completion, HaLRTC, linear interpolation.

References
----------
- Shi, J., Yang, W., Yong, L., Zheng, X. (2015). "Low-rank tensor completion via Tucker
  decompositions". Journal of Computational Information Systems 11(10):3759-3768.
- Liu, J., Musialski, P., Wonka, P., Ye, J. (2013). "Tensor completion for estimating missing
  values in visual data". IEEE TPAMI 35(1):208-220.
- De Lathauwer, L., De Moor, B., Vandewalle, J. (2000). "On the best rank-1 and rank-(R1, ..., RN)
  approximation of higher-order tensors". SIAM J. Matrix Anal. Appl. 21(4):1324-1342 (HOOI).

Pure numpy: arrays in, arrays out. ``mask`` is True where an entry is observed; values at
unobserved entries are ignored (NaN allowed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fusion_models.tensor_ops import fold, mode_dot, svt, unfold

__all__ = [
    "CompletionResult",
    "default_ranks",
    "fold",
    "halrtc",
    "hosvd",
    "leading_vectors",
    "linear_interpolation",
    "mode_dot",
    "tucker_completion",
    "unfold",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionResult:
    """A completed tensor and how the solver got there.

    Attributes
    ----------
    filled
        The completed tensor, observed entries equal to the input's.
    iterations
        Iterations run.
    history
        Relative change ``||Z^l - Z^{l-1}||_F / ||Z^{l-1}||_F`` per iteration.
    converged
        Whether the change fell below the tolerance.
    """

    filled: np.ndarray
    iterations: int
    history: tuple[float, ...]
    converged: bool


# --- multilinear algebra ------------------------------------------------------------------------


def default_ranks(shape: Sequence[int], *, share: float = 0.1) -> tuple[int, ...]:
    """The deck's multilinear ranks: ``share`` (10 %) of each dimension, at least 1."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1]; got share={share} (e.g. 0.1 for 10 %)")
    return tuple(max(1, math.ceil(share * int(n))) for n in shape)


def _check(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != x.shape:
        raise ValueError(
            f"mask must have the shape of x; got x {x.shape}, mask {mask.shape} "
            "(broadcast the mask, e.g. np.broadcast_to(mask, x.shape))"
        )
    if not mask.any():
        raise ValueError("mask observes no entry; completion needs at least one observed value")
    return np.where(mask, x, 0.0).astype(np.float64), mask


def _check_ranks(ranks: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    ranks = tuple(int(r) for r in ranks)
    if len(ranks) != len(shape) or any(not 1 <= r <= n for r, n in zip(ranks, shape, strict=False)):
        raise ValueError(
            f"ranks needs one entry per mode ({len(shape)} modes), each in 1..dimension "
            f"{tuple(shape)}; got ranks={ranks} (e.g. default_ranks(shape))"
        )
    return ranks


def leading_vectors(m: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading left singular vectors of ``m`` (via the smaller Gram matrix)."""
    if m.shape[0] <= m.shape[1]:
        _, v = np.linalg.eigh(m @ m.T)
        return v[:, ::-1][:, :rank]
    u, _, _ = np.linalg.svd(m, full_matrices=False)
    return u[:, :rank]


def hosvd(x: np.ndarray, ranks: Sequence[int]) -> list[np.ndarray]:
    """Truncated HOSVD factors ``D_n`` ``(I_n, R_n)`` with orthonormal columns (De Lathauwer 2000)."""
    ranks = _check_ranks(ranks, x.shape)
    return [leading_vectors(unfold(x, n), r) for n, r in enumerate(ranks)]


def _project(x: np.ndarray, factors: Sequence[np.ndarray]) -> np.ndarray:
    """``X x_1 D_1 D_1^T ... x_N D_N D_N^T`` through the small core."""
    core = x
    for n, d in enumerate(factors):
        core = mode_dot(core, d.T, n)
    for n, d in enumerate(factors):
        core = mode_dot(core, d, n)
    return core


def tucker_completion(
    x: np.ndarray,
    mask: np.ndarray,
    *,
    ranks: Sequence[int],
    iters: int = 100,
    tol: float = 1e-7,
    init: np.ndarray | None = None,
) -> CompletionResult:
    """Low-rank tensor completion by iterative Tucker projection (Shi et al. 2015).

    Solves :math:`\\min \\tfrac12\\|\\mathcal G \\times_1 D_1 \\cdots \\times_N D_N - \\mathcal Z\\|_F^2`
    s.t. :math:`P_\\Omega(\\mathcal Z) = P_\\Omega(\\mathcal X)`, :math:`D_n^T D_n = I`, by
    alternating one HOOI sweep (:math:`D_n` = leading left singular vectors of
    :math:`(\\mathcal Z \\times_{k\\ne n} D_k^T)_{(n)}`, the orthonormal solution of the deck's
    QR update), the core :math:`\\mathcal G = \\mathcal Z \\times_n D_n^T` and the observed-entry
    reset :math:`\\mathcal Z \\leftarrow \\mathcal T + P_\\Omega(\\mathcal X - \\mathcal T)` with
    :math:`\\mathcal T = \\mathcal G \\times_n D_n`.

    Parameters
    ----------
    x
        Tensor of any order; values at unobserved entries are ignored.
    mask
        Bool, same shape, True where observed.
    ranks
        Multilinear ranks ``R_n``.
    iters, tol
        Maximum iterations and the relative-change tolerance.
    init
        Starting values for the unobserved entries (default: the mean of the observed ones).

    Returns
    -------
    CompletionResult
    """
    xo, mask = _check(x, mask)
    ranks = _check_ranks(ranks, x.shape)
    fill = xo[mask].mean() if init is None else np.asarray(init, dtype=np.float64)
    z = np.where(mask, xo, fill)
    factors = hosvd(z, ranks)
    history: list[float] = []
    for it in range(1, iters + 1):
        for n in range(z.ndim):  # one HOOI sweep
            y = z
            for k, d in enumerate(factors):
                if k != n:
                    y = mode_dot(y, d.T, k)
            factors[n] = leading_vectors(unfold(y, n), ranks[n])
        t = _project(z, factors)
        new = np.where(mask, xo, t)
        change = float(np.linalg.norm(new - z)) / max(float(np.linalg.norm(z)), 1e-12)
        history.append(change)
        z = new
        log.debug("tucker_completion: iteration %d, change %.3e", it, change)
        if change < tol:
            break
    converged = bool(history and history[-1] < tol)
    log.info("tucker_completion: %d iterations, last change %.2e", len(history), history[-1])
    return CompletionResult(z, len(history), tuple(history), converged)


def halrtc(
    x: np.ndarray,
    mask: np.ndarray,
    *,
    alpha: Sequence[float] | None = None,
    rho: float = 5.0,
    rho_growth: float = 1.1,
    iters: int = 100,
    tol: float = 1e-6,
    init: np.ndarray | None = None,
) -> CompletionResult:
    """HaLRTC: high-accuracy low-rank tensor completion by ADMM (Liu et al. 2013, Alg. 3).

    Minimises :math:`\\sum_n \\alpha_n \\|\\mathcal M_{n(n)}\\|_*` s.t. :math:`\\mathcal X = \\mathcal M_n`,
    :math:`P_\\Omega(\\mathcal X) = P_\\Omega(\\mathcal T)` with the updates

    .. math::
        \\mathcal M_n = \\mathrm{fold}_n\\big(D_{\\alpha_n/\\rho}(\\mathcal X_{(n)} + \\mathcal Y_{n(n)}/\\rho)\\big),\\quad
        \\mathcal X_{\\bar\\Omega} = \\tfrac1N \\sum_n (\\mathcal M_n - \\mathcal Y_n/\\rho)_{\\bar\\Omega},\\quad
        \\mathcal Y_n \\leftarrow \\mathcal Y_n - \\rho(\\mathcal M_n - \\mathcal X),

    :math:`D_\\tau` singular value thresholding; :math:`\\rho` grows by ``rho_growth`` per
    iteration (a common acceleration). The solver works on the tensor scaled to unit Frobenius
    norm, so ``rho`` means the same for any data: the first threshold ``alpha_n / rho`` is a share
    of the largest possible singular value (1).

    Parameters
    ----------
    x, mask
        As in :func:`tucker_completion`.
    alpha
        Weights per mode summing to 1 (default ``1/N`` each).
    rho, rho_growth, iters, tol
        ADMM penalty, its growth, maximum iterations and relative-change tolerance.
    init
        Starting values for the unobserved entries (default: the observed mean).

    Returns
    -------
    CompletionResult
    """
    xo, mask = _check(x, mask)
    n_modes = xo.ndim
    alpha = [1.0 / n_modes] * n_modes if alpha is None else [float(a) for a in alpha]
    if len(alpha) != n_modes or not math.isclose(sum(alpha), 1.0, rel_tol=1e-6):
        raise ValueError(
            f"alpha needs one weight per mode ({n_modes}) summing to 1; got alpha={alpha}"
        )
    if rho <= 0 or rho_growth < 1:
        raise ValueError(f"rho must be > 0 and rho_growth >= 1; got rho={rho}, rho_growth={rho_growth}")
    fill = xo[mask].mean() if init is None else np.asarray(init, dtype=np.float64)
    z = np.where(mask, xo, fill)
    scale = float(np.linalg.norm(z)) or 1.0  # unit Frobenius norm: rho means the same for any data
    z = z / scale
    obs = xo / scale
    ys = [np.zeros_like(z) for _ in range(n_modes)]
    history: list[float] = []
    for it in range(1, iters + 1):
        acc = np.zeros_like(z)
        ms = []
        for n in range(n_modes):
            m = fold(svt(unfold(z + ys[n] / rho, n), alpha[n] / rho), n, z.shape)
            ms.append(m)
            acc += m - ys[n] / rho
        new = np.where(mask, obs, acc / n_modes)
        for n in range(n_modes):
            ys[n] -= rho * (ms[n] - new)
        change = float(np.linalg.norm(new - z)) / max(float(np.linalg.norm(z)), 1e-12)
        history.append(change)
        z = new
        rho *= rho_growth
        log.debug("halrtc: iteration %d, change %.3e", it, change)
        if change < tol and it > 5:
            break
    log.info("halrtc: %d iterations, last change %.2e", len(history), history[-1])
    return CompletionResult(np.where(mask, xo, z * scale), len(history), tuple(history),
                            bool(history[-1] < tol))


def linear_interpolation(x: np.ndarray, mask: np.ndarray, *, axis: int = 0,
                         times: np.ndarray | None = None) -> np.ndarray:
    """Per-series linear interpolation along ``axis`` (time), what most EO toolkits do.

    Each series along ``axis`` (one pixel and band) is filled by linear interpolation between its
    nearest observed neighbours (weighted by ``times``, the acquisition times, or by the date index
    when not given), held constant before the first and after the last observation.
    A series with no observation gets the mean of the observed values at the same position along
    ``axis`` (that date's mean), or the global observed mean when the date has none.

    Parameters
    ----------
    x
        ``(T, ...)`` values (``axis`` selects T); unobserved values are ignored.
    mask
        Bool, True where observed: the shape of ``x``, or size 1 on axes other than ``axis`` (one
        mask for every band), which is also faster: the neighbours are found once per pixel.
    axis
        The time axis.
    times
        ``(T,)`` increasing acquisition times (e.g. days; any numbers or ``datetime64``), or None
        for equally spaced dates.

    Returns
    -------
    np.ndarray
        Same shape as ``x``, float64, observed entries unchanged.
    """
    x = np.asarray(x)
    mask = np.asarray(mask, dtype=bool)
    axis = axis % max(x.ndim, 1)
    if mask.ndim != x.ndim or mask.shape[axis] != x.shape[axis] or any(
        m not in (1, n) for m, n in zip(mask.shape, x.shape, strict=True)
    ):
        raise ValueError(
            f"mask must have the shape of x, or size 1 on an axis other than time to share it "
            f"(one mask for every band); got x {x.shape}, mask {mask.shape}"
        )
    if not mask.any():
        raise ValueError("mask observes no entry; completion needs at least one observed value")
    mt = np.moveaxis(mask, axis, 0)
    full = np.broadcast_to(mt, np.moveaxis(x, axis, 0).shape)
    xt = np.where(full, np.moveaxis(x, axis, 0), 0.0).astype(np.float64)
    t = xt.shape[0]
    idx = np.arange(t).reshape(t, *([1] * (xt.ndim - 1)))
    # previous and next observed index per series (-1 / t where none), on the mask's own shape
    prev = np.maximum.accumulate(np.where(mt, idx, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(mt, idx, t)[::-1], axis=0)[::-1]
    has_prev, has_next = prev >= 0, nxt < t
    v_prev = np.take_along_axis(xt, np.broadcast_to(np.clip(prev, 0, t - 1), xt.shape), axis=0)
    v_next = np.take_along_axis(xt, np.broadcast_to(np.clip(nxt, 0, t - 1), xt.shape), axis=0)
    if times is None:
        w = (idx - prev) / np.maximum(nxt - prev, 1)
    else:
        tt = np.asarray(times)
        tt = (tt - tt[0]).astype("timedelta64[s]").astype(np.float64) if tt.dtype.kind == "M" else tt.astype(np.float64)
        if tt.shape != (t,) or not np.all(np.diff(tt) > 0):
            raise ValueError(f"times must be {t} increasing values, one per date; got shape {tt.shape}")
        t_at = tt.reshape(idx.shape)
        t_prev, t_next = tt[np.clip(prev, 0, t - 1)], tt[np.clip(nxt, 0, t - 1)]
        w = (t_at - t_prev) / np.where(t_next > t_prev, t_next - t_prev, 1.0)
    both = has_prev & has_next
    interp = np.where(both, v_prev + w * (v_next - v_prev), np.where(has_prev, v_prev, v_next))
    none = ~(has_prev | has_next)
    if none.any():
        flat_m = full.reshape(t, -1)
        with np.errstate(invalid="ignore"):
            date_mean = np.nansum(xt.reshape(t, -1), axis=1) / flat_m.sum(axis=1)
        date_mean = np.where(np.isfinite(date_mean), date_mean, xt[full].mean())
        interp = np.where(none, date_mean.reshape(idx.shape), interp)
    return np.moveaxis(np.where(full, xt, interp), 0, axis)
