"""Training, inference and scores for the per-pixel classifiers of ``fusion_models.classifiers``.

Class imbalance is handled with class-weighted cross entropy (King, G., Zeng, L. (2001),
"Logistic regression in rare events data", Political Analysis 9(2):137-163: weights inversely
proportional to class frequency, here capped) and reported with the macro-averaged F1 score
(the deck's "Results on 4D classification" table).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fusion_models.classifiers import PixelClassifier

__all__ = [
    "Batch",
    "FitResult",
    "autocast_dtype",
    "average_weights",
    "class_weights",
    "confusion_matrix",
    "dihedral",
    "fit_classifier",
    "predict_proba",
    "refresh_batchnorm",
    "scores",
    "scores_from_confusion",
    "shuffled_batches",
    "undo_dihedral",
]

log = logging.getLogger(__name__)

#: ``(x (n, T, C, P, P) float NaN where missing, valid (n, T, P, P) bool, labels (n, P, P) int,
#: -1 = no label)``, numpy arrays or tensors.
Batch = tuple[Any, Any, Any]


def class_weights(counts: np.ndarray, *, cap: float = 20.0) -> np.ndarray:
    """Balanced class weights :math:`w_k = N / (K_+ n_k)`, capped at ``cap``, for present classes.

    ``counts``: ``(K,)`` training pixels per class. Classes with no pixel get weight 0 (they never
    appear in the loss); the weights of the present classes are rescaled to average 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(
            f"counts must be a 1-D array of non-negative class counts with a positive sum; got "
            f"shape {counts.shape}, sum {counts.sum() if counts.size else 0}"
        )
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    w = np.minimum(w, cap)
    w[present] /= w[present].mean()
    return w.astype(np.float32)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, ``[i, j]`` = truth class ``i`` predicted as ``j``; pixels with
    ``y_true < 0`` are ignored. Confusions of parts of a data set add up to the whole's."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred need the same size; got {y_true.size} and {y_pred.size}")
    keep = y_true >= 0
    t, p = y_true[keep].astype(np.int64), y_pred[keep].astype(np.int64)
    if t.size and (t.max() >= n_classes or p.min() < 0 or p.max() >= n_classes):
        raise ValueError(f"class indices must be in [0, {n_classes}); got truth max {t.max()}, "
                         f"predictions in [{p.min()}, {p.max()}]")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """:func:`scores` of a (summed) :func:`confusion_matrix`."""
    conf = np.asarray(conf, dtype=np.int64)
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    total = int(conf.sum())
    return {
        "accuracy": float(tp.sum() / max(total, 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion": conf.tolist(),
        "pixels": total,
    }


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix.

    Pixels with ``y_true < 0`` are ignored. Macro-F1 averages the F1 of the classes present in
    ``y_true`` (a class absent from the truth has no recall to score), i.e.
    :math:`F_1^{macro} = \\frac{1}{|K_+|} \\sum_{k \\in K_+} \\frac{2 P_k R_k}{P_k + R_k}`.
    ``confusion[i, j]`` counts truth class ``i`` predicted as ``j``.
    """
    return scores_from_confusion(confusion_matrix(y_true, y_pred, n_classes))


def shuffled_batches(x: np.ndarray, valid: np.ndarray, labels: np.ndarray, *, batch: int,
                     rng: np.random.Generator) -> list[Batch]:
    """One epoch of training batches: a fresh random permutation of the ``n`` patches cut into
    ``ceil(n / batch)`` batches of (almost) equal size.

    Drawing the batch *members* anew every epoch matters: batches of neighbouring patches (runs
    of a store's chunk) put a rare, spatially clustered class (a village's dense urban pixels)
    into the same one or two batches every epoch, whose batch-norm statistics then differ from
    every other batch's, and the class was never learnt.
    """
    n = len(x)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1 (patches per step); got batch={batch!r}")
    if len(valid) != n or len(labels) != n or n == 0:
        raise ValueError(f"x, valid and labels need the same number (> 0) of patches; got "
                         f"{n}, {len(valid)}, {len(labels)}")
    order = rng.permutation(n)
    return [(x[i], valid[i], labels[i]) for i in np.array_split(order, -(-n // batch))]


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); ``None`` on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device) -> Any:
    dtype = autocast_dtype(device)
    return torch.autocast(device_type="cuda", dtype=dtype) if dtype is not None else nullcontext()


def _to(batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    x, valid, y = (torch.as_tensor(a) for a in batch)
    nb = device.type == "cuda"
    return (x.to(device, torch.float32, non_blocking=nb), valid.to(device, torch.bool, non_blocking=nb),
            y.to(device, torch.int64, non_blocking=nb))


def dihedral(a: Tensor, k: int, flip: bool) -> Tensor:
    """One of the 8 symmetries of the square on the last two axes: ``k`` quarter turns, then a
    left-right flip when ``flip``."""
    a = torch.rot90(a, k, dims=(-2, -1))
    return a.flip(-1) if flip else a


def undo_dihedral(a: Tensor, k: int, flip: bool) -> Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(a, k, f), k, f) == a``."""
    a = a.flip(-1) if flip else a
    return torch.rot90(a, -k, dims=(-2, -1))


def _augment(x: Tensor, valid: Tensor, y: Tensor, crop: int | None,
             gen: torch.Generator, *, per_sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """A random ``crop x crop`` window (one per batch), then a random symmetry of the square
    (:func:`dihedral`), drawn per sample (``per_sample``) or once per batch."""
    size = x.shape[-1]
    if crop is not None and crop < size:
        r, c = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=gen))
        x, valid, y = x[..., r:r + crop, c:c + crop], valid[..., r:r + crop, c:c + crop], y[..., r:r + crop, c:c + crop]
    n = x.shape[0] if per_sample else 1
    ks = torch.randint(0, 4, (n,), generator=gen).tolist()
    flips = torch.randint(0, 2, (n,), generator=gen).tolist()
    if not per_sample:
        return (dihedral(x, ks[0], bool(flips[0])), dihedral(valid, ks[0], bool(flips[0])),
                dihedral(y, ks[0], bool(flips[0])))
    parts = [[dihedral(a[i:i + 1], ks[i], bool(flips[i])) for i in range(n)] for a in (x, valid, y)]
    return torch.cat(parts[0]), torch.cat(parts[1]), torch.cat(parts[2])


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_classifier` did: per-epoch loss and validation macro-F1, the epoch kept."""

    history: list[float]
    val_f1: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    #: validation macro-F1 of the weight average of the last epochs (``average``), NaN when not made
    averaged_val_f1: float = float("nan")
    #: whether the model holds that weight average (it beat the best single epoch on validation)
    averaged: bool = False


def fit_classifier(
    model: PixelClassifier,
    train: Callable[[], Iterable[Batch]],
    *,
    val: Callable[[], Iterable[Batch]] | None = None,
    weights: np.ndarray | None = None,
    epochs: int = 20,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    crop: int | None = 16,
    per_sample_augment: bool = True,
    label_smoothing: float = 0.0,
    average: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> FitResult:
    """Train ``model`` with class-weighted cross entropy and AdamW (cosine learning-rate decay).

    Parameters
    ----------
    model
        A :class:`~fusion_models.classifiers.PixelClassifier` (trained in place; on return it
        holds the weights of the epoch with the best validation macro-F1, or of the last epoch).
    train, val
        Called once per epoch, each returns an iterable of :data:`Batch` (e.g. a DataLoader over
        a patch store). Labels ``-1`` are ignored.
    weights
        ``(K,)`` class weights of the loss (see :func:`class_weights`); ``None``: unweighted.
    epochs, lr, weight_decay
        Passes over ``train``, peak learning rate and AdamW weight decay.
    crop
        Train on a random ``crop x crop`` window of each batch (with random flips and quarter
        turns): the models are fully convolutional, so this cuts the cost per step.
    per_sample_augment
        Draw the flip / quarter turn per patch (default) instead of once per batch.
    label_smoothing
        :math:`\\varepsilon` of the cross entropy against :math:`(1 - \\varepsilon)\\,
        \\mathrm{onehot} + \\varepsilon / K` (Szegedy et al. (2016), "Rethinking the Inception
        architecture", CVPR), in [0, 1).
    average
        Stochastic weight averaging (Izmailov et al. (2018), "Averaging weights leads to wider
        optima and better generalization", UAI): the weights of the last ``average`` epochs are
        averaged, the batch-norm statistics re-estimated on ``train`` (:func:`refresh_batchnorm`),
        and the average is kept when its validation macro-F1 is at least the best single
        epoch's (without ``val``: always). 0: off.
    device
        ``cpu`` or ``cuda`` (mixed precision there, see :func:`autocast_dtype`).
    seed
        Seeds the initialisation-independent randomness (augmentation draws).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1; got epochs={epochs!r}")
    if isinstance(average, bool) or not isinstance(average, int) or not 0 <= average <= epochs:
        raise ValueError(f"average must be an integer in [0, epochs={epochs}] (epochs whose weights "
                         f"are averaged, 0 = off); got average={average!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got label_smoothing={label_smoothing!r}")
    dev = torch.device(device)
    model.to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=lr / 50)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=dev)
    loss_fn = nn.CrossEntropyLoss(weight=w, ignore_index=-1, label_smoothing=label_smoothing)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(dev) == torch.float16)
    history: list[float] = []
    val_f1: list[float] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    snapshots: list[dict[str, Tensor]] = []  # weights of the last `average` epochs
    started = time.perf_counter()
    epochs_iter: Iterable[int] = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs_iter = tqdm(epochs_iter, desc=f"train {model.kind}", unit="epoch")
    for epoch in epochs_iter:
        model.train()
        total, steps = 0.0, 0
        for batch in train():
            x, valid, y = _augment(*_to(batch, dev), crop, gen, per_sample=per_sample_augment)
            if not bool((y >= 0).any()):
                continue
            opt.zero_grad(set_to_none=True)
            with _autocast(dev):
                loss = loss_fn(model(x, valid).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach())
            steps += 1
        sched.step()
        history.append(total / max(steps, 1))
        if average and epoch >= epochs - average:
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if val is not None:
            f1 = _val_f1(model, val(), dev)
            val_f1.append(f1)
            if best is None or f1 > best[0]:
                best = (f1, epoch, copy.deepcopy(model.state_dict()))
        log.debug("%s epoch %d: loss %.4f%s", model.kind, epoch, history[-1],
                  f", val macro-F1 {val_f1[-1]:.3f}" if val_f1 else "")
    best_epoch = epochs - 1
    averaged, averaged_f1 = False, float("nan")
    if snapshots:
        model.load_state_dict(average_weights(snapshots))
        refresh_batchnorm(model, train(), device=dev)
        averaged = True
        if val is not None:
            averaged_f1 = _val_f1(model, val(), dev)
            averaged = best is None or averaged_f1 >= best[0]
    if not averaged and best is not None:
        model.load_state_dict(best[2])
        best_epoch = best[1]
    seconds = time.perf_counter() - started
    log.info("%s: %d epochs in %.1f s, kept %s%s", model.kind, epochs, seconds,
             f"the average of the last {average} epochs" if averaged else f"epoch {best_epoch}",
             f" (val macro-F1 {averaged_f1 if averaged else best[0]:.3f})" if best is not None else "")
    return FitResult(history=history, val_f1=val_f1, best_epoch=-1 if averaged else best_epoch,
                     seconds=seconds, averaged_val_f1=averaged_f1, averaged=averaged)


def _val_f1(model: PixelClassifier, batches: Iterable[Batch], dev: torch.device) -> float:
    truth, pred = [], []
    model.eval()
    for batch in batches:
        truth.append(np.asarray(batch[2]).ravel())
        pred.append(_proba(model, batch, dev).argmax(axis=1).ravel())
    return float(scores(np.concatenate(truth), np.concatenate(pred), model.n_classes)["macro_f1"])


def average_weights(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Entry-wise mean of state dicts, :math:`\\bar w = \\frac{1}{S} \\sum_s w_s`, for floating
    tensors; integer buffers (batch-norm step counters) are taken from the last state."""
    if not states:
        raise ValueError("average_weights needs at least one state dict; got none")
    keys = states[-1].keys()
    if any(st.keys() != keys for st in states):
        raise ValueError("average_weights needs state dicts of the same model (same keys)")
    return {k: torch.stack([st[k].float() for st in states]).mean(0).to(states[-1][k].dtype)
            if states[-1][k].is_floating_point() else states[-1][k].clone() for k in keys}


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, batches: Iterable[Batch], *, device: torch.device | str = "cpu") -> int:
    """Re-estimate every batch-norm layer's running mean and variance as the plain average over
    ``batches`` (needed after averaging weights: the old statistics belong to other weights).
    Returns the number of batches seen; the model is left in eval mode."""
    dev = torch.device(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    n = 0
    for batch in batches:
        x, valid, _ = _to(batch, dev)
        with _autocast(dev):
            model(x, valid)
        n += 1
    for m, mom in zip(norms, momenta, strict=True):
        m.momentum = mom
    model.eval()
    return n


@torch.no_grad()
def _proba(model: PixelClassifier, batch: Batch, dev: torch.device, tta: bool = False) -> np.ndarray:
    x, valid, _ = _to(batch, dev)
    views = [(k, f) for k in range(4) for f in (False, True)] if tta else [(0, False)]
    total = torch.zeros((), device=dev)
    for k, f in views:
        with _autocast(dev):
            logits = model(dihedral(x, k, f), dihedral(valid, k, f))
        total = total + undo_dihedral(torch.softmax(logits.float(), dim=1), k, f)
    return (total / len(views)).cpu().numpy()


def predict_proba(
    model: PixelClassifier,
    batches: Callable[[], Iterable[Batch]] | Iterable[Batch],
    *,
    device: torch.device | str = "cpu",
    tta: bool = False,
) -> Iterator[np.ndarray]:
    """Class probabilities ``(n, K, P, P)`` float32 per batch, in the batches' order (eval mode,
    mixed precision on CUDA). ``tta``: test-time augmentation, the mean of the probabilities over
    the 8 symmetries of the square (:func:`dihedral`, mapped back with :func:`undo_dihedral`)."""
    dev = torch.device(device)
    model.to(dev).eval()
    for batch in batches() if callable(batches) else batches:
        yield _proba(model, batch, dev, tta)
