"""Training and prediction of the UNet + LRTD label-recovery model (:mod:`fusion_models.unet_lrtd`).

Sparse or coarse labels in, a fitted :class:`~fusion_models.unet_lrtd.UNetLRTD` and class
probabilities out: the deck's loss (cross-entropy on labelled pixels plus the low-rank term,
:func:`~fusion_models.unet_lrtd.lrtd_loss`), class weights, dihedral augmentation, validation-mIoU
epoch selection, and the fusion of a prediction with a coarse layer's local class shares.

Pure torch/numpy: arrays in, arrays out; no I/O.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusion_models.device import keeps_torch_rng, resolve_device
from fusion_models.unet_lrtd import IGNORE, UNetLRTD, lrtd_loss, stack_time

__all__ = [
    "FitResult",
    "augment_patches",
    "class_weights",
    "fit_unet_lrtd",
    "fuse_prior",
    "local_class_share",
    "miou_index",
    "predict_proba",
]

log = logging.getLogger(__name__)



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


@keeps_torch_rng
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
    on_step: Callable[[], object] | None = None,
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
    on_step
        Called after every optimiser step, ``ceil(P / batch)`` times an epoch (a progress bar).

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
    dev = resolve_device(device)
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
            if on_step is not None:  # a progress bar's update: an epoch of a large cube is minutes
                on_step()
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
