"""Quantized tensor robust PCA (Q-TRPCA) by ADMM, and the baselines it is compared with.

A. Aidini, G. Tsagkatakis and P. Tsakalides, "Quantized Tensor Robust Principal Component
Analysis", IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP),
2020, pp. 2453-2457; the tensor nuclear norm and TRPCA are from C. Lu, J. Feng, Y. Chen, W. Liu,
Z. Lin and S. Yan, "Tensor Robust Principal Component Analysis with a New Tensor Nuclear Norm",
IEEE TPAMI 42(4), 925-938, 2020; matrix RPCA with missing entries from E. J. Candes, X. Li,
Y. Ma and J. Wright, "Robust Principal Component Analysis?", J. ACM 58(3), 2011.

Shapes: tensors are ``(n1, n2, n3) = (y, x, time)``: time goes last because the t-SVD takes its
Fourier transform along the third mode (see :func:`qtrpca`). ``omega`` is a bool tensor of the same
shape, true where an entry is observed.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusion_models.tensor_ops import soft_threshold, tnn_prox

__all__ = [
    "RobustPCAResult",
    "bin_bounds",
    "default_lambda",
    "dequantize",
    "matrix_rpca",
    "qtrpca",
    "quantize",
    "robust_threshold",
    "robust_zscore",
    "trpca",
]

log = logging.getLogger(__name__)

Prox = Callable[[np.ndarray, float], tuple[np.ndarray, int]]


@dataclass(frozen=True)
class RobustPCAResult:
    """What a robust PCA solver returns.

    Attributes
    ----------
    low_rank : np.ndarray
        ``L``, ``(n1, n2, n3)``, the background, defined on every entry (observed or not).
    sparse : np.ndarray
        ``S``, ``(n1, n2, n3)``, the sparse part, zero off ``omega``.
    iterations : int
        ADMM iterations run.
    converged : bool
        Whether the stopping rule was met before ``max_iter``.
    history : tuple of float
        Per iteration, the stopping quantity ``max(|L+S-X|, |dL|, |dS|)`` (max norms, in the units
        of the data).
    rank : int
        Tubal rank (t-SVD) or matrix rank of ``L`` at the last iteration.
    lam : float
        The sparsity weight used.
    seconds : float
        Wall time of the solve.
    """

    low_rank: np.ndarray
    sparse: np.ndarray
    iterations: int
    converged: bool
    history: tuple[float, ...]
    rank: int
    lam: float
    seconds: float

    def __post_init__(self) -> None:
        if self.low_rank.shape != self.sparse.shape:
            raise ValueError(
                f"L and S must have the same shape; got {self.low_rank.shape} and {self.sparse.shape}"
            )

    @property
    def L(self) -> np.ndarray:  # noqa: N802 - the paper's name
        return self.low_rank

    @property
    def S(self) -> np.ndarray:  # noqa: N802 - the paper's name
        return self.sparse


# --- the quantizer ------------------------------------------------------------------------------


def quantize(
    x: np.ndarray, bits: int, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""Uniform ``bits``-bit quantizer on ``[lo, hi]`` (values outside saturate to the end bins).

    .. math:: \Delta = \frac{hi - lo}{2^b}, \qquad
              q = \min(\lfloor (x - lo) / \Delta \rfloor, 2^b - 1)^+, \qquad
              x \in [e_q, e_{q+1}),\ e_q = lo + q\Delta .

    Parameters
    ----------
    x : np.ndarray
        Any shape; NaN entries get code 0 (mask them out with ``omega``).
    bits : int
        1..16.
    lo, hi : float
        The quantizer's range, ``lo < hi``.

    Returns
    -------
    codes : np.ndarray
        Same shape as ``x``, ``uint8`` (bits <= 8) or ``uint16``.
    edges : np.ndarray
        ``(2**bits + 1,)`` float64 bin edges ``e_0 = lo .. e_{2^b} = hi``.
    """
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 1..16; got bits={bits!r}")
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"the quantizer range needs finite lo < hi; got lo={lo}, hi={hi}")
    levels = 2**bits
    edges = np.linspace(lo, hi, levels + 1)
    step = (hi - lo) / levels
    filled = np.where(np.isfinite(x), x, lo)
    codes = np.clip(np.floor((filled - lo) / step), 0, levels - 1)
    return codes.astype(np.uint8 if bits <= 8 else np.uint16), edges


def bin_bounds(codes: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edge of each entry's bin: ``(edges[codes], edges[codes + 1])``."""
    if codes.size and int(codes.max()) >= len(edges) - 1:
        raise ValueError(
            f"codes must be < len(edges) - 1 = {len(edges) - 1}; got a code {int(codes.max())}. "
            "Pass the edges quantize() returned with these codes"
        )
    return edges[codes], edges[codes.astype(np.int64) + 1]


def dequantize(codes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin centres: the value a method that ignores quantization takes as exact."""
    lower, upper = bin_bounds(codes, edges)
    return 0.5 * (lower + upper)


# --- the solver ---------------------------------------------------------------------------------


def default_lambda(shape: tuple[int, ...]) -> float:
    r"""Sparsity weight of TRPCA (Lu et al. 2020, Thm. 4.1): :math:`1/\sqrt{\max(n_1, n_2)\,n_3}`.

    For a matrix ``(m, n)`` (``len(shape) == 2``) it is Candes et al.'s :math:`1/\sqrt{\max(m, n)}`.
    """
    if len(shape) == 2:
        return 1.0 / math.sqrt(max(shape))
    if len(shape) != 3:
        raise ValueError(f"default_lambda needs a 2- or 3-dim shape; got {shape}")
    n1, n2, n3 = shape
    return 1.0 / math.sqrt(max(n1, n2) * n3)


def _check_inputs(name: str, y: np.ndarray, omega: np.ndarray | None) -> np.ndarray:
    if y.ndim != 3:
        raise ValueError(
            f"{name} must be a third-order tensor (y, x, time); got shape {y.shape} ({y.ndim} dims). "
            "Transpose a (time, y, x) stack with np.moveaxis(a, 0, -1)"
        )
    if min(y.shape) < 1:
        raise ValueError(f"{name} must not be empty; got shape {y.shape}")
    if omega is None:
        return np.ones(y.shape, dtype=bool)
    omega = np.asarray(omega)
    if omega.shape != y.shape:
        raise ValueError(
            f"omega must have the shape of {name} {y.shape}; got {omega.shape}. "
            "Pass a bool mask that is true where an entry is observed"
        )
    if omega.dtype != bool:
        raise ValueError(f"omega must be bool (true = observed); got dtype {omega.dtype}")
    if not omega.any():
        raise ValueError(f"omega observes no entry of {name}; there is nothing to recover from")
    return omega


def _admm(
    lower: np.ndarray,
    upper: np.ndarray,
    omega: np.ndarray,
    *,
    prox: Prox,
    lam: float,
    rho: float,
    tol: float,
    max_iter: int,
    label: str,
) -> RobustPCAResult:
    r"""ADMM for :math:`\min \Phi(L) + \lambda\|P_\Omega S\|_1` s.t. :math:`L + S = X`,
    :math:`P_\Omega X \in [\ell, u]`, :math:`P_{\Omega^c} S = 0`.

    Two blocks, ``L`` and ``(S, X)``; the second has a closed form per entry (see :func:`qtrpca`).
    The data are centred and scaled (median and standard deviation on ``omega``) before the solve,
    which only changes the numerics (the objective is 1-homogeneous and the box moves with the
    data), and the result is mapped back.
    """
    started = time.perf_counter()
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be finite and > 0; got lam={lam}")
    if rho <= 1:
        raise ValueError(f"rho must be > 1 so the penalty grows; got rho={rho}")
    if np.any(upper[omega] < lower[omega]):
        raise ValueError("every observed entry needs lower <= upper (its quantization bin)")
    mid = 0.5 * (lower[omega] + upper[omega])
    offset = float(np.median(mid))
    scale = float(np.std(mid)) or 1.0
    lo = np.where(omega, (lower - offset) / scale, -np.inf)
    hi = np.where(omega, (upper - offset) / scale, np.inf)
    x = np.where(omega, np.clip(0.0, lo, hi), 0.0)
    n1, n2, n3 = x.shape
    spectral = float(np.linalg.norm(x.reshape(n1 * n2, n3), ord=2)) or 1.0
    mu = 1.25 / spectral
    mu_max = 1e7 * mu
    low = np.zeros_like(x)
    sparse = np.zeros_like(x)
    dual = np.zeros_like(x)
    history: list[float] = []
    rank = 0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        # L-step: prox of Phi / mu at X - S - Y / mu
        new_low, rank = prox(x - sparse - dual / mu, 1.0 / mu)
        # (S, X)-step, per entry: with c = L + Y / mu and e = c - clip(c, lo, hi),
        # S = -soft(e, lam / mu) on omega (0 elsewhere), X = clip(c + S, lo, hi)
        c = new_low + dual / mu
        excess = c - np.clip(c, lo, hi)
        new_sparse = np.where(omega, -soft_threshold(excess, lam / mu), 0.0)
        x = np.clip(c + new_sparse, lo, hi)
        residual = new_low + new_sparse - x
        dual = dual + mu * residual
        stop = max(
            float(np.abs(residual).max()),
            float(np.abs(new_low - low).max()),
            float(np.abs(new_sparse - sparse).max()),
        )
        low, sparse = new_low, new_sparse
        history.append(stop * scale)
        log.debug("%s iter %d: stop %.3e, rank %d, mu %.3e", label, it, stop, rank, mu)
        if stop < tol:
            converged = True
            break
        mu = min(rho * mu, mu_max)
    seconds = time.perf_counter() - started
    log_fn = log.info if converged else log.warning
    log_fn(
        "%s %s: %s after %d iterations (stop %.2e, rank %d, %.2f s)",
        label,
        x.shape,
        "converged" if converged else "not converged",
        it,
        history[-1] / scale if history else float("nan"),
        rank,
        seconds,
    )
    return RobustPCAResult(
        low_rank=low * scale + offset,
        sparse=sparse * scale,
        iterations=it,
        converged=converged,
        history=tuple(history),
        rank=rank,
        lam=lam,
        seconds=seconds,
    )


def qtrpca(
    codes: np.ndarray,
    edges: np.ndarray,
    omega: np.ndarray | None = None,
    *,
    lam: float | None = None,
    rho: float = 1.2,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> RobustPCAResult:
    r"""Quantized tensor robust PCA: low-rank + sparse from partial, quantized observations.

    Observations are :math:`\mathcal{Y} = Q(\mathcal{L} + \mathcal{S})` on :math:`\Omega` only,
    with :math:`Q` a known uniform quantizer (bin of entry ``i``: :math:`[\ell_i, u_i]`). Following
    Aidini et al. (2020) the estimate solves

    .. math:: \min_{\mathcal{L}, \mathcal{S}, \mathcal{X}}
              \|\mathcal{L}\|_* + \lambda\|P_\Omega(\mathcal{S})\|_1
              \quad\text{s.t.}\quad \mathcal{L} + \mathcal{S} = \mathcal{X},\;
              P_\Omega(\mathcal{X}) \in [\ell, u],\; P_{\Omega^c}(\mathcal{S}) = 0,

    where :math:`\|\cdot\|_*` is the tensor nuclear norm of the t-SVD (Lu et al. 2020) and the box
    is the quantization-consistency constraint: every entry of :math:`\mathcal{L}+\mathcal{S}` on
    :math:`\Omega` stays in its bin; entries off :math:`\Omega` are free. ADMM on the augmented
    Lagrangian :math:`\|\mathcal{L}\|_* + \lambda\|\mathcal{S}\|_1 + \iota(\mathcal{X}) +
    \langle\mathcal{Y}, \mathcal{L}+\mathcal{S}-\mathcal{X}\rangle +
    \tfrac{\mu}{2}\|\mathcal{L}+\mathcal{S}-\mathcal{X}\|_F^2` alternates two blocks:

    .. math::
        \mathcal{L}^{k+1} &= \mathcal{D}_{1/\mu}(\mathcal{X}^k - \mathcal{S}^k - \mathcal{Y}^k/\mu)
            \quad\text{(tensor SVT, } \texttt{tnn\_prox}\text{)} \\
        c &= \mathcal{L}^{k+1} + \mathcal{Y}^k/\mu,\quad e = c - \Pi_{[\ell,u]}(c) \\
        \mathcal{S}^{k+1} &= -P_\Omega\,\mathcal{S}_{\lambda/\mu}(e),\quad
        \mathcal{X}^{k+1} = \Pi_{[\ell,u]}(c + \mathcal{S}^{k+1}) \\
        \mathcal{Y}^{k+1} &= \mathcal{Y}^k + \mu(\mathcal{L}^{k+1}+\mathcal{S}^{k+1}-\mathcal{X}^{k+1}),
            \quad \mu \leftarrow \min(\rho\mu, \mu_{max})

    The ``(S, X)`` step is the exact joint minimiser (the sparse part pays only for the distance of
    ``c`` to the bin, less ``lambda / mu``), so this is a two-block ADMM. With exact values
    (``l = u``) it reduces to TRPCA with missing entries (:func:`trpca`). Stops when
    ``max(|L+S-X|, |dL|, |dS|) < tol`` (max norms on the centred, unit-variance data).

    **Why the t-SVD along time.** The TNN is orientation dependent: the FFT runs along the third
    mode and each Fourier slice is penalised as a matrix. With time last, each slice is a spatial
    ``y x x`` map of one temporal frequency. A land-surface background is a few spatial patterns
    (land cover, terrain, view geometry) modulated by shared temporal signals (seasonal trend,
    regional weather common to all pixels), so every frequency's map is close to low rank; a
    short, compact anomaly (a few pixels, one to three days) spreads over all frequencies but
    stays sparse in the original domain. The TNN has exact-recovery guarantees for this model
    (Lu et al. 2020, Thm. 4.1), its prox is exact and cheap (``n3 // 2 + 1`` SVDs of ``n1 x n2``),
    and unlike a sum of unfolding nuclear norms it needs no per-mode weights and no splitting.

    Parameters
    ----------
    codes : np.ndarray
        ``(n1, n2, n3) = (y, x, time)`` integer bin indices from :func:`quantize`.
    edges : np.ndarray
        ``(2**bits + 1,)`` bin edges from :func:`quantize`.
    omega : np.ndarray, optional
        ``(n1, n2, n3)`` bool, true where observed (default: all).
    lam : float, optional
        Sparsity weight; default :func:`default_lambda` ``= 1/sqrt(max(n1, n2) n3)``.
    rho : float
        Growth factor of the penalty ``mu`` (> 1); ``mu`` starts at ``1.25 / ||X||_2``
        (Lin, Chen and Ma, inexact ALM) and is capped at ``1e7`` times that.
    tol : float
        Stopping tolerance.
    max_iter : int
        Iteration cap.

    Returns
    -------
    RobustPCAResult
        ``L`` and ``S`` in the data's units, iterations and the convergence history.

    Shapes
    ------
    codes: (n1, n2, n3) int, omega: (n1, n2, n3) bool -> L, S: (n1, n2, n3) float64
    """
    codes = np.asarray(codes)
    omega = _check_inputs("codes", codes, omega)
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integer bin indices from quantize(); got dtype {codes.dtype}")
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"edges must be a strictly increasing 1-D array of bin edges; got shape {edges.shape}"
        )
    codes = np.where(omega, codes, 0)
    lower, upper = bin_bounds(codes, edges)
    lam = default_lambda(codes.shape) if lam is None else float(lam)
    return _admm(lower, upper, omega, prox=tnn_prox, lam=lam, rho=rho, tol=tol,
                 max_iter=max_iter, label="Q-TRPCA")


def trpca(
    y: np.ndarray,
    omega: np.ndarray | None = None,
    *,
    lam: float | None = None,
    rho: float = 1.2,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> RobustPCAResult:
    r"""TRPCA with missing entries (Lu et al. 2020): values on ``omega`` are taken as exact.

    .. math:: \min \|\mathcal{L}\|_* + \lambda\|P_\Omega\mathcal{S}\|_1
              \ \text{s.t.}\ P_\Omega(\mathcal{L} + \mathcal{S}) = P_\Omega(\mathcal{Y})

    Solved by the ADMM of :func:`qtrpca` with a zero-width box. As a baseline for quantized data,
    pass the dequantized values (bin centres, :func:`dequantize`).

    Shapes
    ------
    y: (n1, n2, n3) float (NaN allowed off omega), omega: (n1, n2, n3) bool -> L, S: (n1, n2, n3)
    """
    y = np.asarray(y, dtype=np.float64)
    omega = _check_inputs("y", y, omega)
    if not np.all(np.isfinite(y[omega])):
        raise ValueError("y must be finite on omega; mark NaN entries unobserved in omega")
    values = np.where(omega, y, 0.0)
    lam = default_lambda(y.shape) if lam is None else float(lam)
    return _admm(values, values, omega, prox=tnn_prox, lam=lam, rho=rho, tol=tol,
                 max_iter=max_iter, label="TRPCA")


def matrix_rpca(
    y: np.ndarray,
    omega: np.ndarray | None = None,
    *,
    lam: float | None = None,
    rho: float = 1.2,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> RobustPCAResult:
    r"""Matrix RPCA with missing entries on the ``time x pixels`` unfolding (Candes et al. 2011).

    .. math:: \min \|M(\mathcal{L})\|_* + \lambda\|P_\Omega\mathcal{S}\|_1
              \ \text{s.t.}\ P_\Omega(\mathcal{L} + \mathcal{S}) = P_\Omega(\mathcal{Y}),

    with :math:`M` the ``(n3, n1 n2)`` unfolding (one row per date) and
    :math:`\lambda = 1/\sqrt{\max(n_3, n_1 n_2)}` by default; same ADMM as :func:`qtrpca` with a
    matrix SVT for the ``L``-step and values taken as exact.

    Shapes
    ------
    y: (n1, n2, n3) float, omega: (n1, n2, n3) bool -> L, S: (n1, n2, n3)
    """
    y = np.asarray(y, dtype=np.float64)
    omega = _check_inputs("y", y, omega)
    if not np.all(np.isfinite(y[omega])):
        raise ValueError("y must be finite on omega; mark NaN entries unobserved in omega")
    n1, n2, n3 = y.shape

    def prox(t: np.ndarray, tau: float) -> tuple[np.ndarray, int]:
        m = t.reshape(n1 * n2, n3)  # (pixels, time): same singular values as (time, pixels)
        u, s, vh = np.linalg.svd(m, full_matrices=False)
        s = np.maximum(s - tau, 0)
        return ((u * s) @ vh).reshape(n1, n2, n3), int((s > 0).sum())

    values = np.where(omega, y, 0.0)
    lam = default_lambda((n3, n1 * n2)) if lam is None else float(lam)
    return _admm(values, values, omega, prox=prox, lam=lam, rho=rho, tol=tol,
                 max_iter=max_iter, label="matrix RPCA")


def robust_zscore(
    y: np.ndarray, omega: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-pixel robust z-score against the pixel's own median and MAD over time.

    .. math:: z_{ijt} = \frac{|y_{ijt} - \operatorname{med}_t y_{ij\cdot}|}
              {1.4826\,\operatorname{MAD}_t(y_{ij\cdot})}

    (Hampel's identifier; the MAD is floored at a tenth of the cube-wide median MAD so a flat pixel
    does not divide by zero). Pixels with no observation get background NaN and score 0.

    Returns
    -------
    score : np.ndarray
        ``(n1, n2, n3)`` z, zero off ``omega``.
    background : np.ndarray
        ``(n1, n2, n3)`` the per-pixel median repeated along time.
    """
    y = np.asarray(y, dtype=np.float64)
    omega = _check_inputs("y", y, omega)
    masked = np.where(omega, y, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        med = np.nanmedian(masked, axis=2, keepdims=True)
        mad = 1.4826 * np.nanmedian(np.abs(masked - med), axis=2, keepdims=True)
        floor = 0.1 * float(np.nanmedian(mad)) if np.isfinite(mad).any() else 1.0
        mad = np.where(np.isfinite(mad), np.maximum(mad, max(floor, 1e-12)), 1.0)
        score = np.where(omega, np.abs(masked - med) / mad, 0.0)
    background = np.broadcast_to(med, y.shape).copy()
    return np.nan_to_num(score), background



def robust_threshold(score: np.ndarray, omega: np.ndarray | None = None, *, k: float = 6.0,
                     floor: float = 0.0) -> float:
    r"""Flag threshold on anomaly scores: median + ``k`` robust deviations of the non-zero scores.

    .. math:: \tau = \max\big(\operatorname{med}(z) + k \cdot 1.4826\,\operatorname{MAD}(z),\
              \text{floor}\big), \qquad z = \{|s_i| : i \in \Omega,\ s_i \neq 0\}

    (Hampel's identifier on the scores; the zeros of a sparse ``S`` are left out, or the MAD of a
    mostly-zero ``|S|`` would be 0). ``floor`` is typically the quantizer's bin width: a deviation
    below one bin cannot be told from quantization. An entry is flagged when ``score > tau``.
    """
    score = np.abs(np.asarray(score, dtype=np.float64))
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"k must be finite and > 0; got k={k!r}")
    keep = score > 0 if omega is None else (score > 0) & omega
    z = score[keep]
    if z.size == 0:
        return max(float(floor), 0.0)
    med = float(np.median(z))
    return max(med + k * 1.4826 * float(np.median(np.abs(z - med))), float(floor))
