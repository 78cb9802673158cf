"""LRTC-Net: low-rank tensor completion by a deep-unfolded Tucker projection with learned factors.

The network unrolls L iterations of the Tucker completion of Shi, J., Yang, W., Yong, L.,
Zheng, X. (2015), "Low-rank tensor completion via Tucker decompositions", J. Comput. Inf. Syst.
11(10):3759-3768, with the factor matrices learned by back-propagation (deep unfolding: Gregor, K.,
LeCun, Y. (2010), "Learning fast approximations of sparse coding", ICML), as in the LRTC-Net of the
project's seed deck ("Low Rank Tensor Completion - Net", "LRTC-Net layer").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from fusion_models.device import as_input, as_mask

__all__ = [
    "LRTCNet",
    "ResidualRefiner",
    "StackingHead",
    "gaussian_band",
    "mode_product",
    "normalized_convolution",
    "temporal_interpolation",
    "tucker_project",
]

log = logging.getLogger(__name__)

SUPPORT_MIN = 1e-3  # least widest-scale support of observed pixels for the refiner to correct
CLIP = 3.0  # bound on the refiner's input misfit and its correction (units of the input, e.g. std)


def mode_product(x: Tensor, matrix: Tensor, dim: int) -> Tensor:
    """Mode product along tensor dimension ``dim``: ``(..., I, ...) x (J, I) -> (..., J, ...)``.

    Evaluated as ``matrix @ x.reshape(before, I, after)`` (a batched matrix product on a
    contiguous view, no transposed copies).
    """
    dim = dim % x.ndim
    shape = x.shape
    before = math.prod(shape[:dim])
    flat = x.reshape(before, shape[dim], -1)  # (before, I, after)
    out = torch.matmul(matrix, flat)  # (before, J, after)
    return out.reshape(*shape[:dim], matrix.shape[0], *shape[dim + 1 :])


def tucker_project(
    z: Tensor, factors: Sequence[Tensor | None], *, first_dim: int = 1
) -> Tensor:
    """:math:`\\mathcal Z \\times_1 D_1 D_1^T \\cdots \\times_N D_N D_N^T` over dims ``first_dim..``.

    Computed through the core :math:`\\mathcal G = \\mathcal Z \\times_n D_n^T` (smaller), then
    :math:`\\mathcal T = \\mathcal G \\times_n D_n`. Leading dims before ``first_dim`` (the batch)
    are left alone. A ``None`` factor is the identity (a square orthogonal :math:`D_n`, for which
    :math:`D_n D_n^T = I`), and its mode is skipped.
    """
    core = z
    for n, d in enumerate(factors):
        if d is not None:
            core = mode_product(core, d.T, first_dim + n)  # I_n -> R_n
    for n, d in enumerate(factors):
        if d is not None:
            core = mode_product(core, d, first_dim + n)  # R_n -> I_n
    return core


class LRTCNet(nn.Module):
    """LRTC-Net: L unrolled Tucker-completion layers sharing learned orthonormal factors.

    Trainable parameters are the factor matrices :math:`D_n \\in \\mathbb R^{I_n \\times R_n}`,
    one per mode of a sample, kept orthonormal (:math:`D_n^T D_n = I_{R_n}`) by
    ``torch.nn.utils.parametrizations.orthogonal`` and shared by all layers. Layer ``l`` computes

    .. math::
        \\mathcal G = \\mathcal Z^{l-1} \\times_1 D_1^T \\cdots \\times_N D_N^T, \\qquad
        \\mathcal T = \\mathcal G \\times_1 D_1 \\cdots \\times_N D_N, \\qquad
        \\mathcal Z^l = \\mathcal T + \\mathcal W * \\mathcal X - \\mathcal W * \\mathcal T,

    with :math:`\\mathcal W` the observed mask, so observed entries are reproduced exactly and
    missing ones take the low-multilinear-rank projection. Training minimises the MSE between
    :math:`\\mathcal Z^L` and the truth on entries hidden from the input (``fusioncube`` trains
    self-supervised by hiding observed entries, or supervised on ground truth).

    Reference: Shi et al. (2015), see the module docstring; the seed deck's "LRTC-Net".

    Shapes::

        x:    (B, T, C, H, W) float          (any values at missing entries, NaN allowed)
        mask: (B, T, C, H, W) or (B, T, 1, H, W) bool, True where observed
        z0:   (B, T, C, H, W) float, optional starting values (default: 0 at missing entries)
        ->    (B, T, C, H, W) float

    Parameters
    ----------
    shape
        Sample shape ``(T, C, H, W)`` (any order-N sample shape works).
    ranks
        Multilinear ranks ``R_n``; default 10 % of each dimension (the deck's setting).
    layers
        Number of unrolled layers ``L`` (default 20).
    factors
        Optional initial factors ``(I_n, R_n)``, e.g. a truncated HOSVD of training data;
        orthonormalised. Default: random orthonormal (seeded by ``torch.manual_seed``).
    step_sizes
        *Ours, not the deck's*: a learned step :math:`a_l` per layer on the missing entries,
        :math:`\\mathcal Z^l = \\mathcal W * \\mathcal X + (1 - \\mathcal W) *
        (\\mathcal Z^{l-1} + a_l (\\mathcal T - \\mathcal Z^{l-1}))`, initialised to 1 (the deck's
        layer exactly); :math:`a_l > 1` over-relaxes, which speeds up filling large gaps.
    refine
        *Ours, not the deck's*: width of a small residual refinement CNN
        (:class:`ResidualRefiner`) applied once after the L layers; 0 (default) = none, the
        deck's net. Needs a ``(T, C, H, W)`` sample shape.
    stack
        *Ours, not the deck's*: a :class:`StackingHead` after the refiner, a linear combination
        of temporal and spatial spreads of the low-rank misfit whose weights are fitted in
        closed form on self-supervised hidden entries
        (:func:`fusion_models.lrtcnet_training.fit_stacking`); False (default) = none. Its
        weights start at zero (the identity). Needs a ``(T, C, H, W)`` sample shape.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        ranks: Sequence[int] | None = None,
        layers: int = 20,
        factors: Sequence[Tensor] | None = None,
        step_sizes: bool = False,
        refine: int = 0,
        stack: bool = False,
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be positive sizes per mode, e.g. (T, C, H, W); got {shape}")
        ranks = (
            tuple(max(1, math.ceil(0.1 * s)) for s in self.shape)
            if ranks is None
            else tuple(int(r) for r in ranks)
        )
        if len(ranks) != len(self.shape) or any(
            not 1 <= r <= s for r, s in zip(ranks, self.shape, strict=False)
        ):
            raise ValueError(
                f"ranks needs one entry per mode ({len(self.shape)} modes), each in 1..size "
                f"{self.shape}; got ranks={ranks}"
            )
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be an integer >= 1; got layers={layers!r}")
        if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
            raise ValueError(f"refine must be an integer >= 0 (0 = no refinement); got refine={refine!r}")
        if refine and len(self.shape) != 4:
            raise ValueError(
                f"refine needs (T, C, H, W) samples (4 modes); got shape {self.shape} (use refine=0)"
            )
        if stack and len(self.shape) != 4:
            raise ValueError(
                f"stack needs (T, C, H, W) samples (4 modes); got shape {self.shape} (use stack=False)"
            )
        self.ranks = ranks
        self.layers = layers
        self.steps: nn.Parameter | None = (
            nn.Parameter(torch.ones(layers)) if step_sizes else None
        )
        self.refiner: ResidualRefiner | None = (
            ResidualRefiner(self.shape[1], hidden=refine) if refine else None
        )
        self.stacker: StackingHead | None = StackingHead() if stack else None
        self.bases = nn.ModuleList()
        for n, (size, rank) in enumerate(zip(self.shape, ranks, strict=True)):
            lin = nn.Linear(rank, size, bias=False)  # weight (I_n, R_n)
            parametrizations.orthogonal(lin, "weight")
            if factors is not None:
                init = torch.as_tensor(factors[n], dtype=torch.float32)
                if init.shape != (size, rank):
                    raise ValueError(
                        f"factors[{n}] must have shape (I_n, R_n) = {(size, rank)}; got "
                        f"{tuple(init.shape)}"
                    )
                q, _ = torch.linalg.qr(init)
                with torch.no_grad():
                    lin.weight = q
            self.bases.append(lin)

    def factors(self) -> list[Tensor]:
        """The current orthonormal factors ``D_n`` ``(I_n, R_n)``."""
        return [cast(Tensor, lin.weight) for lin in self.bases]

    def _active(self) -> list[Tensor | None]:
        """The factors the layers apply: ``None`` for full-rank modes (``D_n D_n^T = I``)."""
        return [None if r == s else d for d, r, s in zip(self.factors(), self.ranks, self.shape, strict=True)]

    def lowrank(self, z: Tensor) -> Tensor:
        """The low-rank part ``Z x_n D_n D_n^T`` of ``(B, T, C, H, W)`` ``z`` (full-rank modes skipped)."""
        return tucker_project(z, self._active())

    def layer(
        self,
        z: Tensor,
        x: Tensor,
        w: Tensor,
        factors: Sequence[Tensor | None] | None = None,
        step: Tensor | None = None,
    ) -> Tensor:
        """One layer: ``T = Z x_n D_n D_n^T``; ``Z <- T + W*X - W*T`` (``x`` zero at missing).

        For a binary ``W`` the update is evaluated as ``where(W, X, T)``: the same value, and
        observed entries come back bit for bit (no ``T - T`` rounding). With a ``step`` ``a``
        (ours) the missing entries move ``Z + a (T - Z)`` instead of to ``T``. ``w`` may be the
        float mask or, to skip the comparison in every layer, the bool ``w > 0``.
        """
        t = tucker_project(z, self.factors() if factors is None else factors)
        if step is not None:
            t = z + step * (t - z)
        return torch.where(w if w.dtype == torch.bool else w > 0, x, t)

    def _check(self, x: Tensor, mask: Tensor) -> None:
        want = (len(self.shape) + 1,)
        if x.ndim != want[0] or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"x must be (B, {', '.join(map(str, self.shape))}) (batch + the sample shape the "
                f"net was built for); got {tuple(x.shape)} (build LRTCNet(shape=...) for this size)"
            )
        if mask.ndim != x.ndim or any(
            m not in (1, s) for m, s in zip(mask.shape, x.shape, strict=True)
        ) or mask.shape[0] != x.shape[0]:
            raise ValueError(
                f"mask must have the shape of x {tuple(x.shape)} (size 1 allowed on a non-batch "
                f"dim to broadcast); got {tuple(mask.shape)}"
            )

    def forward(self, x: Tensor, mask: Tensor, z0: Tensor | None = None) -> Tensor:
        """Complete ``x`` where ``mask`` is False.

        Parameters
        ----------
        x
            ``(B, T, C, H, W)`` float (a tensor or numpy array; computed in the net's dtype, on
            its device); missing entries may hold anything (NaN included).
        mask
            ``(B, T, C, H, W)`` or ``(B, T, 1, H, W)`` bool (or 0/1), True where observed. A NaN
            or infinite entry of ``x`` counts as missing wherever the mask says.
        z0
            ``(B, T, C, H, W)`` starting values at missing entries (e.g. a temporal
            interpolation); default 0 (the deck's ``P_Omega(X)``).

        Returns
        -------
        Tensor
            ``(B, T, C, H, W)`` completed: equal to ``x`` where observed (and finite).
        """
        z, xo, w = self.trunk(x, mask, z0)
        # zero weights (the head before fit_stacking: all of LRTC-Net's training) are the identity:
        # skipped, not computed (its six spreads would be kept for the backward pass for nothing)
        if self.stacker is not None and bool(self.stacker.weights.any()):
            corr = self.stacker(z, self.lowrank(z), xo, w)
            z = torch.where(w > 0, xo, z + corr)
        return z

    def trunk(self, x: Tensor, mask: Tensor, z0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The layers and the refiner, without the stacking head: ``(z, x_observed, w)``.

        ``z`` is the completion before :class:`StackingHead`, ``x_observed`` is ``x`` with 0 at
        missing entries and ``w`` the float mask expanded to ``x``'s shape (all
        ``(B, T, C, H, W)``). Arguments as in :meth:`forward`.
        """
        x = as_input(x, self)
        mask = as_mask(mask, x.device)
        self._check(x, mask)
        seen = mask & torch.isfinite(x)  # a NaN marked observed is missing: it must not spread
        w = seen.to(x.dtype)
        xo = torch.where(seen, x, torch.zeros_like(x))  # (B, T, C, H, W), 0 at missing
        if z0 is None:
            z = xo
        else:
            z0 = as_input(z0, self, name="z0")
            if z0.shape != x.shape:
                raise ValueError(f"z0 must have the shape of x {tuple(x.shape)}; got {tuple(z0.shape)}")
            z = torch.where(seen, xo, z0)
        factors = self._active()  # evaluate the parametrisation once per forward
        for i in range(self.layers):
            z = self.layer(z, xo, seen, factors, None if self.steps is None else self.steps[i])
        if self.refiner is not None:
            resid = w * (xo - tucker_project(z, factors))  # low-rank misfit where observed
            # bounded both ways (standardised units): one bright undetected cloud edge must not
            # be spread into a whole gap, and the refiner corrects, it does not replace
            corr = self.refiner(z, resid.clamp(-CLIP, CLIP), w)
            z = torch.where(seen, xo, z + CLIP * torch.tanh(corr / CLIP))
        return z, xo, w


def gaussian_band(size: int, sigma: float, *, radius: int | None = None,
                  dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The ``(size, size)`` matrix of a 1-D Gaussian filter with zero padding.

    ``K[i, j] = g(j - i)`` for ``|j - i| <= r`` and 0 beyond, with ``g`` the normalised Gaussian
    taps of radius ``r`` (default :math:`\\lceil 3\\sigma \\rceil`, at least 1), normalised
    over ``-r..r``: ``K @ v`` equals the zero-padded convolution of ``v`` with the taps (entries
    beyond the border count as 0).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels; got sigma={sigma}")
    radius = max(1, int(math.ceil(3 * sigma)) if radius is None else int(radius))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    idx = torch.arange(size)
    offset = idx[None, :] - idx[:, None]  # j - i
    band = torch.where(offset.abs() <= radius, kernel[(offset + radius).clamp(0, 2 * radius)],
                       torch.zeros((), dtype=torch.float64))
    return band.to(dtype=dtype, device=device)


def normalized_convolution(values: Tensor, weight: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Gaussian normalized convolution over the last two dims (Knutsson & Westin 1993).

    :math:`(G_\\sigma * (W V)) / (G_\\sigma * W)` and the support :math:`G_\\sigma * W`: a
    smooth interpolation of ``values`` from where ``weight`` is 1 (zero padding: nothing is
    known outside the image). ``values`` ``(N, C, H, W)``, ``weight`` ``(N, 1, H, W)``; returns
    the interpolated ``(N, C, H, W)`` (0 where there is no support) and the support
    ``(N, 1, H, W)``. The separable filter is applied as two matrix products with the banded
    :func:`gaussian_band` matrices, :math:`K_H\\,(W V)\\,K_W^T` (the same values as a zero-padded
    depthwise convolution; on 32 x 32 images several times faster, forward and backward).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels; got sigma={sigma}")
    height, width = values.shape[-2:]
    radius = max(1, min(int(math.ceil(3 * sigma)), max(height, width) - 1))  # taps within reach
    ky = gaussian_band(height, sigma, radius=radius, dtype=values.dtype, device=values.device)
    kx = gaussian_band(width, sigma, radius=radius, dtype=values.dtype, device=values.device)
    stacked = torch.cat([values * weight, weight], dim=1)  # (N, C+1, H, W)
    out = torch.matmul(torch.matmul(ky, stacked), kx.T)
    num, support = out[:, :-1], out[:, -1:]
    return num / support.clamp_min(1e-6) * (support > 1e-6), support


class ResidualRefiner(nn.Module):
    """*Ours*: a small per-date network correcting the unrolled net's output at missing entries.

    The Tucker layers keep what the learned subspaces share across dates and pixels; what is left
    (per-date, spatially smooth departures: a date's own weather, moisture, texture) shows in the
    low-rank misfit at the observed pixels of that same date,
    :math:`\\mathcal R = \\mathcal W * (\\mathcal X - \\mathcal Z^L \\times_n D_n D_n^T)`. The
    refiner spreads that misfit into the gaps by Gaussian normalized convolution at a few scales
    (:func:`normalized_convolution`, ``sigmas`` in pixels) and lets a small per-pixel network
    weigh the scales by their support and the estimate:
    features ``[Z, NC_s(R), support_s for each s]`` (``C + len(sigmas) (C + 1)`` channels) ->
    ``Conv2d kernel x kernel -> GELU -> Conv2d 1x1 -> GELU -> Conv2d 1x1 -> C``, applied to every
    date image (``kernel=1`` by default, for cost: the normalized convolutions already carry the
    spatial context, and a 3 x 3 first layer was the largest cost of a training step). The
    misfit is clipped to ``+-CLIP`` and the correction bounded by ``CLIP tanh(. / CLIP)`` (in
    :meth:`LRTCNet.forward`); where a date has no observed pixel within reach of the widest
    scale (support below ``SUPPORT_MIN``) there is no correction. The last layer starts at zero, so an untrained refiner is the
    identity and the net
    starts as the deck's.

    Shapes::

        z, resid, w: (B, T, C, H, W)  ->  (B, T, C, H, W)
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden: int = 16,
        sigmas: Sequence[float] = (1.0, 3.0, 9.0),
        kernel: int = 1,
    ) -> None:
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        k = int(kernel)
        n_in = channels + len(self.sigmas) * (channels + 1)
        self.body = nn.Sequential(
            nn.Conv2d(n_in, hidden, k, padding=k // 2, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )
        last = cast(nn.Conv2d, self.body[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(cast(Tensor, last.bias))

    def forward(self, z: Tensor, resid: Tensor, w: Tensor) -> Tensor:
        """Correction ``(B, T, C, H, W)`` from estimate, observed-entry misfit and mask."""
        b, t, c, h, wd = z.shape
        weight = w[:, :, :1].reshape(b * t, 1, h, wd)
        feats = [z.reshape(b * t, c, h, wd)]
        support = weight
        for sigma in self.sigmas:
            spread, support = normalized_convolution(resid.reshape(b * t, c, h, wd), weight, sigma)
            feats += [spread, support]
        out = self.body(torch.cat(feats, dim=1))  # (B*T, C, H, W)
        # no observed pixel of the date within reach of the widest scale: nothing to spread, and
        # the network never learned that regime (it left bright patch-sized squares): no correction
        out = out * (support > SUPPORT_MIN)
        return cast(Tensor, out.reshape(b, t, c, h, wd))


def temporal_interpolation(values: Tensor, weight: Tensor) -> Tensor:
    """Per-series linear interpolation along dim 1 (time) from the entries where ``weight > 0``.

    Each series (one batch item, band and pixel) is filled between its nearest observed
    neighbours :math:`t_0 < t < t_1` by :math:`v(t_0) + \\tfrac{t - t_0}{t_1 - t_0}(v(t_1) - v(t_0))`
    on the date index, held constant before the first and after the last observation, and 0
    where the series has none (what :func:`fusion_models.completion.linear_interpolation`
    does, except for its date-mean fallback). Observed entries keep their value.
    ``values`` ``(B, T, C, H, W)``, ``weight`` ``(B, T, 1, H, W)`` or ``(B, T, C, H, W)``;
    returns ``(B, T, C, H, W)``.
    """
    if values.ndim < 2 or weight.ndim != values.ndim:
        raise ValueError(
            f"values and weight need the same number of dims, time at dim 1; got {tuple(values.shape)} "
            f"and {tuple(weight.shape)}"
        )
    t = values.shape[1]
    seen = weight > 0
    if any(s not in (1, v) for s, v in zip(seen.shape, values.shape, strict=True)):
        seen = seen.expand_as(values)  # a mask of another shape: expand_as refuses it
    # the nearest observed date before and after each entry, found on the mask's own shape (one
    # band when the mask is per pixel) and with time last, where the scans run over contiguous
    # memory: about 5x faster than scanning the expanded mask along dim 1, the same result
    idx = torch.arange(t, device=values.device)
    scan = seen.movedim(1, -1)
    prev = torch.where(scan, idx, -1).cummax(dim=-1).values.movedim(-1, 1)
    nxt = torch.where(scan, idx, t).flip(-1).cummin(dim=-1).values.flip(-1).movedim(-1, 1)
    has_prev, has_next = prev >= 0, nxt < t
    v_prev = values.gather(1, prev.clamp(0, t - 1).expand_as(values))
    v_next = values.gather(1, nxt.clamp(0, t - 1).expand_as(values))
    at = idx.view(1, t, *([1] * (values.ndim - 2)))
    frac = ((at - prev).to(values.dtype) / (nxt - prev).clamp_min(1).to(values.dtype))
    both = v_prev + frac * (v_next - v_prev)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(has_prev & has_next, both,
                       torch.where(has_prev, v_prev, torch.where(has_next, v_next, zero)))


class StackingHead(nn.Module):
    """*Ours*: a linear stack of residual spreads, weighted per cloud-cover class of a date image.

    After the layers and the refiner, the completion :math:`\\mathcal Z` and its low-rank part
    :math:`\\mathcal L = \\mathcal Z \\times_n D_n D_n^T` leave the misfit
    :math:`\\mathcal R = \\mathcal W * (\\mathcal X - \\mathcal L)` at the observed entries.
    The head adds, at the missing entries,

    .. math::
        \\Delta = \\sum_j \\beta_{k(b, t), j} \\, F_j, \\qquad
        F = \\big(I_t(\\mathcal R),\\; I_t(\\mathcal L) - \\mathcal Z,\\;
        \\mathcal L - \\mathcal Z,\\; \\tfrac{s_\\sigma}{s_\\sigma + \\kappa} N_\\sigma(\\mathcal R)
        \\text{ for } \\sigma \\in \\{1, 3, 9\\}\\big),

    with :math:`I_t` the per-pixel linear interpolation in time from the observed dates
    (:func:`temporal_interpolation`: a date's own misfit is unknown under a cloud, but its
    neighbours' is not), :math:`N_\\sigma` the Gaussian normalized convolution of the misfit
    within the date image and :math:`s_\\sigma` its support (:func:`normalized_convolution`,
    shrunk towards 0 where support is thin, :math:`\\kappa = 0.1`), and :math:`k(b, t)` the class
    of the image's missing share (edges ``EDGES``: under 50 %, 50-80 %, 80-95 %, 95 % and more).
    The weights :math:`\\beta` (``weights``, a buffer, ``(len(EDGES) + 1, 6)``) are not trained
    by back-propagation: they are the least-squares solution on entries hidden from observed data
    (:func:`fusion_models.lrtcnet_training.fit_stacking`), i.e. stacked generalisation (Wolpert,
    D. H. (1992), "Stacked generalization", Neural Networks 5(2):241-259; Breiman, L. (1996),
    "Stacked regressions", Machine Learning 24:49-64) of the net with temporal interpolation and
    spatial kriging-like spreads of its misfit. Zero weights (the start) are the identity.

    Shapes::

        z, lowrank, xo, w: (B, T, C, H, W)  ->  (B, T, C, H, W)
    """

    EDGES = (0.5, 0.8, 0.95)
    SIGMAS = (1.0, 3.0, 9.0)
    KAPPA = 0.1
    N_FEATURES = 3 + len(SIGMAS)

    weights: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weights", torch.zeros(len(self.EDGES) + 1, self.N_FEATURES))

    def classes(self, w: Tensor) -> Tensor:
        """``(B, T)`` class index of each date image's missing share (``w`` ``(B, T, C, H, W)``)."""
        missing = 1 - w[:, :, 0].mean(dim=(-2, -1))
        edges = torch.tensor(self.EDGES, dtype=missing.dtype, device=missing.device)
        return torch.bucketize(missing, edges, right=True)

    def features(self, z: Tensor, lowrank: Tensor, xo: Tensor, w: Tensor) -> Tensor:
        """The ``N_FEATURES`` spreads ``(B, T, F, C, H, W)`` of the misfit (see the class doc)."""
        if not z.shape == lowrank.shape == xo.shape == w.shape or z.ndim != 5:
            raise ValueError(
                f"z, lowrank, xo and w must all be (B, T, C, H, W); got {tuple(z.shape)}, "
                f"{tuple(lowrank.shape)}, {tuple(xo.shape)}, {tuple(w.shape)}"
            )
        b, t, c, h, wd = z.shape
        mask = w[:, :, :1]  # (B, T, 1, H, W)
        resid = (w * (xo - lowrank)).clamp(-CLIP, CLIP)
        feats = [temporal_interpolation(resid, mask), temporal_interpolation(lowrank, mask) - z,
                 lowrank - z]
        weight = mask.reshape(b * t, 1, h, wd)
        for sigma in self.SIGMAS:
            spread, support = normalized_convolution(resid.reshape(b * t, c, h, wd), weight, sigma)
            feats.append((spread * support / (support + self.KAPPA)).reshape(b, t, c, h, wd))
        return torch.stack(feats, dim=2)

    def forward(self, z: Tensor, lowrank: Tensor, xo: Tensor, w: Tensor) -> Tensor:
        """The correction ``(B, T, C, H, W)`` (meaningful at missing entries only)."""
        feats = self.features(z, lowrank, xo, w)  # (B, T, F, C, H, W)
        beta = self.weights[self.classes(w)]  # (B, T, F)
        return torch.einsum("btf,btfchw->btchw", beta.to(feats.dtype), feats)
