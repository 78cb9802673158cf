"""Tensor Decomposition Learning (TDL): learned orthonormal mode bases for tensor compression.

A. Aidini, G. Tsagkatakis and P. Tsakalides, "Tensor Decomposition Learning for Compression of
Multidimensional Signals", IEEE Journal of Selected Topics in Signal Processing 15(3), 2021.

From ``S`` training samples stacked as an ``(N+1)``-way tensor, one orthonormal basis
``D_n (I_n x R_n)`` per mode is learned by ADMM (:func:`tdl_fit`); a new sample is then compressed
to its core ``G = X x_1 D_1^T ... x_N D_N^T`` (:func:`project`), the core is quantized uniformly
(:func:`quantize`) and entropy coded (``fusion_models.entropy``), and decompressed as
``X ~ Q(G) x_1 D_1 ... x_N D_N`` (:func:`reconstruct`). :func:`hosvd_batch` is the per-sample
truncated HOSVD ("Tucker thresholding") the paper compares with, and :func:`fill_missing` the rule
by which unobserved (NaN) entries are filled before coding.

The codec (:class:`TDLCodec`, :func:`fit_codec`, :func:`encode`, :func:`decode`) adds to the
deck's transform what a transform coder needs to spend its bits well: the learned bases are
rotated within their spans so that the training core is all-orthogonal (energy ordered, as in the
HOSVD) and stored exactly orthonormal as quantized Givens angles (:func:`givens_angles`); the
quantization indices are chosen by rate-distortion optimisation (:func:`rdo_quantize`) for the
context-adaptive entropy coder of ``fusion_models.entropy``.

Layout: the deck stacks samples along the LAST mode ``N+1``; here samples come first (a batch of
patches ``(S, I_1, ..., I_N)``, e.g. ``(S, time, band, py, px)``), so the deck's mode ``N+1`` is our
mode 0 and its mode ``n`` is our mode ``n``. Unfoldings and mode products are tensorly's with the
PyTorch backend, set locally with ``tensorly.backend_context`` (no global backend switch).
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorly as tl
import torch
from tensorly.tenalg import multi_mode_dot
from torch import Tensor

from fusion_models.device import resolve_device

__all__ = [
    "RDO_LAMBDA",
    "TDLCodec",
    "TDLResult",
    "decode",
    "dequantize_core",
    "encode",
    "encode_indices",
    "fit_codec",
    "fill_missing",
    "givens_angles",
    "givens_basis",
    "hosvd_batch",
    "hosvd_reconstruct",
    "objective",
    "project",
    "quantize",
    "quantize_core",
    "dequantize",
    "rdo_quantize",
    "reconstruct",
    "step_for_bits",
    "tdl_fit",
]

log = logging.getLogger(__name__)

RDO_LAMBDA = math.log(2.0) / 6.0  # squared steps per bit: the high-rate slope (rdo_quantize)


@dataclass(frozen=True)
class TDLResult:
    """What :func:`tdl_fit` learned.

    Attributes
    ----------
    bases
        ``D_1 .. D_N``, each ``(I_n, R_n)`` float64 with orthonormal columns.
    sample_factor
        ``D_{N+1}`` ``(S, S)``, the factor along the sample mode.
    aux
        ``A`` ``(S, S)``, the nuclear-norm auxiliary variable (``A = D_{N+1}`` at convergence).
    core
        ``G`` ``(S, R_1, ..., R_N)`` of the training samples.
    objective
        ``1/2 ||X - G x_n D_n||_F^2 + lam ||A||_*`` at the start, then after each iteration.
    residual
        Primal residual ``||A - D_{N+1}||_F / sqrt(S)``, same positions.
    iterations, converged
        Iterations run; whether the relative objective change fell below ``tol``.
    """

    bases: tuple[Tensor, ...]
    sample_factor: Tensor
    aux: Tensor
    core: Tensor
    objective: tuple[float, ...]
    residual: tuple[float, ...]
    iterations: int
    converged: bool


def _check_ranks(ranks: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    ranks = tuple(int(r) for r in ranks)
    if len(ranks) != len(shape) or any(r < 1 or r > n for r, n in zip(ranks, shape, strict=False)):
        raise ValueError(
            f"ranks needs one entry per sample mode ({len(shape)} modes, sizes {tuple(shape)}), "
            f"each in 1..I_n; got ranks={ranks}. Pass e.g. ranks={tuple(max(1, n // 2) for n in shape)}"
        )
    return ranks


def _as_tensor(x: Tensor | np.ndarray, name: str, *, min_ndim: int = 3) -> Tensor:
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        raise TypeError(f"{name} must be a floating-point array; got dtype {t.dtype}")
    if t.ndim < min_ndim:
        raise ValueError(
            f"{name} must be (S, I_1, ..., I_N) with N >= {min_ndim - 1} sample modes; got shape "
            f"{tuple(t.shape)} (stack samples along the first axis)"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has NaN or infinite entries; fill them first (fill_missing)")
    return t


def project(x: Tensor | np.ndarray, bases: Sequence[Tensor]) -> Tensor:
    r"""Compression transform :math:`\mathcal{G} = \mathcal{X} \times_1 D_1^T \cdots \times_N D_N^T`.

    ``x: (S, I_1, ..., I_N) -> (S, R_1, ..., R_N)`` in the dtype of ``bases``.
    """
    t = torch.as_tensor(x)
    if t.ndim != len(bases) + 1 or any(
        t.shape[n + 1] != b.shape[0] for n, b in enumerate(bases)
    ):
        raise ValueError(
            f"x must be (S, {', '.join(str(b.shape[0]) for b in bases)}) for these bases; got "
            f"shape {tuple(t.shape)}"
        )
    with tl.backend_context("pytorch"):
        return multi_mode_dot(t.to(bases[0].dtype), list(bases), modes=range(1, t.ndim),
                              transpose=True)


def reconstruct(core: Tensor | np.ndarray, bases: Sequence[Tensor]) -> Tensor:
    r"""Decompression :math:`\hat{\mathcal{X}} = \mathcal{G} \times_1 D_1 \cdots \times_N D_N`.

    ``core: (S, R_1, ..., R_N) -> (S, I_1, ..., I_N)``.
    """
    g = torch.as_tensor(core)
    if g.ndim != len(bases) + 1 or any(g.shape[n + 1] != b.shape[1] for n, b in enumerate(bases)):
        raise ValueError(
            f"core must be (S, {', '.join(str(b.shape[1]) for b in bases)}) for these bases; got "
            f"shape {tuple(g.shape)}"
        )
    with tl.backend_context("pytorch"):
        return multi_mode_dot(g.to(bases[0].dtype), list(bases), modes=range(1, g.ndim))


def objective(x: Tensor, core: Tensor, bases: Sequence[Tensor], sample_factor: Tensor,
              aux: Tensor, lam: float) -> float:
    r"""The TDL objective
    :math:`\tfrac12\|\mathcal{X} - \mathcal{G} \times_1 D_1 \cdots \times_{N+1} D_{N+1}\|_F^2
    + \lambda \|A\|_*` (sample mode = our mode 0)."""
    with tl.backend_context("pytorch"):
        fit = tl.tenalg.mode_dot(reconstruct(core, bases), sample_factor, 0)
    nuclear = torch.linalg.svdvals(aux).sum()
    return float(0.5 * torch.sum((x - fit) ** 2) + lam * nuclear)


def _objective_projected(x_sq: float | None, z: Tensor, core: Tensor, sample_factor: Tensor, aux: Tensor,
                         lam: float) -> float:
    r""":func:`objective` without forming the reconstruction, for orthonormal bases.

    With :math:`\mathcal{Z} = \mathcal{X} \times_1 D_1^T \cdots \times_N D_N^T` (``z``, which the
    sample-factor update forms anyway), :math:`P` the projection onto the bases' span and
    :math:`\mathcal{H} = \mathcal{G} \times_{N+1} D_{N+1}`,

    .. math:: \|\mathcal{X} - \mathcal{H} \times_1 D_1 \cdots \times_N D_N\|^2
              = \|\mathcal{X} - P\mathcal{X}\|^2 + \|\mathcal{Z} - \mathcal{H}\|^2,
              \qquad \|\mathcal{X} - P\mathcal{X}\|^2 = \|\mathcal{X}\|^2 - \|\mathcal{Z}\|^2

    (Pythagoras, :math:`D_n^T D_n = I`): one mode product on the core instead of ``N + 1`` on the
    full tensor. ``x_sq`` is :math:`\|\mathcal{X}\|_F^2`, or ``None`` at full ranks, where the
    bases are square and orthogonal and the first term is exactly 0 (a difference of two large
    sums would leave their rounding, about :math:`10^{-16}\|\mathcal{X}\|^2`, in its place).
    """
    with tl.backend_context("pytorch"):
        h = tl.tenalg.mode_dot(core, sample_factor, 0)
    outside = 0.0 if x_sq is None else max(x_sq - float(torch.sum(z * z)), 0.0)
    nuclear = torch.linalg.svdvals(aux).sum()
    return float(0.5 * (outside + torch.sum((z - h) ** 2)) + lam * nuclear)


def _svt(m: Tensor, tau: float) -> Tensor:
    """Singular value thresholding ``U max(S - tau, 0) V^T`` (Cai, Candes and Shen 2010)."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u * torch.clamp(s - tau, min=0)) @ vh


def _leading(m: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading left singular vectors of ``m`` (via the Gram matrix, ``m`` is wide)."""
    gram = m @ m.T
    _, vecs = torch.linalg.eigh(gram)
    return vecs[:, -rank:].flip(1).contiguous()


def _lstsq_right(b: Tensor, gram: Tensor) -> Tensor:
    """``b gram^+``: the minimum-norm least-squares solution ``X`` of ``X gram = b`` for the
    symmetric positive semi-definite ``gram = C C^T`` of the basis update's normal equations.

    ``gram`` is singular when the training tensor's mode-``n`` rank is below ``R_n`` (two identical
    dates, collinear bands, a constant cube: core slices that are zero), where a plain solve fails;
    the pseudo-inverse (eigenvalues below ``R_n`` machine epsilons of the largest count as zero)
    gives those directions a zero column, and the QR that follows completes the basis with
    orthonormal columns. Where ``gram`` is regular this is the solve's solution.
    """
    return b @ torch.linalg.pinv((gram + gram.T) / 2, hermitian=True)


def tdl_fit(
    x: Tensor | np.ndarray,
    ranks: Sequence[int],
    *,
    lam: float = 1e-3,
    rho: float = 0.01,
    iters: int = 30,
    tol: float = 1e-6,
    device: torch.device | str | None = None,
    callback: Callable[[int, float], object] | None = None,
) -> TDLResult:
    r"""Learn one orthonormal basis per mode from ``S`` samples by ADMM (Aidini et al. 2021).

    Solves

    .. math:: \min_{\mathcal{G}, D_1..D_{N+1}, A} \tfrac12\|\mathcal{X} - \mathcal{G} \times_1 D_1
              \cdots \times_N D_N \times_{N+1} D_{N+1}\|_F^2 + \lambda\|A\|_*
              \quad \text{s.t.}\ A = D_{N+1},\ D_n^T D_n = I_{R_n}

    on the augmented Lagrangian with multiplier ``Y`` and step ``p = rho``, one block at a time:

    1. ``A <- SVT_{lam/rho}(D_{N+1} - Y / rho)`` (the proximal step of the nuclear norm; the deck
       writes the threshold as ``B_lambda``, its scaling by ``1/rho`` is what makes it the
       minimiser of the ``A``-part of the Lagrangian);
    2. for ``n = 1..N``: ``D^_n <- X_(n) C_(n)^T (C_(n) C_(n)^T)^{-1}`` with
       ``C_n = G x_{k != n} D_k`` (all other modes, the sample mode included), ``(Q, R) <- QR(D^_n)``,
       ``D_n <- Q[:, :R_n]``; the inverse is a pseudo-inverse (:func:`_lstsq_right`), so a
       training tensor of mode-``n`` rank below ``R_n`` (rank-deficient ``C_(n) C_(n)^T``) still
       gets an orthonormal ``D_n`` that spans its mode-``n`` subspace;
    3. ``D_{N+1} <- (X_(N+1) C_(N+1)^T + Y + rho A)(C_(N+1) C_(N+1)^T + rho I_S)^{-1}``;
    4. ``G <- X x_1 D_1^T ... x_N D_N^T x_{N+1} D_{N+1}^{-1}`` (a least-squares solve);
    5. ``Y <- Y + rho (A - D_{N+1})``.

    The products are formed without building ``C_n``: ``X_(n) C_(n)^T = [X x_{k != n} D_k^T]_(n)
    G_(n)^T`` and ``C_(n) C_(n)^T = G_(n) [G x_{k != n} D_k^T D_k]_(n)^T``. The bases start from
    the truncated HOSVD of the training tensor, ``D_{N+1} = A = I``, ``Y = 0``.

    Parameters
    ----------
    x
        ``(S, I_1, ..., I_N)`` float, finite: ``S`` training samples (e.g. patches ``(S, T, C, H, W)``).
    ranks
        ``(R_1, ..., R_N)``, ``1 <= R_n <= I_n``.
    lam
        Nuclear-norm weight ``lambda > 0`` on ``A``, in the units of ``||X||_F^2`` (scale ``x``
        to unit variance for the default to be mild).
    rho
        ADMM step ``p > 0`` (the deck uses 0.01).
    iters
        Maximum iterations.
    tol
        Stop when the relative change of the objective is below ``tol``.
    device
        Torch device (default: ``cuda`` when available, else CPU). Computation is float64.
    callback
        Called as ``callback(iteration, objective)`` after each iteration (a progress bar).

    Returns
    -------
    TDLResult
        Bases, sample factor, auxiliary, core and the objective history (on CPU).
    """
    t = _as_tensor(x, "x")
    shape = tuple(t.shape[1:])
    ranks = _check_ranks(ranks, shape)
    for name, val in (("lam", lam), ("rho", rho), ("tol", tol)):
        if not (math.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be finite and > 0; got {name}={val!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1; got iters={iters!r}")
    dev = resolve_device(device)
    x64 = t.to(dev, torch.float64)  # (S, I_1, ..., I_N)
    s = x64.shape[0]
    n_modes = len(shape)
    eye = torch.eye(s, dtype=torch.float64, device=dev)
    history: list[float] = []
    residuals: list[float] = []
    converged = False
    with tl.backend_context("pytorch"):
        bases = [_leading(tl.unfold(x64, n + 1), ranks[n]) for n in range(n_modes)]
        ds = eye.clone()  # D_{N+1}
        aux = eye.clone()  # A
        mult = torch.zeros_like(eye)  # Y
        x_sq = None if ranks == shape else float(torch.sum(x64 * x64))  # see _objective_projected
        core = multi_mode_dot(x64, bases, modes=range(1, n_modes + 1), transpose=True)
        history.append(_objective_projected(x_sq, core, core, ds, aux, lam))  # at the HOSVD start
        residuals.append(0.0)
        it = 0
        for it in range(1, iters + 1):
            # 1. auxiliary A: singular value thresholding
            aux = _svt(ds - mult / rho, lam / rho)
            # 2. basis of each mode: least squares, then QR. D_{N+1} and G stay fixed here, so
            # X x_{N+1} D_{N+1}^T and G x_{k != n} D_k^T D_k (= G x_{N+1} D_{N+1}^T D_{N+1}, the
            # other bases being orthonormal) are formed once for every mode
            xd = tl.tenalg.mode_dot(x64, ds.T, 0)
            w = tl.tenalg.mode_dot(core, ds.T @ ds, 0)
            for n in range(n_modes):
                others = [m for m in range(n_modes) if m != n]
                z = multi_mode_dot(xd, [bases[m] for m in others], modes=[m + 1 for m in others],
                                   transpose=True)  # X x_{k != n} D_k^T, (S, .., I_n, ..)
                xc = tl.unfold(z, n + 1) @ tl.unfold(core, n + 1).T  # X_(n) C_(n)^T (I_n, R_n)
                cc = tl.unfold(core, n + 1) @ tl.unfold(w, n + 1).T  # C_(n) C_(n)^T (R_n, R_n)
                d_hat = _lstsq_right(xc, cc)  # (I_n, R_n)
                q, _ = torch.linalg.qr(d_hat)
                bases[n] = q[:, : ranks[n]]
            # 3. sample factor D_{N+1}: closed form
            z = multi_mode_dot(x64, bases, modes=range(1, n_modes + 1), transpose=True)  # (S, R..)
            xc = tl.unfold(z, 0) @ tl.unfold(core, 0).T  # X_(N+1) C^T, (S, S)
            cc = tl.unfold(core, 0) @ tl.unfold(core, 0).T  # C C^T (bases orthonormal)
            ds = torch.linalg.solve(cc + rho * eye, (xc + mult + rho * aux).T).T
            # 4. core: G = X x_n D_n^T x_{N+1} D_{N+1}^{-1}
            core_mat = torch.linalg.lstsq(ds, tl.unfold(z, 0)).solution
            core = tl.fold(core_mat, 0, tuple(z.shape))
            # 5. multiplier
            mult = mult + rho * (aux - ds)
            obj = _objective_projected(x_sq, z, core, ds, aux, lam)  # z: X x_n D_n^T, step 3
            history.append(obj)
            residuals.append(float(torch.linalg.norm(aux - ds) / math.sqrt(s)))
            log.debug("tdl iter %d: objective %.6g, residual %.3g", it, obj, residuals[-1])
            if callback is not None:
                callback(it, obj)
            if len(history) > 1 and abs(history[-2] - obj) <= tol * max(abs(history[-2]), 1e-30):
                converged = True
                break
    log.info("tdl: %d samples %s -> ranks %s, %d iterations, objective %.6g (%s)", s, shape, ranks,
             it, history[-1], "converged" if converged else "not converged")
    return TDLResult(
        bases=tuple(b.cpu() for b in bases),
        sample_factor=ds.cpu(),
        aux=aux.cpu(),
        core=core.cpu(),
        objective=tuple(history),
        residual=tuple(residuals),
        iterations=it,
        converged=converged,
    )


def hosvd_batch(x: Tensor | np.ndarray, ranks: Sequence[int]) -> tuple[Tensor, tuple[Tensor, ...]]:
    r"""Truncated HOSVD of every sample on its own (the "Tucker thresholding" baseline).

    For each sample ``X^s``: ``U_n^s`` = the ``R_n`` leading left singular vectors of ``X^s_(n)``
    and ``G^s = X^s x_1 U_1^{sT} ... x_N U_N^{sT}`` (De Lathauwer, De Moor and Vandewalle, SIAM
    J. Matrix Anal. Appl. 21(4), 2000).

    ``x: (S, I_1, ..., I_N) -> core (S, R_1, ..., R_N), factors ((S, I_n, R_n) for each n)``.
    """
    t = _as_tensor(x, "x").to(torch.float64)
    shape = tuple(t.shape[1:])
    ranks = _check_ranks(ranks, shape)
    factors = []
    core = t
    for n in range(len(shape)):
        mat = torch.movedim(t, n + 1, 1).reshape(t.shape[0], shape[n], -1)  # (S, I_n, rest)
        _, vecs = torch.linalg.eigh(mat @ mat.transpose(1, 2))  # (S, I_n, I_n), ascending
        u = vecs[:, :, -ranks[n]:].flip(2)  # (S, I_n, R_n)
        factors.append(u)
        core = _batched_mode(core, u, n + 1)  # mode-n product with U_n^T per sample
    return core, tuple(factors)


def _batched_mode(t: Tensor, m: Tensor, mode: int) -> Tensor:
    """Per-sample mode product: ``t[s] x_mode m[s]^T`` for ``t (S, ..., I, ...)``, ``m (S, I, J)``."""
    moved = torch.movedim(t, mode, -1)  # (S, ..., I)
    lead = moved.shape[:-1]
    out = moved.reshape(t.shape[0], -1, moved.shape[-1]) @ m  # (S, rest, J)
    return torch.movedim(out.reshape(*lead, m.shape[-1]), -1, mode)


def hosvd_reconstruct(core: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """``core (S, R_1..R_N)``, ``factors (S, I_n, R_n)`` -> ``(S, I_1, ..., I_N)``."""
    out = core
    for n, u in enumerate(factors):
        out = _batched_mode(out, u.transpose(1, 2), n + 1)
    return out


def step_for_bits(values: Tensor | np.ndarray, bits: int) -> float:
    """The step of a symmetric ``bits``-bit uniform quantizer covering ``[-max|v|, max|v|]``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24:
        raise ValueError(f"bits must be an integer in 1..24; got bits={bits!r}")
    peak = float(torch.as_tensor(values).abs().max())
    levels = 2**bits - 1
    return 2 * peak / max(levels - 1, 1) if peak > 0 else 1.0


def quantize(values: Tensor | np.ndarray, step: float, *, deadzone: float = 0.0) -> np.ndarray:
    r"""Uniform quantizer with step :math:`\Delta` (int32 indices), optionally with a dead zone.

    :math:`q = \operatorname{sign}(v)\,\lfloor |v| / \Delta + 1/2 - \theta \rfloor^+`, with
    ``theta = deadzone`` in ``[0, 1/2)``; ``theta = 0`` is plain rounding (mid-tread). The
    reconstruction levels ``q * step`` (:func:`dequantize`) are uniform either way; a dead zone
    sends more small coefficients to 0, which pays at low rates for Laplacian coefficients
    (G. J. Sullivan, "Efficient scalar quantization of exponential and Laplacian random variables",
    IEEE Trans. Inf. Theory 42(5), 1996). The error is at most ``step * (1/2 + theta)``.
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be finite and > 0; got step={step!r}")
    if not 0.0 <= deadzone < 0.5:
        raise ValueError(f"deadzone must be in [0, 0.5) (a share of the step); got deadzone={deadzone!r}")
    v = torch.as_tensor(values).to(torch.float64)
    q = torch.sign(v) * torch.clamp(torch.floor(v.abs() / step + 0.5 - deadzone), min=0)
    if q.numel() and float(q.abs().max()) >= 2**30:
        raise ValueError(
            f"step={step!r} is too small for values up to {float(v.abs().max()):.4g}: indices "
            "overflow int32; use a larger step or fewer bits"
        )
    return q.to(torch.int32).numpy()


def rdo_quantize(values: Tensor | np.ndarray, step: float, prior: np.ndarray, *,
                 lam: float = RDO_LAMBDA, passes: int = 2) -> np.ndarray:
    r"""Rate-distortion optimised quantization of cores for the context coder.

    Each coefficient ``a = v / step`` takes the index among ``{0, floor|a|, floor|a| + 1}``
    (with the sign of ``a``) that minimises the Lagrangian

    .. math:: J(q) = (a - q)^2 + \lambda\, R(q),

    distortion in squared steps (the bases are orthonormal, so it is the error of the
    reconstruction) and ``R`` the code length in bits under the context-adaptive Laplace model of
    ``fusion_models.entropy`` (context taken from the previous pass, fitted to it; the first
    pass starts from dead-zone rounding). ``lam`` is in squared steps per bit: high-rate theory
    gives ``dD/dR = -2 ln 2 D`` with ``D = 1/12``, i.e. ``lam = ln 2 / 6 ~ 0.116`` (G. J. Sullivan and
    T. Wiegand, "Rate-distortion optimization for video compression", IEEE Signal Process. Mag.
    15(6), 1998; the same trellis-free choice as HEVC's RDOQ, M. Karczewicz et al., 2008).

    Parameters
    ----------
    values
        ``(P, R_1, ..., R_N)`` core coefficients.
    step
        Quantizer step.
    prior
        ``(R_1, ..., R_N)`` prior Laplace scales in steps (the codec's ``spread / step``).
    lam
        Lagrange multiplier ``>= 0`` (0: plain rounding).
    passes
        Refinements of the context model and the decisions.

    Returns
    -------
    np.ndarray
        ``int32`` indices, the shape of ``values``.
    """
    from fusion_models.entropy import context_model

    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be finite and >= 0 (squared steps per bit); got lam={lam!r}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be an integer >= 1; got passes={passes!r}")
    if lam == 0:
        return quantize(values, step)
    q = quantize(values, step, deadzone=0.2)
    if q.size == 0:
        return q
    a = torch.as_tensor(values).to(torch.float64).numpy() / step
    # below half a step 0 is both nearer and cheaper (P(0) >= P(+-1)): decide the rest only
    live = np.flatnonzero(np.abs(a) >= 0.5)
    mag = np.abs(a.ravel()[live])
    lo = np.floor(mag)
    sign = np.sign(a.ravel()[live])
    for _ in range(passes):
        b = context_model(q, prior)[1].ravel()[live]
        # code lengths (bits): 0 -> -log2 P(0); k > 0 -> 1 - log2(1 - e^{-1/b}) + (k - 1/2) / (b ln 2)
        zero_bits = -np.log2(-np.expm1(-0.5 / b))
        base_bits = 1.0 - np.log2(-np.expm1(-1.0 / b))
        slope = 1.0 / (b * np.log(2.0))
        cost_zero = mag**2 + lam * zero_bits
        cost_lo = np.where(lo > 0, (mag - lo) ** 2 + lam * (base_bits + (lo - 0.5) * slope), np.inf)
        cost_hi = (lo + 1 - mag) ** 2 + lam * (base_bits + (lo + 0.5) * slope)
        best = np.where(cost_lo < cost_hi, lo, lo + 1)
        best = np.where(cost_zero <= np.minimum(cost_lo, cost_hi), 0.0, best)
        flat = q.ravel()  # a copy when q is not contiguous: write it back
        flat[live] = (sign * best).astype(np.int32)
        q = flat.reshape(a.shape)
    return q


def dequantize(q: np.ndarray, step: float) -> Tensor:
    """Indices back to values: ``q * step`` (float64)."""
    return torch.as_tensor(np.asarray(q), dtype=torch.float64) * step


def fill_missing(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Fill unobserved entries of patches before transform coding; observed entries are unchanged.

    Rule, for patches ``(P, T, C, H, W)`` (or ``(P, T, H, W)``): an unobserved entry takes the mean
    of the observed entries of its patch at the same date and band; when that date has none, the
    mean of its patch and band over all dates; when the patch has none, the mean of all observed
    entries of that band over all patches (0 when there is none at all). A smooth fill costs few
    bits in any transform coder; the decoder puts NaN back from the losslessly coded mask.

    Parameters
    ----------
    x
        ``(P, T, [C,] H, W)`` float with NaN (or anything) where not observed.
    observed
        Boolean, same shape as ``x``.

    Returns
    -------
    np.ndarray
        Same shape and dtype as ``x``, finite.
    """
    x = np.asarray(x)
    observed = np.asarray(observed, dtype=bool)
    if x.shape != observed.shape or x.ndim < 4:
        raise ValueError(
            f"x and observed must have the same shape (P, T, [C,] H, W); got {x.shape} and "
            f"{observed.shape}"
        )
    obs = observed & np.isfinite(x)
    vals = np.where(obs, x, 0.0).astype(np.float64)
    space = (-2, -1)
    band_axes = (0, 1, -2, -1)  # every axis but the band axis of (P, T, C, H, W)

    def mean(axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        cnt = obs.sum(axis=axes, keepdims=True)
        return vals.sum(axis=axes, keepdims=True) / np.maximum(cnt, 1), cnt > 0

    m_global, has_global = mean(band_axes)
    m_patch, has_patch = mean((1, -2, -1))
    m_date, has_date = mean(space)
    fill = np.where(has_global, m_global, 0.0)
    fill = np.where(has_patch, m_patch, fill)
    fill = np.where(has_date, m_date, fill)
    return np.where(obs, x, np.broadcast_to(fill, x.shape)).astype(x.dtype, copy=False)


# --- codec: bases + quantizer + entropy coder ---------------------------------------------------

_CODEC_HEAD = struct.Struct("<BddB")  # N, offset, scale, angle bits


def _givens_pairs(rows: int, cols: int) -> list[tuple[int, int]]:
    """``(i, j)``: the rotation in the plane of rows ``i - 1, i`` that zeroes entry ``(i, j)``."""
    return [(i, j) for j in range(cols) for i in range(rows - 1, j, -1)]


def givens_angles(basis: np.ndarray) -> np.ndarray:
    r"""The Givens angles of an orthonormal ``(I, R)`` basis (``I R - R (R + 1) / 2`` of them).

    Column by column, rotations in the planes of rows ``(i - 1, i)``, ``i = I - 1 .. j + 1``, with
    :math:`\theta = \arctan(d_{ij} / d_{i-1,j}) \in [-\pi/2, \pi/2]` zero the entries below the
    diagonal, leaving ``[diag(+-1); 0]`` (G. H. Golub and C. F. Van Loan, "Matrix Computations",
    4th ed., 2013, 5.1.8). :func:`givens_basis` rebuilds the basis up to the signs of its columns
    (a free gauge of a Tucker model: a flipped column flips its core slice) and, from quantized
    angles, an exactly orthonormal one: the parametrisation of the Stiefel manifold that a stored
    codec needs, with about half the numbers of the matrix.
    """
    a = np.array(basis, dtype=np.float64)
    rows, cols = a.shape
    angles = np.zeros(len(_givens_pairs(rows, cols)))
    for k, (i, j) in enumerate(_givens_pairs(rows, cols)):
        theta = math.atan2(a[i, j], a[i - 1, j])
        theta -= math.pi * round(theta / math.pi)  # into [-pi/2, pi/2]: the pivot's sign is free
        c, s = math.cos(theta), math.sin(theta)
        a[i - 1], a[i] = c * a[i - 1] + s * a[i], -s * a[i - 1] + c * a[i]
        angles[k] = theta
    return angles


def givens_basis(angles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Inverse of :func:`givens_angles`: the orthonormal ``(rows, cols)`` float64 basis."""
    pairs = _givens_pairs(rows, cols)
    if len(angles) != len(pairs):
        raise ValueError(f"a ({rows}, {cols}) basis has {len(pairs)} Givens angles; got {len(angles)}")
    a = np.eye(rows, cols)
    for (i, _), theta in zip(reversed(pairs), np.asarray(angles, dtype=np.float64)[::-1], strict=True):
        c, s = math.cos(theta), math.sin(theta)
        a[i - 1], a[i] = c * a[i - 1] - s * a[i], s * a[i - 1] + c * a[i]
    return a


@dataclass(frozen=True, eq=False)
class TDLCodec:
    """A fitted TDL transform coder: everything a decoder needs besides the bitstream.

    ``x_norm = (x - offset) / scale``; cores ``G = x_norm x_n D_n^T``. Each basis is stored as its
    Givens angles (:func:`givens_angles`) quantized to ``angle_bits`` bits over ``[-pi/2, pi/2]``
    and rANS-coded, so ``D_n`` is the exactly orthonormal basis the decoder rebuilds from them
    (:func:`givens_basis`); the core is coded with context-adaptive Laplace models whose prior
    scale per core position is the separable model ``exp(sum_n profiles[n][r_n])`` (normalised
    units, divided by the step at coding time; ``fusion_models.entropy.separable_profiles``,
    stored as float16).
    """

    angles: tuple[np.ndarray, ...]  # int32 quantized Givens angles per mode
    shapes: tuple[tuple[int, int], ...]  # (I_n, R_n)
    offset: float
    scale: float
    profiles: tuple[np.ndarray, ...]  # (R_n,) float16 log-scale profiles
    angle_bits: int = 8
    _bases: tuple[np.ndarray, ...] = field(init=False, repr=False)

    @property
    def bases(self) -> tuple[np.ndarray, ...]:
        """``D_n`` ``(I_n, R_n)`` float32, rebuilt from the stored angles."""
        return self._bases

    def __post_init__(self) -> None:
        unit = math.pi / 2**self.angle_bits
        bases = tuple(givens_basis(np.asarray(a, np.float64) * unit, i, r).astype(np.float32)
                      for a, (i, r) in zip(self.angles, self.shapes, strict=True))
        object.__setattr__(self, "_bases", bases)

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(r for _, r in self.shapes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(i for i, _ in self.shapes)

    @property
    def spread(self) -> np.ndarray:
        """Laplace scale per core position ``(R_1, ..., R_N)`` in normalised units."""
        from fusion_models.entropy import separable_scale

        return separable_scale(self.profiles)

    def to_bytes(self) -> bytes:
        """The stored codec: a header (``N``, offset, scale, angle bits, the shapes), the float16
        profiles, then per mode the quantized angles, rANS-coded with one Laplace scale per mode
        (float32 in the header)."""
        from fusion_models.entropy import encode_laplace

        head = _CODEC_HEAD.pack(len(self.shapes), self.offset, self.scale, self.angle_bits)
        head += np.array([d for shp in self.shapes for d in shp], dtype="<u2").tobytes()
        head += b"".join(np.asarray(p, dtype="<f2").tobytes() for p in self.profiles)
        body = b""
        for q in self.angles:
            spread = np.float32(max(float(np.abs(q).mean()) if q.size else 0.0, 0.1))
            coded = encode_laplace(np.asarray(q, np.int32), 0.0, np.full(q.shape, spread)) if q.size else b""
            body += struct.pack("<fI", spread, len(coded)) + coded
        return head + body

    @classmethod
    def from_bytes(cls, data: bytes) -> TDLCodec:
        """Inverse of :meth:`to_bytes`."""
        from fusion_models.entropy import decode_laplace

        n, offset, scale, bits = _CODEC_HEAD.unpack_from(data)
        at = _CODEC_HEAD.size
        dims = np.frombuffer(data, dtype="<u2", count=2 * n, offset=at).reshape(n, 2)
        at += 4 * n
        shapes = tuple((int(i), int(r)) for i, r in dims)
        profiles = []
        for _, r in shapes:
            profiles.append(np.frombuffer(data, dtype="<f2", count=r, offset=at).copy())
            at += 2 * r
        angles = []
        for i, r in shapes:
            spread, size = struct.unpack_from("<fI", data, at)
            at += 8
            count = len(_givens_pairs(i, r))
            angles.append(decode_laplace(data[at:at + size], 0.0, np.full(count, spread), (count,))
                          if count else np.zeros(0, np.int32))
            at += size
        return cls(angles=tuple(angles), shapes=shapes, offset=offset, scale=scale,
                   profiles=tuple(profiles), angle_bits=bits)

    def side_bits(self) -> int:
        """Bits to store the codec (:meth:`to_bytes`)."""
        return 8 * len(self.to_bytes())


def _all_orthogonal(bases: Sequence[Tensor], core: Tensor) -> tuple[Tensor, ...]:
    """Rotate each basis within its span so that the training core is all-orthogonal.

    A Tucker model is defined up to a rotation per mode, ``G x_n D_n = (G x_n U_n^T) x_n (D_n U_n)``
    for orthogonal ``U_n``; with ``U_n`` the eigenvectors of ``G_(n) G_(n)^T`` (descending
    eigenvalues) the core's mode-``n`` slices are mutually orthogonal and ordered by energy, as in
    the HOSVD (De Lathauwer et al. 2000). The learned subspaces and the fit are unchanged; the
    energy is compacted towards low indices, which the entropy coder's context model exploits.
    """
    g = core.to(torch.float64)
    out = []
    for n, d in enumerate(bases):
        mat = torch.movedim(g, n + 1, 0).reshape(g.shape[n + 1], -1)  # G_(n) over all samples
        _, vecs = torch.linalg.eigh(mat @ mat.T)
        out.append(d.to(torch.float64) @ vecs.flip(1))  # descending energy
    return tuple(out)


def fit_codec(train: np.ndarray, ranks: Sequence[int], *, angle_bits: int = 8,
              **tdl_kwargs: object) -> tuple[TDLCodec, TDLResult]:
    """Learn the bases of a codec by :func:`tdl_fit` on finite training patches ``(S, I_1..I_N)``.

    The learned bases are rotated within their spans to make the training core all-orthogonal
    (:func:`_all_orthogonal`), stored as Givens angles of ``angle_bits`` bits (:class:`TDLCodec`),
    and the Laplace profiles fitted to the training cores under the stored bases.

    At full ranks (``R_n = I_n``) every span is the whole space, so that rotation makes the stored
    bases the per-mode KLT (the HOSVD bases) of the training patches whatever :func:`tdl_fit`
    found: the ADMM shapes a codec only at truncated ranks, through the spans it picks.
    """
    x = np.asarray(train, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("train has NaN or infinite entries; fill them first (fill_missing)")
    if isinstance(angle_bits, bool) or not isinstance(angle_bits, int) or not 3 <= angle_bits <= 16:
        raise ValueError(f"angle_bits must be an integer in 3..16; got angle_bits={angle_bits!r}")
    offset, scale = float(x.mean()), float(x.std()) or 1.0
    xn = torch.from_numpy((x - offset) / scale)
    res = tdl_fit(xn, ranks, **tdl_kwargs)  # type: ignore[arg-type]
    from fusion_models.entropy import separable_profiles

    unit = math.pi / 2**angle_bits
    bases = _all_orthogonal(res.bases, project(xn, res.bases))
    angles = tuple(np.rint(givens_angles(b.numpy()) / unit).astype(np.int32) for b in bases)
    shapes = tuple((int(b.shape[0]), int(b.shape[1])) for b in bases)
    draft = TDLCodec(angles=angles, shapes=shapes, offset=offset, scale=scale,
                     profiles=tuple(np.zeros(r, np.float16) for _, r in shapes), angle_bits=angle_bits)
    core = project(torch.from_numpy(((x - offset) / scale).astype(np.float32)),
                   [torch.from_numpy(b) for b in draft.bases]).numpy()
    profiles = separable_profiles(np.mean(np.abs(core), axis=0))
    codec = TDLCodec(angles=angles, shapes=shapes, offset=offset, scale=scale, profiles=profiles,
                     angle_bits=angle_bits)
    return codec, res


#: a bitstream's header: a mark, the number of patches, the CRC-32 of its rANS code and the step
_HEAD = struct.Struct("<4sIId")
_MARK = b"TDL\x02"
#: the header of streams written before it held the count and checksum: the step alone
_STEP = struct.Struct("<d")


def quantize_core(codec: TDLCodec, x: np.ndarray, step: float, *, lam: float = RDO_LAMBDA,
                  deadzone: float = 0.2) -> np.ndarray:
    """Project finite patches ``(P, I_1..I_N)`` on the codec's bases and quantize their cores with
    ``step`` (normalised units): rate-distortion optimised for the context coder when ``lam > 0``
    (:func:`rdo_quantize`), else the dead-zone quantizer (:func:`quantize`). ``int32 (P, R_1..R_N)``."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != len(codec.shape) + 1 or arr.shape[1:] != codec.shape:
        raise ValueError(f"x must be (P, {', '.join(map(str, codec.shape))}) for this codec; got {arr.shape}")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be finite and > 0; got step={step!r}")
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"x has {bad} NaN or infinite entries; fill them first (fill_missing)")
    bases = [torch.from_numpy(b) for b in codec.bases]
    core = project(torch.from_numpy((arr - np.float32(codec.offset)) / np.float32(codec.scale)), bases)
    if lam > 0:
        return rdo_quantize(core, step, codec.spread / step, lam=lam)
    return quantize(core, step, deadzone=deadzone)


def encode(codec: TDLCodec, x: np.ndarray, step: float, *, lam: float = RDO_LAMBDA,
           deadzone: float = 0.2) -> bytes:
    """Compress finite patches ``(P, I_1..I_N)``: project, quantize with ``step`` (normalised units;
    :func:`quantize_core`), rANS-code the indices with context-adaptive Laplace models
    (``fusion_models.entropy.encode_context_laplace``). Returns the bitstream (the patch count,
    a checksum and the step in its header)."""
    return encode_indices(codec, quantize_core(codec, x, step, lam=lam, deadzone=deadzone), step)


def encode_indices(codec: TDLCodec, q: np.ndarray, step: float) -> bytes:
    """The bitstream of quantized cores ``q (P, R_1..R_N)`` (:func:`quantize_core` with ``step``):
    a 20-byte header (a mark, ``P``, the code's CRC-32, the step), then the context-adaptive rANS
    code."""
    from fusion_models.entropy import encode_context_laplace

    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be finite and > 0; got step={step!r}")
    if np.shape(q)[1:] != codec.ranks:
        raise ValueError(f"q must be (P, {', '.join(map(str, codec.ranks))}) for this codec; got {np.shape(q)}")
    code = encode_context_laplace(q, codec.spread / step)
    return _HEAD.pack(_MARK, len(q), zlib.crc32(code), step) + code


def decode(codec: TDLCodec, data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`encode` for ``n`` patches: ``(n, I_1..I_N)`` float32. A stream of another
    number of patches, a truncated or a damaged one is refused (``ValueError``): the header holds
    the count and a checksum."""
    from fusion_models.entropy import decode_context_laplace

    if len(data) < _STEP.size:
        raise ValueError(f"corrupt bitstream: {len(data)} bytes, shorter than any header")
    if bytes(data[:len(_MARK)]) == _MARK:
        if len(data) < _HEAD.size:
            raise ValueError(f"corrupt bitstream: {len(data)} bytes, shorter than its {_HEAD.size}-byte header")
        _, count, crc, step = _HEAD.unpack_from(data)
        code = data[_HEAD.size:]
        if count != n:
            raise ValueError(f"the bitstream holds {count} patch(es), not {n}")
        if zlib.crc32(code) != crc:
            raise ValueError("corrupt bitstream: its checksum does not match (truncated or damaged)")
    else:  # written before the header held the count: a wrong n is caught only where the code says so
        (step,) = _STEP.unpack_from(data)
        code = data[_STEP.size:]
    return dequantize_core(codec, decode_context_laplace(code, codec.spread / step, n), step)


def dequantize_core(codec: TDLCodec, q: np.ndarray, step: float) -> np.ndarray:
    """The patches ``(P, I_1..I_N)`` float32 that quantized cores ``q`` (:func:`quantize_core` with
    ``step``) decode to: what :func:`decode` returns, without coding and decoding the indices."""
    core = torch.from_numpy(np.asarray(q).astype(np.float32) * np.float32(step))
    x = reconstruct(core, [torch.from_numpy(b) for b in codec.bases]).numpy()
    return (x * np.float32(codec.scale) + np.float32(codec.offset)).astype(np.float32)
