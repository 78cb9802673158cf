"""Fitting LRTC-Net without ground truth: hide observed entries under cloud-shaped masks, learn to
restore them (self-supervised, in the spirit of Noise2Self: Batson, J., Royer, L. (2019),
"Noise2Self: blind denoising by self-supervision", ICML), or supervised against a known truth.

Pure numpy/torch: patches in, a trained :class:`~fusion_models.lrtcnet.LRTCNet` and filled patches
out. Patches are ``(P, T, C, H, W)`` float with ``observed`` ``(P, T, H, W)`` bool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from fusion_models.completion import linear_interpolation
from fusion_models.lrtcnet import LRTCNet, default_device

__all__ = ["FitResult", "cloud_masks", "complete", "fit_lrtcnet", "initial_factors", "interpolate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """A trained net and its loss history (mean hidden-entry MSE per epoch, standardised units)."""

    net: LRTCNet
    history: tuple[float, ...]
    seconds: float


def cloud_masks(
    shape: Sequence[int],
    *,
    share: float,
    rng: np.random.Generator,
    scale: float = 0.12,
    kind: str = "cloud",
) -> np.ndarray:
    """Random masks shaped like clouds: thresholded smooth noise, one independent field per image.

    Each ``(H, W)`` image gets Gaussian white noise smoothed by a Gaussian of
    :math:`\\sigma = \\text{scale} \\cdot \\min(H, W)` and thresholded at its
    :math:`1 - s` quantile, where the per-image cover ``s`` is drawn uniformly in
    ``[0, 2 share]`` (clipped to 0.95), so images range from clear to mostly cloudy and the mean
    cover is about ``share``. ``kind="random"`` gives independent pixels with probability ``share``.

    Parameters
    ----------
    shape
        ``(..., H, W)``; one field per leading index.
    share
        Mean covered share in ``[0, 1)``.
    rng
        Source of randomness.
    scale
        Blob size relative to the image side.
    kind
        ``"cloud"`` or ``"random"``.

    Returns
    -------
    np.ndarray
        Bool of ``shape``, True under a cloud.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1); got share={share}")
    if kind == "random":
        return rng.random(tuple(shape)) < share
    if kind != "cloud":
        raise ValueError(f"kind must be 'cloud' or 'random'; got kind={kind!r}")
    *lead, h, w = (int(s) for s in shape)
    n = int(np.prod(lead)) if lead else 1
    sigma = max(scale * min(h, w), 0.5)
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        s = min(rng.uniform(0, 2 * share), 0.95)
        if s <= 0:
            continue
        field = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma, mode="wrap")
        out[i] = field > np.quantile(field, 1 - s)
    return out.reshape(tuple(shape))


def interpolate(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Per-pixel linear temporal interpolation of ``(P, T, C, H, W)`` patches (the net's ``z0``)."""
    mask = np.broadcast_to(observed[:, :, None], x.shape)
    if not mask.any():
        return np.zeros_like(x, dtype=np.float32)
    flat = np.moveaxis(x, 1, 0)  # (T, P, C, H, W)
    fm = np.moveaxis(mask, 1, 0)
    return np.moveaxis(linear_interpolation(flat, fm, axis=0), 0, 1).astype(np.float32)


def initial_factors(z: np.ndarray, ranks: Sequence[int]) -> list[np.ndarray]:
    """HOSVD of a set of samples: leading eigenvectors of :math:`\\sum_p Z_{p(n)} Z_{p(n)}^T`.

    ``z`` is ``(P, *sample_shape)`` (e.g. interpolation-filled patches); returns ``(I_n, R_n)``.
    """
    factors = []
    for n, rank in enumerate(ranks):
        moved = np.moveaxis(z, n + 1, 1).reshape(z.shape[0], z.shape[n + 1], -1)  # (P, I_n, rest)
        gram = np.einsum("pik,pjk->ij", moved, moved, optimize=True)
        _, vecs = np.linalg.eigh(gram)
        factors.append(np.ascontiguousarray(vecs[:, ::-1][:, :rank]))
    return factors


def fit_lrtcnet(
    x: np.ndarray,
    observed: np.ndarray,
    *,
    ranks: Sequence[int] | None = None,
    layers: int = 20,
    epochs: int = 20,
    batch: int = 16,
    lr: float = 1e-3,
    hide_share: float = 0.3,
    hide_kind: str = "cloud",
    truth: np.ndarray | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> FitResult:
    """Train LRTC-Net on patches, self-supervised (default) or against ``truth``.

    Self-supervised: each step hides a further share of the *observed* entries under
    :func:`cloud_masks` (``hide_kind``), runs the net from the interpolation of what is left and
    minimises :math:`\\mathrm{MSE}(\\mathcal Z^L, \\mathcal X)` on the hidden entries.
    Supervised (``truth`` given): the net sees ``x`` under ``observed`` and the loss is the MSE
    against ``truth`` on the unobserved entries. Factors start from :func:`initial_factors` of the
    interpolated training patches; Adam (Kingma & Ba 2015) with learning rate ``lr``.

    Parameters
    ----------
    x
        ``(P, T, C, H, W)`` float32, standardised (per band zero mean, unit variance is best);
        values under ``~observed`` are ignored.
    observed
        ``(P, T, H, W)`` bool.
    ranks, layers
        Passed to :class:`LRTCNet` (default ranks: 10 % of each dimension).
    epochs, batch, lr
        Passes over the patches, patches per step and Adam's learning rate.
    hide_share, hide_kind
        Mean share of observed pixels hidden per image and the mask kind.
    truth
        Optional ``(P, T, C, H, W)`` complete truth for supervised training.
    seed
        Seeds the masks, the batch order and the initial factors.
    device
        Default: :func:`default_device`.

    Returns
    -------
    FitResult
    """
    if x.ndim != 5 or observed.shape != (x.shape[0], x.shape[1], *x.shape[3:]):
        raise ValueError(
            f"x must be (P, T, C, H, W) and observed (P, T, H, W); got x {x.shape}, "
            f"observed {observed.shape}"
        )
    for name, value in (("epochs", epochs), ("batch", batch), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r}")
    device = torch.device(device) if device is not None else default_device()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    started = time.perf_counter()
    x = np.where(np.broadcast_to(observed[:, :, None], x.shape), x, 0.0).astype(np.float32)
    shape = x.shape[1:]
    ranks = tuple(ranks) if ranks is not None else tuple(max(1, int(np.ceil(0.1 * s))) for s in shape)
    z0 = interpolate(x, observed)
    init = initial_factors(z0 if truth is None else truth.astype(np.float32), ranks)
    net = LRTCNet(shape, ranks=ranks, layers=layers, factors=[torch.tensor(f.tolist()) for f in init])
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history: list[float] = []
    n = x.shape[0]
    for epoch in range(epochs):
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            xb, ob = x[idx], observed[idx]
            if truth is None:
                hidden = cloud_masks(ob.shape, share=hide_share, rng=rng, kind=hide_kind) & ob
                seen = ob & ~hidden
                target_np, scored = xb, hidden
            else:
                seen, target_np, scored = ob, truth[idx].astype(np.float32), ~ob
            if not scored.any():
                continue
            zb = interpolate(xb, seen)
            xt = torch.from_numpy(xb).to(device)
            mt = torch.from_numpy(seen[:, :, None]).to(device)
            st = torch.from_numpy(np.broadcast_to(scored[:, :, None], xb.shape).copy()).to(device)
            target = torch.from_numpy(target_np).to(device)
            out = net(xt, mt, z0=torch.from_numpy(zb).to(device))
            loss = ((out - target)[st] ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        log.debug("fit_lrtcnet: epoch %d, loss %.5f", epoch + 1, history[-1])
    seconds = time.perf_counter() - started
    log.info("fit_lrtcnet: %d epochs in %.1f s, last loss %.5f", epochs, seconds, history[-1])
    return FitResult(net.eval(), tuple(history), seconds)


@torch.no_grad()
def complete(
    net: LRTCNet, x: np.ndarray, observed: np.ndarray, *, batch: int = 16
) -> np.ndarray:
    """Fill ``(P, T, C, H, W)`` patches where ``observed`` ``(P, T, H, W)`` is False.

    The net starts from the per-pixel linear interpolation; observed entries are returned as given.
    """
    device = next(net.parameters()).device
    out = np.empty(x.shape, dtype=np.float32)
    xs = np.where(np.broadcast_to(observed[:, :, None], x.shape), x, 0.0).astype(np.float32)
    for start in range(0, x.shape[0], batch):
        sl = slice(start, start + batch)
        z0 = torch.from_numpy(interpolate(xs[sl], observed[sl])).to(device)
        xt = torch.from_numpy(xs[sl]).to(device)
        mt = torch.from_numpy(observed[sl][:, :, None]).to(device)
        out[sl] = net(xt, mt, z0=z0).cpu().numpy()
    return out
