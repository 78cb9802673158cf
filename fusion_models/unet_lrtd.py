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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion_models.lrtcnet import default_device, tucker_project

__all__ = [
    "FitResult",
    "LRTDLayer",
    "LossParts",
    "TuckerResult",
    "UNet",
    "UNetLRTD",
    "augment_patches",
    "class_weights",
    "fit_unet_lrtd",
    "fuse_prior",
    "local_class_share",
    "hooi",
    "miou_index",
    "lrtd_loss",
    "predict_proba",
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
        self.classes = int(classes)
        self.ranks = tuple(ranks) if ranks is not None else (classes, math.ceil(h / 4), math.ceil(w / 4))
        self.g = UNet(t * (c + 1), self.classes, width=width, depth=depth)
        self.lrtd = LRTDLayer((self.classes, h, w), self.ranks, variant=variant, iters=iters)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(logits, S, Shat)``, each ``(B, K, H, W)``."""
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


# --- fitting and prediction ---------------------------------------------------------------------


def class_weights(labels: np.ndarray, classes: int, *, power: float = 0.5) -> np.ndarray:
    """Cross-entropy weights ``(K,)`` from the labelled pixels: ``n_k^-power``, mean 1 over the
    classes that have labels, 0 for classes without any (``power=0.5``: inverse square root of the
    frequency, a middle way between no weighting and full balancing)."""
    if power < 0:
        raise ValueError(f"power must be >= 0; got power={power}")
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=classes)[:classes].astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    if not (w > 0).any():
        raise ValueError("labels has no labelled pixel (all -1); nothing to weight")
    return (w / w[w > 0].mean()).astype(np.float32)



@dataclass(frozen=True)
class FitResult:
    """A trained model and its per-epoch history (total, CE, low-rank term).

    With validation patches: ``val_history`` holds the validation mIoU after each epoch and
    ``best_epoch`` (1-based) the epoch whose weights ``net`` carries (the best one from
    ``select_from`` on); without: ``()`` and the last epoch.
    """

    net: UNetLRTD
    history: tuple[tuple[float, float, float], ...]
    seconds: float
    val_history: tuple[float, ...] = ()
    best_epoch: int = 0


def miou_index(pred: np.ndarray, labels: np.ndarray, classes: int) -> float:
    r"""Mean intersection over union of class indices ``pred`` against ``labels`` on the labelled
    pixels (``labels >= 0``), over the classes present among them:

    .. math:: \text{mIoU} = \frac{1}{|C|}\sum_{k \in C} \frac{TP_k}{TP_k + FP_k + FN_k},
              \quad C = \{k : k \text{ labelled somewhere}\}

    (a class predicted on a labelled pixel but absent from the labels counts only as the others'
    false positive). ``pred`` and ``labels`` have the same shape; returns ``nan`` with no labelled
    pixel.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same shape; got {pred.shape} and {labels.shape}")
    keep = labels >= 0
    p, t = pred[keep].astype(np.int64), labels[keep].astype(np.int64)
    if not t.size:
        return float("nan")
    if p.min() < 0 or p.max() >= classes or t.max() >= classes:
        raise ValueError(f"pred and labels must be class indices in 0..{classes - 1} (or -1 in labels)")
    conf = np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    return float(np.mean(tp[present] / union[present]))


def _augment(x: Tensor, v: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Random dihedral transform (flips, 90-degree turns) applied alike to a batch's x, valid, y."""
    k = int(torch.randint(4, (1,), generator=gen))
    flip = bool(torch.randint(2, (1,), generator=gen))
    out = []
    for t in (x, v, y):
        t = torch.rot90(t, k, dims=(-2, -1))
        out.append(t.flip(-1) if flip else t)
    return out[0], out[1], out[2]


def augment_patches(x: Tensor, v: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A random dihedral transform per patch (one of the 8: ``k`` quarter turns, then an optional
    left-right flip), applied alike to a patch's ``x (B, ..., H, W)``, ``valid`` and ``y``.

    Square patches only (a quarter turn swaps ``H`` and ``W``).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"patches must be square for quarter turns; got {tuple(x.shape[-2:])}")
    draws = torch.randint(8, (x.shape[0],), generator=gen)
    outs: list[list[Tensor]] = [[], [], []]
    for i, d in enumerate(draws.tolist()):
        for out, t in zip(outs, (x, v, y), strict=True):
            t = torch.rot90(t[i], d % 4, dims=(-2, -1))
            out.append(t.flip(-1) if d >= 4 else t)
    return torch.stack(outs[0]), torch.stack(outs[1]), torch.stack(outs[2])


def fit_unet_lrtd(
    x: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray,
    *,
    classes: int,
    lam: float = 1.0,
    variant: Literal["hooi", "factors"] = "hooi",
    ranks: Sequence[int] | None = None,
    epochs: int = 60,
    batch: int = 8,
    lr: float = 2e-3,
    width: int = 32,
    depth: int = 2,
    class_weight: np.ndarray | None = None,
    lam_warmup: float = 0.0,
    unlabelled: tuple[np.ndarray, np.ndarray] | None = None,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    select_from: float = 0.5,
    per_patch_augment: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> FitResult:
    """Train :class:`UNetLRTD` on patches with partial labels (Adam, cosine learning rate).

    Parameters
    ----------
    x
        ``(P, T, C, H, W)`` float32, standardised, NaN where missing.
    valid
        ``(P, T, H, W)`` bool.
    labels
        ``(P, H, W)`` int, class index ``0..classes-1`` or -1 where unlabelled.
    classes
        ``K``.
    lam
        Weight of the low-rank term (0: cross-entropy only).
    variant, ranks, width, depth
        See :class:`UNetLRTD`.
    epochs, batch, lr
        Passes over the patches, patches per step, Adam's learning rate.
    class_weight
        Optional ``(K,)`` CE weights.
    lam_warmup
        Fraction of the epochs over which the low-rank weight ramps linearly from 0 to ``lam``
        (0: ``lam`` from the start), so the Tucker term acts once ``S`` carries class structure.
    unlabelled
        Optional patches ``(x (Q, T, C, H, W), valid (Q, T, H, W))`` without labels, e.g. the rest
        of the scene that is to be labelled. They join the pool the batches are drawn from (each
        epoch a fresh permutation of all ``P + Q`` patches), so the low-rank term acts on their
        pixels (the semi-supervised point of the deck: the CE sees the labelled pixels, the
        Tucker prior every pixel); with ``lam = 0`` they only share batch-norm statistics.
    val
        Optional validation patches ``(x, valid, labels)`` (labels as ``labels``): after each
        epoch the model's mIoU on their labelled pixels (:func:`miou_index`) is recorded, and the
        weights of the best epoch from ``select_from * epochs`` on are returned (model selection /
        early stopping on held-out blocks).
    select_from
        Fraction of the epochs before which no epoch is selected (the one-cycle learning rate is
        still high there).
    per_patch_augment
        Draw the flip / quarter-turn augmentation per patch (:func:`augment_patches`) instead of
        one per batch.
    seed
        Seeds initialisation, shuffling and augmentation.
    device
        Default: a GPU when present.

    Returns
    -------
    FitResult
    """
    if x.ndim != 5 or valid.shape != (*x.shape[:2], *x.shape[3:]) or labels.shape != (x.shape[0], *x.shape[3:]):
        raise ValueError(
            f"x must be (P, T, C, H, W), valid (P, T, H, W), labels (P, H, W); got {x.shape}, "
            f"{valid.shape}, {labels.shape}"
        )
    if labels.max() >= classes or labels.min() < IGNORE:
        raise ValueError(f"labels must be in -1..{classes - 1}; got {labels.min()}..{labels.max()}")
    for name, num in (("epochs", epochs), ("batch", batch)):
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {name}={num!r}")
    if not 0.0 <= lam_warmup < 1.0:
        raise ValueError(f"lam_warmup must be in [0, 1); got lam_warmup={lam_warmup}")
    if not 0.0 <= select_from < 1.0:
        raise ValueError(f"select_from must be in [0, 1); got select_from={select_from}")
    if unlabelled is not None:
        ux, uv = unlabelled
        if ux.shape[1:] != x.shape[1:] or uv.shape != (*ux.shape[:2], *ux.shape[3:]):
            raise ValueError(
                f"unlabelled must be (x (Q, {', '.join(map(str, x.shape[1:]))}), valid (Q, T, H, W)); got "
                f"{ux.shape} and {uv.shape}"
            )
        x = np.concatenate([x, ux])
        valid = np.concatenate([valid, uv])
        labels = np.concatenate([labels, np.full((len(ux), *labels.shape[1:]), IGNORE, labels.dtype)])
    if val is not None and (val[0].shape[1:] != x.shape[1:] or val[2].shape != (val[0].shape[0], *x.shape[3:])):
        raise ValueError(
            f"val must be (x (V, {', '.join(map(str, x.shape[1:]))}), valid, labels (V, H, W)); got "
            f"{val[0].shape} and {val[2].shape}"
        )
    dev = torch.device(device) if device else default_device()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = UNetLRTD(x.shape[1:], classes, ranks=ranks, variant=variant, width=width, depth=depth).to(dev)
    xs = torch.as_tensor(x, dtype=torch.float32)
    vs = torch.as_tensor(valid, dtype=torch.bool)
    ys = torch.as_tensor(labels, dtype=torch.int64)
    weight = torch.as_tensor(class_weight, dtype=torch.float32, device=dev) if class_weight is not None else None
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(xs) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    history: list[tuple[float, float, float]] = []
    val_history: list[float] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    started = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        sums = np.zeros(3)
        lam_now = lam * min(1.0, (epoch + 1) / (lam_warmup * epochs)) if lam_warmup > 0 else lam
        for i in range(0, len(xs), batch):
            idx = order[i:i + batch]
            xb, vb, yb = (augment_patches if per_patch_augment else _augment)(xs[idx], vs[idx], ys[idx], gen)
            xb, vb, yb = xb.to(dev), vb.to(dev), yb.to(dev)
            if lam > 0:
                logits, s, shat = net(xb, vb)
            else:  # the low-rank term is off: skip the decomposition
                logits = net.g(stack_time(xb, vb))
                s = shat = logits.softmax(dim=1)
            parts = lrtd_loss(logits, yb, s, shat, lam=lam_now, weight=weight)
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()
            sched.step()
            sums += [parts.total.item(), parts.ce.item(), parts.lowrank.item()]
        n_steps = math.ceil(len(xs) / batch)
        history.append(tuple(float(v) for v in sums / n_steps))  # type: ignore[arg-type]
        log.debug("epoch %d: loss %.4f (CE %.4f, low-rank %.5f)", epoch + 1, *history[-1])
        if val is not None:
            pred = predict_proba(net, val[0], val[1], batch=2 * batch).argmax(1)
            val_history.append(miou_index(pred, val[2], classes))
            if epoch + 1 >= select_from * epochs and (best is None or val_history[-1] > best[0]):
                best = (val_history[-1], epoch + 1, {k: v.detach().clone() for k, v in net.state_dict().items()})
    best_epoch = epochs
    if best is not None:
        best_epoch = best[1]
        net.load_state_dict(best[2])
    seconds = time.perf_counter() - started
    log.info("UNet-LRTD (lambda %g, %s): %d epochs in %.1f s, final CE %.4f%s", lam, variant, epochs,
             seconds, history[-1][1],
             f", epoch {best_epoch} kept (val mIoU {best[0]:.4f})" if best is not None else "")
    return FitResult(net=net.eval(), history=tuple(history), seconds=seconds,
                     val_history=tuple(val_history), best_epoch=best_epoch)


@torch.no_grad()
def predict_proba(net: UNetLRTD, x: np.ndarray, valid: np.ndarray, *, batch: int = 16,
                  use_lrtd: bool = False, blend: float = 0.0) -> np.ndarray:
    r"""Class probabilities ``(P, K, H, W)`` of patches ``x (P, T, C, H, W)``, ``valid (P, T, H, W)``.

    ``blend`` :math:`\beta \in [0, 1]`: return :math:`(1 - \beta)\,\mathcal S + \beta\,
    \tilde{\mathcal S}` with :math:`\tilde{\mathcal S}` the low-rank reconstruction
    :math:`\hat{\mathcal S}` clipped at 0 and renormalised over the classes (0: ``S``, 1: the
    LRTD output alone). ``use_lrtd`` is ``blend=1``.
    """
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be in [0, 1]; got blend={blend}")
    if use_lrtd:
        blend = 1.0
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i:i + batch], dtype=torch.float32, device=dev)
        vb = torch.as_tensor(valid[i:i + batch], dtype=torch.bool, device=dev)
        if blend > 0:
            _, s, shat = net(xb, vb)
            low = shat.clamp(min=0)
            low = low / low.sum(dim=1, keepdim=True).clamp(min=1e-8)
            s = (1 - blend) * s + blend * low
        else:  # S alone: skip the decomposition
            s = net.g(stack_time(xb, vb)).softmax(dim=1)
        out.append(s.cpu().numpy())
    net.train(was_training)
    return np.concatenate(out).astype(np.float32)


# --- coarse labels as a local prior -------------------------------------------------------------


def local_class_share(index: np.ndarray, classes: int, *, window: int) -> np.ndarray:
    r"""Share of each class among the coarse labels in a ``window x window`` box around each pixel.

    For the coarse-label setting (a 30 m product nearest-resampled to a 3 m grid): a fine pixel
    within ``window // 2`` pixels of a coarse-label edge may belong to either side's class (a
    mixed coarse cell), one deep inside a coarse cell most likely has its class. The box mean of
    the one-hot coarse map,

    .. math:: q_k(p) = \frac{1}{|W(p)|} \sum_{p' \in W(p)} [c(p') = k],

    (edges replicated, unlabelled pixels counted as no class) is that local prior.

    Parameters
    ----------
    index
        ``(H, W)`` int, class index ``0..classes-1`` or -1 where unknown.
    classes
        ``K``.
    window
        Odd box side in pixels (1: the one-hot map itself).

    Returns
    -------
    np.ndarray
        ``(K, H, W)`` float32, summing to at most 1 per pixel.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1; got window={window!r} (use e.g. 5)")
    index = np.asarray(index)
    if index.ndim != 2:
        raise ValueError(f"index must be (H, W); got shape {index.shape}")
    if index.size and (index.max() >= classes or index.min() < IGNORE):
        raise ValueError(f"index must be in -1..{classes - 1}; got {index.min()}..{index.max()}")
    idx = torch.as_tensor(index, dtype=torch.int64)
    onehot = (idx[None] == torch.arange(classes)[:, None, None]).to(torch.float32)[None]  # (1, K, H, W)
    half = window // 2
    if half:
        onehot = F.avg_pool2d(F.pad(onehot, (half, half, half, half), mode="replicate"), window, stride=1)
    return onehot[0].numpy()


def fuse_prior(prob: np.ndarray, prior: np.ndarray, *, power: float = 0.5, axis: int = 1) -> np.ndarray:
    r"""Combine the network's class probabilities with a per-pixel prior (:func:`local_class_share`).

    .. math:: p_k \propto S_k^{\,a}\, q_k

    a product of experts: the prior restricts each pixel to the classes of its neighbourhood in
    the coarse map, the network's (tempered, exponent ``a = power``) probabilities pick among
    them. Where the prior is 0 for every class the network's probabilities are kept.

    Parameters
    ----------
    prob, prior
        Same shape, class axis ``axis``; ``prob`` >= 0, ``prior`` >= 0.
    power
        Exponent ``a > 0`` on ``prob`` (below 1 flattens the network's confidence).

    Returns
    -------
    np.ndarray
        The fused probabilities, float32, summing to 1 along ``axis``.
    """
    if prob.shape != prior.shape:
        raise ValueError(f"prob and prior must have the same shape; got {prob.shape} and {prior.shape}")
    if not power > 0:
        raise ValueError(f"power must be > 0; got power={power}")
    joint = np.power(np.clip(prob, 0, None), power) * np.clip(prior, 0, None)
    total = joint.sum(axis=axis, keepdims=True)
    fallback = np.clip(prob, 0, None) / np.clip(prob, 0, None).sum(axis=axis, keepdims=True).clip(min=1e-12)
    out = np.where(total > 0, joint / np.where(total > 0, total, 1.0), fallback)
    return out.astype(np.float32)
