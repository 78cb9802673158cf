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

__all__ = ["LRTCNet", "default_device", "mode_product", "tucker_project"]

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu`` (the same code path runs on both)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mode_product(x: Tensor, matrix: Tensor, dim: int) -> Tensor:
    """Mode product along tensor dimension ``dim``: ``(..., I, ...) x (J, I) -> (..., J, ...)``."""
    moved = x.movedim(dim, -1)  # (..., I)
    return (moved @ matrix.T).movedim(-1, dim)  # (..., J) -> back in place


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
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        ranks: Sequence[int] | None = None,
        layers: int = 20,
        factors: Sequence[Tensor] | None = None,
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
        self.ranks = ranks
        self.layers = layers
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

    def layer(
        self, z: Tensor, x: Tensor, w: Tensor, factors: Sequence[Tensor | None] | None = None
    ) -> Tensor:
        """One layer: ``T = Z x_n D_n D_n^T``; ``Z <- T + W*X - W*T`` (``x`` zero at missing).

        For a binary ``W`` the update is evaluated as ``where(W, X, T)``: the same value, and
        observed entries come back bit for bit (no ``T - T`` rounding).
        """
        t = tucker_project(z, self.factors() if factors is None else factors)
        return torch.where(w > 0, x, t)

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
            ``(B, T, C, H, W)`` float; missing entries may hold anything (NaN included).
        mask
            ``(B, T, C, H, W)`` or ``(B, T, 1, H, W)`` bool, True where observed.
        z0
            ``(B, T, C, H, W)`` starting values at missing entries (e.g. a temporal
            interpolation); default 0 (the deck's ``P_Omega(X)``).

        Returns
        -------
        Tensor
            ``(B, T, C, H, W)`` completed: equal to ``x`` where observed.
        """
        self._check(x, mask)
        w = mask.to(x.dtype).expand_as(x)
        xo = torch.where(w > 0, x, torch.zeros_like(x))  # (B, T, C, H, W), 0 at missing
        if z0 is None:
            z = xo
        else:
            if z0.shape != x.shape:
                raise ValueError(f"z0 must have the shape of x {tuple(x.shape)}; got {tuple(z0.shape)}")
            z = torch.where(w > 0, xo, z0)
        factors = self._active()  # evaluate the parametrisation once per forward
        for _ in range(self.layers):
            z = self.layer(z, xo, w, factors)
        return z
