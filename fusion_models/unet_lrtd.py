"""Label recovery: a UNet over image time series with a low-rank Tucker (LRTD) layer on its output.

The UNet is O. Ronneberger, P. Fischer and T. Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015 (LNCS 9351, 234-241). The LRTD layer and the loss are the seed
deck's "Label recovery (semi-supervised learning)" and "LRTD - Layer"; the Tucker decomposition is
computed by higher-order orthogonal iteration (HOOI, L. De Lathauwer, B. De Moor and
J. Vandewalle, "On the best rank-1 and rank-(R1, ..., RN) approximation of higher-order tensors",
SIAM J. Matrix Anal. Appl. 21(4), 1324-1342, 2000).

How time enters: the ``T`` dates are stacked as channels. A sample ``(T, C, H, W)`` with NaN where
not observed is standardised by the caller, NaN set to 0, and the per-date valid mask appended,
giving ``T * (C + 1)`` input channels; the UNet then mixes dates and bands in its first
convolution. (A temporal encoder or 3D convolutions would share weights across dates; with the
12-24 irregular, cloud-gapped dates of a Planet season, the stacked form is simplest and keeps the
date-specific phenology that separates the crops.)

Pure torch/numpy: tensors in, tensors out; no I/O.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion_models.device import as_input, as_mask
from fusion_models.lrtcnet import tucker_project

__all__ = [
    "LRTDLayer",
    "LossParts",
    "TuckerResult",
    "UNet",
    "UNetLRTD",
    "hooi",
    "lrtd_loss",
    "stack_time",
    "tucker_reconstruct",
]

log = logging.getLogger(__name__)

IGNORE = -1  # label of an unlabelled pixel


# --- input --------------------------------------------------------------------------------------


def stack_time(x: Tensor, valid: Tensor) -> Tensor:
    """``(B, T, C, H, W)`` + ``(B, T, H, W)`` -> ``(B, T * (C + 1), H, W)`` UNet input.

    Entries that are NaN or not valid become 0 (the standardised mean) and the valid mask of each
    date is appended as a channel, so the net can tell a zero from a gap.
    """
    if x.ndim != 5 or valid.ndim != 4 or valid.shape != (*x.shape[:2], *x.shape[3:]):
        raise ValueError(
            f"x must be (B, T, C, H, W) and valid (B, T, H, W); got x {tuple(x.shape)}, valid "
            f"{tuple(valid.shape)}"
        )
    ok = valid[:, :, None] & torch.isfinite(x)  # (B, T, C, H, W)
    vals = torch.where(ok, x, torch.zeros_like(x))
    b, t, c, h, w = x.shape
    return torch.cat([vals, ok.all(dim=2, keepdim=True).to(x.dtype)], dim=2).reshape(b, t * (c + 1), h, w)


# --- the UNet g_theta ---------------------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A compact UNet ``g_theta``: class scores per pixel from a stacked time series.

    Encoder of ``depth`` levels (two 3x3 conv + BN + ReLU, then 2x2 max-pool; widths
    ``width * 2^l``), a bottleneck, and a decoder with transposed-convolution upsampling and skip
    concatenation (Ronneberger et al. 2015), padded convolutions so the output has the input's size.

    Shapes::

        x: (B, T * (C + 1), H, W) float  (see :func:`stack_time`)  ->  (B, K, H, W) logits

    ``H`` and ``W`` must be multiples of ``2 ** depth``.
    """

    def __init__(self, in_channels: int, classes: int, *, width: int = 32, depth: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("classes", classes), ("width", width), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {name}={v!r}")
        self.in_channels, self.classes, self.depth = in_channels, classes, depth
        widths = [width * 2**lvl for lvl in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_block(cin, w))
            cin = w
        self.bottom = _block(widths[-2], widths[-1])
        self.drop = nn.Dropout2d(dropout)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lvl in range(depth - 1, -1, -1):
            self.up.append(nn.ConvTranspose2d(widths[lvl + 1], widths[lvl], 2, stride=2))
            self.dec.append(_block(2 * widths[lvl], widths[lvl]))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T*(C+1), H, W)`` -> ``(B, K, H, W)`` logits."""
        f = 2**self.depth
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"x must be (B, {self.in_channels}, H, W) with H, W multiples of {f}; got "
                f"{tuple(x.shape)} (pad or crop the patch, or build UNet(in_channels=...))"
            )
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)  # (B, w, H/2, W/2)
        x = self.drop(self.bottom(x))
        for up, dec in zip(self.up, self.dec, strict=True):
            x = up(x)  # (B, w_l, 2h, 2w)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)  # (B, K, H, W)


# --- Tucker decomposition (HOOI) ----------------------------------------------------------------


@dataclass(frozen=True)
class TuckerResult:
    """A batched Tucker decomposition ``S ~ G x_1 D_1 ... x_N D_N``.

    Attributes
    ----------
    core
        ``(B, R_1, ..., R_N)``.
    factors
        ``D_n`` ``(B, I_n, R_n)`` with orthonormal columns.
    history
        Per iteration, the largest change of a factor's subspace,
        ``max_n ||D_n D_n^T - D_n' D_n'^T||_F / sqrt(2 R_n)`` (0 = unchanged, 1 = orthogonal).
    """

    core: Tensor
    factors: tuple[Tensor, ...]
    history: tuple[float, ...]


def _leading(m: Tensor, rank: int) -> Tensor:
    """``(B, I, J)`` -> the ``rank`` leading left singular vectors ``(B, I, rank)``."""
    _, vecs = torch.linalg.eigh(m @ m.transpose(1, 2))  # ascending eigenvalues of the Gram matrix
    return vecs.flip(-1)[..., :rank]


def hooi(s: Tensor, ranks: Sequence[int], *, iters: int = 5, tol: float = 1e-4) -> TuckerResult:
    r"""Batched truncated Tucker decomposition by HOSVD initialisation + HOOI sweeps.

    For each sample :math:`\mathcal S_b` (modes 1..N after the batch dim), initialise
    :math:`D_n` with the :math:`R_n` leading left singular vectors of the unfolding
    :math:`S_{(n)}` (HOSVD), then sweep

    .. math:: D_n \leftarrow \text{leading}_{R_n}\big(
              (\mathcal S \times_{m \ne n} D_m^T)_{(n)}\big), \qquad
              \mathcal G = \mathcal S \times_1 D_1^T \cdots \times_N D_N^T

    until the factor update (the change of the projector :math:`D_n D_n^T`) falls below ``tol``
    or ``iters`` sweeps are done (De Lathauwer et al. 2000). Modes with :math:`R_n = I_n` get the
    identity. Exact when :math:`\mathcal S_b` has multilinear rank at most ``ranks``.

    Parameters
    ----------
    s
        ``(B, I_1, ..., I_N)`` float.
    ranks
        ``(R_1, ..., R_N)``, each ``1 <= R_n <= I_n``.
    iters
        Maximum HOOI sweeps (0: HOSVD only).
    tol
        Stop when the largest factor-subspace change is below it.

    Returns
    -------
    TuckerResult
    """
    shape = tuple(s.shape[1:])
    ranks = tuple(int(r) for r in ranks)
    if s.ndim < 2 or len(ranks) != len(shape) or any(not 1 <= r <= n for r, n in zip(ranks, shape, strict=True)):
        raise ValueError(
            f"ranks needs one entry per mode of s after the batch dim ({len(shape)} modes, sizes "
            f"{shape}), each in 1..size; got ranks={ranks}"
        )
    if iters < 0:
        raise ValueError(f"iters must be >= 0; got iters={iters}")
    b = s.shape[0]

    def unfolding(t: Tensor, n: int) -> Tensor:
        return t.movedim(n + 1, 1).reshape(b, t.shape[n + 1], -1)  # (B, I_n, prod others)

    def eye(n: int) -> Tensor:
        return torch.eye(shape[n], dtype=s.dtype, device=s.device).expand(b, -1, -1)

    factors = [eye(n) if r == shape[n] else _leading(unfolding(s, n), r) for n, r in enumerate(ranks)]
    history: list[float] = []
    for it in range(iters):
        change = 0.0
        for n, r in enumerate(ranks):
            if r == shape[n]:
                continue
            y = s
            for m, d in enumerate(factors):
                if m != n and ranks[m] < shape[m]:
                    y = _batched_mode(y, d.transpose(1, 2), m)
            new = _leading(unfolding(y, n), r)
            old = factors[n]
            diff = new @ new.transpose(1, 2) - old @ old.transpose(1, 2)
            change = max(change, float(diff.flatten(1).norm(dim=1).max()) / math.sqrt(2 * r))
            factors[n] = new
        history.append(change)
        log.debug("HOOI sweep %d: factor change %.3g", it + 1, change)
        if change < tol:
            break
    core = s
    for n, d in enumerate(factors):
        core = _batched_mode(core, d.transpose(1, 2), n)
    return TuckerResult(core=core, factors=tuple(factors), history=tuple(history))


def _batched_mode(t: Tensor, matrix: Tensor, n: int) -> Tensor:
    """Per-sample mode-``n`` product: ``t (B, ..., I_n, ...)`` x ``matrix (B, J, I_n)``."""
    moved = t.movedim(n + 1, -1)  # (B, ..., I_n)
    lead = moved.shape
    out = moved.reshape(lead[0], -1, lead[-1]) @ matrix.transpose(1, 2)  # (B, rest, J)
    return out.reshape(*lead[:-1], matrix.shape[1]).movedim(-1, n + 1)


def tucker_reconstruct(core: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """``G x_1 D_1 ... x_N D_N`` for batched factors ``(B, I_n, R_n)``."""
    out = core
    for n, d in enumerate(factors):
        out = _batched_mode(out, d, n)
    return out


# --- the LRTD layer -----------------------------------------------------------------------------


class LRTDLayer(nn.Module):
    r"""Low-rank Tucker reconstruction :math:`\hat{\mathcal S} = \mathcal G \times_1 D_1 \cdots
    \times_N D_N` of class probabilities :math:`\mathcal S` (the deck's "LRTD - Layer").

    Two variants, as in the deck:

    - ``variant="hooi"``: no parameters. Per batch, each sample's Tucker decomposition is computed
      iteratively (:func:`hooi`). The factors are treated as constants of the step (computed under
      ``no_grad``), so the gradient of :math:`\|\mathcal S - \hat{\mathcal S}\|_F^2` reaches
      :math:`\mathcal S` through the projection :math:`\mathcal S \times_n D_n D_n^T` and not
      through the eigen-decompositions, whose derivatives blow up at repeated singular values
      (the deck's "error on the update of the factor matrices").
    - ``variant="factors"``: trainable factor matrices :math:`D_n \in \mathbb R^{I_n \times R_n}`
      shared by all samples; the core is estimated per batch by least squares,
      :math:`\mathcal G = \mathcal S \times_1 D_1^+ \cdots \times_N D_N^+`, evaluated stably as
      :math:`\hat{\mathcal S} = \mathcal S \times_n Q_n Q_n^T` with :math:`D_n = Q_n R_n` (QR).

    Shapes::

        s: (B, K, H, W) float  ->  (B, K, H, W) float (multilinear rank <= ranks per sample)

    Parameters
    ----------
    shape
        ``(K, H, W)``: classes and patch size.
    ranks
        ``(R_K, R_H, R_W)``.
    variant
        ``"hooi"`` or ``"factors"``.
    iters
        HOOI sweeps per batch (``"hooi"`` only).
    """

    def __init__(self, shape: Sequence[int], ranks: Sequence[int], *,
                 variant: Literal["hooi", "factors"] = "hooi", iters: int = 3) -> None:
        super().__init__()
        self.shape = tuple(int(v) for v in shape)
        self.ranks = tuple(int(r) for r in ranks)
        if len(self.ranks) != len(self.shape) or any(
                not 1 <= r <= n for r, n in zip(self.ranks, self.shape, strict=True)):
            raise ValueError(
                f"ranks needs one entry per mode of {self.shape} (classes, height, width), each in "
                f"1..size; got ranks={self.ranks}"
            )
        if variant not in ("hooi", "factors"):
            raise ValueError(f"variant must be 'hooi' or 'factors'; got variant={variant!r}")
        self.variant = variant
        self.iters = int(iters)
        self.factors = nn.ParameterList()
        if variant == "factors":
            gen = torch.Generator().manual_seed(0)
            for n, r in zip(self.shape, self.ranks, strict=True):
                q, _ = torch.linalg.qr(torch.randn(n, r, generator=gen))
                self.factors.append(nn.Parameter(q))

    def set_factors(self, factors: Sequence[Tensor]) -> None:
        """Overwrite the trainable factors (``"factors"`` variant), e.g. from a HOSVD of data."""
        if self.variant != "factors":
            raise ValueError("set_factors applies to variant='factors' only")
        for p, f in zip(self.factors, factors, strict=True):
            if tuple(f.shape) != tuple(p.shape):
                raise ValueError(f"factor must have shape {tuple(p.shape)}; got {tuple(f.shape)}")
            with torch.no_grad():
                p.copy_(f)

    def forward(self, s: Tensor) -> Tensor:
        """``(B, K, H, W)`` -> its low-rank Tucker reconstruction, same shape."""
        if s.ndim != len(self.shape) + 1 or tuple(s.shape[1:]) != self.shape:
            raise ValueError(
                f"s must be (B, {', '.join(map(str, self.shape))}); got {tuple(s.shape)} "
                "(build LRTDLayer(shape=...) for this patch size and class count)"
            )
        if self.variant == "hooi":
            with torch.no_grad():
                fit = hooi(s.detach(), self.ranks, iters=self.iters)
            projectors = [
                None if r == n else d for d, r, n in zip(fit.factors, self.ranks, self.shape, strict=True)
            ]
            out = s
            for n, d in enumerate(projectors):  # S x_n D_n D_n^T, per sample
                if d is not None:
                    out = _batched_mode(_batched_mode(out, d.transpose(1, 2), n), d, n)
            return out
        qs: list[Tensor | None] = [
            None if r == n else torch.linalg.qr(d)[0]
            for d, r, n in zip(self.factors, self.ranks, self.shape, strict=True)
        ]
        return tucker_project(s, qs, first_dim=1)


# --- the model and its loss ---------------------------------------------------------------------


class UNetLRTD(nn.Module):
    """``g_theta`` (:class:`UNet`) + softmax + :class:`LRTDLayer`.

    Shapes::

        x: (B, T, C, H, W) float, NaN allowed;  valid: (B, T, H, W) bool
        -> logits (B, K, H, W), S = softmax(logits) (B, K, H, W), Shat (B, K, H, W)

    Parameters
    ----------
    sample
        ``(T, C, H, W)``.
    classes
        Number of classes ``K``.
    ranks
        LRTD ranks ``(R_K, R_H, R_W)``; default ``(K, ceil(H/4), ceil(W/4))``.
    variant
        LRTD variant, ``"hooi"`` or ``"factors"``.
    width, depth
        UNet base width and levels.
    """

    def __init__(self, sample: Sequence[int], classes: int, *, ranks: Sequence[int] | None = None,
                 variant: Literal["hooi", "factors"] = "hooi", width: int = 32, depth: int = 2,
                 iters: int = 3) -> None:
        super().__init__()
        if len(sample) != 4:
            raise ValueError(f"sample must be (T, C, H, W); got {tuple(sample)}")
        self.sample = tuple(int(v) for v in sample)
        t, c, h, w = self.sample
        if h % 2**depth or w % 2**depth:  # the UNet halves the patch depth times
            raise ValueError(f"sample H, W ({h}, {w}) must be multiples of 2**depth = {2**depth} "
                             f"(depth {depth}): pad or crop the patches, or lower depth")
        self.classes = int(classes)
        self.ranks = tuple(ranks) if ranks is not None else (classes, math.ceil(h / 4), math.ceil(w / 4))
        self.g = UNet(t * (c + 1), self.classes, width=width, depth=depth)
        self.lrtd = LRTDLayer((self.classes, h, w), self.ranks, variant=variant, iters=iters)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(logits, S, Shat)``, each ``(B, K, H, W)``. ``x (B, T, C, H, W)`` and ``valid
        (B, T, H, W)`` (bool or 0/1) as tensors or numpy arrays, computed in the net's dtype on its
        device."""
        x = as_input(x, self)
        valid = as_mask(valid, x.device, name="valid")
        if x.ndim != 5 or tuple(x.shape[1:]) != self.sample:
            raise ValueError(
                f"x must be (B, {', '.join(map(str, self.sample))}); got {tuple(x.shape)}"
            )
        logits = self.g(stack_time(x, valid))
        s = logits.softmax(dim=1)
        return logits, s, self.lrtd(s)


class LossParts(NamedTuple):
    """The loss and its two terms."""

    total: Tensor
    ce: Tensor
    lowrank: Tensor


def lrtd_loss(logits: Tensor, labels: Tensor, s: Tensor, shat: Tensor, *, lam: float,
              weight: Tensor | None = None) -> LossParts:
    r"""The deck's loss, cross-entropy on labelled pixels plus the low-rank term:

    .. math:: L = \text{CE}(\mathcal S, \mathcal Y)\big|_{\Omega}
              + \frac{\lambda}{2} \frac{1}{|B||H||W|}\|\mathcal S - \hat{\mathcal S}\|_F^2

    where :math:`\Omega` is the set of labelled pixels (``labels >= 0``; :data:`IGNORE` = -1 is
    unlabelled), the CE is the (optionally class-weighted) mean over :math:`\Omega`, and the
    Frobenius term is summed over classes and averaged over pixels (the deck's "MSE"). With no
    labelled pixel in the batch the CE term is 0.

    Shapes: ``logits``, ``s``, ``shat`` ``(B, K, H, W)``; ``labels`` ``(B, H, W)`` int64 in
    ``{-1, 0..K-1}``; ``weight`` ``(K,)``.
    """
    if logits.shape != s.shape or s.shape != shat.shape or labels.shape != (s.shape[0], *s.shape[2:]):
        raise ValueError(
            f"logits, s, shat must be (B, K, H, W) and labels (B, H, W); got {tuple(logits.shape)}, "
            f"{tuple(s.shape)}, {tuple(shat.shape)}, {tuple(labels.shape)}"
        )
    if lam < 0:
        raise ValueError(f"lam must be >= 0; got lam={lam}")
    if not labels.dtype.is_floating_point and labels.dtype != torch.int64:
        labels = labels.long()  # int32 / int16 class indices: cross-entropy takes int64
    labelled = labels >= 0
    if labelled.any():
        per_pixel = F.cross_entropy(logits, labels.clamp(min=0), weight=weight, reduction="none")
        w = weight[labels.clamp(min=0)] if weight is not None else torch.ones_like(per_pixel)
        w = w * labelled
        ce = (per_pixel * w).sum() / w.sum()
    else:
        ce = logits.sum() * 0.0
    pixels = s.shape[0] * s.shape[2] * s.shape[3]
    low = (s - shat).pow(2).sum() / pixels
    return LossParts(ce + 0.5 * lam * low, ce, low)
