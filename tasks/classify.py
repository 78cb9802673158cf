"""The classification stage: cube.zarr -> classes.zarr + a colour-mapped COG, with a 4D-CNN.

Per-pixel classification into the 15 NLCD classes of the deck, or into the classes of the label
layer when it follows another legend (:func:`label_scheme`: ESA WorldCover, a user's own codes
1..K with ``flag_values`` / ``flag_meanings``). Each pixel is a sample; the
4D-CNN (``fusion_models.classifiers.CNN4D``, separable 4D convolutions by default)
is fully convolutional, so a pixel's class is decided from its 5 x 5 pixel neighbourhood over all
dates and bands. The map is predicted window by window straight from the cube, each window with a
halo of that radius (:func:`map_strips`): it equals one pass over the whole cube, without seams
where windows meet, and covers every pixel the cube observed on at least one date (valid with every
band finite: :func:`tasks.cube.observed_anywhere`, as gap filling decides what it never saw). A
pixel never observed (e.g. the empty edges left by warping a scene onto the grid) gets no class: the map's fill (:attr:`LabelScheme.fill`) and NaN confidence, in ``classes.zarr``
and the COG, and is left out of the class counts and the test scores. Labels on such pixels still
reach training as before (they come from the label layer through the patch store; the network sees
their neighbourhood).

Training (no ``model``): labels are the cube's static label layer (``landcover(y, x)`` NLCD codes,
other names with ``label=``), cut into ``<out>.patches.zarr`` by the patch stage with its
spatial-block split: the model trains on ``train`` patches, keeps the epoch with the best
validation macro-F1 on ``val`` patches and is scored on ``test`` patches (buffer patches are
never used). Class imbalance: class-weighted cross entropy (inverse class frequency, capped).
Batches: training patches that fit in memory (``IN_MEMORY_BYTES``) are batched anew at random
every epoch (``shuffled_batches``), each patch with its own random flip / quarter turn.
Applying (``model=M.pt``): the saved model classifies the cube; it is scored on the test patches
when the cube has the label layer. Test scores are the map's over the test patches' pixels.

Inputs: NaN or not-``valid`` pixel-dates are set to 0 after per-band standardisation and the
observed mask is an extra input feature (see ``PixelClassifier``).

Outputs: ``classes.zarr`` (``classes(y, x)`` uint8 class codes with ``flag_values`` /
``flag_meanings``, the fill where never observed; ``confidence(y, x)`` the winning class
probability, NaN where never observed; the cube's grid), its
manifest (key, test scores, training history), ``classes.zarr.tif`` (Cloud-Optimized GeoTIFF with the
NLCD colour table or the layer's colours), the weights ``classes.zarr.cnn4d.pt`` (a ``torch.save`` dict with the state
dict, loaded with ``weights_only=True``), and a confusion-matrix PNG.
"""

from __future__ import annotations

import argparse
import logging
import time as _time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import dask.array as dask_array
import numpy as np
import torch
import xarray as xr
import zarr
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from torch.utils.data import DataLoader, Dataset

from fusion_models.classifier_training import (
    class_weights,
    confusion_matrix,
    fit_classifier,
    predict_proba,
    scores_from_confusion,
    shuffled_batches,
)
from fusion_models.classifiers import MODELS as CLASSIFIER_KINDS
from fusion_models.classifiers import PixelClassifier, build_classifier
from fusion_models.device import DEVICE_HELP, keeps_torch_rng, resolve_device
from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
    fingerprint,
    load_checkpoint,
    product_attrs,
    reuse_or_refuse,
    save_checkpoint,
    stage_key,
    write_manifest,
)
from tasks.cube import (
    cube_crs,
    cube_transform,
    flag_meanings,
    observed_anywhere,
    open_cube,
    training_mismatch,
    unobserved_reason,
    zarr_array,
)
from tasks.errors import CheckpointError
from tasks.labels import check_byte_codes, raster_labels
from tasks.legends import NLCD_CLASSES
from tasks.patch import make_patches, patch_split
from tasks.quicklook import class_names, cog_path, colour_table
from tasks.runlog import reports_warnings

__all__ = [
    "CLASSES",
    "LabelScheme",
    "PatchBatches",
    "add_cli",
    "band_statistics",
    "classify_cube",
    "classify_task",
    "cog_path",
    "confusion_png",
    "label_scheme",
    "load_model",
    "map_quicklook",
    "map_strips",
    "patch_loader",
    "save_model",
    "weights_path",
]

log = logging.getLogger(__name__)

STAGE = "classify"
#: rows and columns of the class map's chunks; rows of the strips it is predicted in (map_strips)
MAP_CHUNK = 256
MAP_ROWS = 64
#: training patches up to this size are held in memory and batched at random every epoch;
#: larger training sets are read as runs of a store chunk (batches in random order)
IN_MEMORY_BYTES = 2 * 1024**3
CODE_MODULES = ("tasks.classify",)  # and every project module it imports (checkpoint.code_modules)
#: The 15 NLCD classes of the deck, in class-index order.
CLASSES: tuple[int, ...] = tuple(NLCD_CLASSES)
#: label codes read as "no label" in an NLCD layer without a legend (NLCD's nodata: 0 before 2019, 250 since)
_NLCD_NODATA = frozenset({0, 250})


def class_lookup(classes: tuple[int, ...]) -> np.ndarray:
    """``(256,)`` int64: class index of each uint8 code, -1 for codes outside ``classes``."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[list(classes)] = np.arange(len(classes))
    return lut


@dataclass(frozen=True)
class LabelScheme:
    """The classes a classifier predicts: codes in class-index order, their names and colours."""

    classes: tuple[int, ...]
    names: dict[int, str]
    colours: dict[int, tuple[int, int, int, int]]

    @property
    def nlcd(self) -> bool:
        return self.classes == CLASSES

    @property
    def fill(self) -> int:
        """The code of pixels without a class (never observed): 0, or 255 when 0 is a class."""
        return 255 if 0 in self.classes else 0


def label_scheme(layer: xr.DataArray, *, source: str = "cube") -> LabelScheme:
    """The classes of a ``(y, x)`` label layer.

    - NLCD (the deck's 15 classes) when the layer's ``flag_values`` are NLCD codes, or, without a
      legend, when every code present other than NLCD's no-data (0, 250) is an NLCD code;
    - else the layer's own legend: its ``flag_values`` (less ``nodata``) with ``flag_meanings``
      and ``flag_colors``, or the codes present (less ``nodata`` and NaN) named ``class <code>``.
      Codes must fit the uint8 map (0..254).
    """
    attrs = dict(layer.attrs)
    nodata = attrs.get("nodata")
    if "flag_values" in attrs:
        codes = sorted({int(c) for c in np.atleast_1d(attrs["flag_values"])} - {nodata})
        is_nlcd = set(codes) <= set(CLASSES)
    else:
        values = np.asarray(layer.values)
        if np.issubdtype(values.dtype, np.floating):
            values = values[np.isfinite(values)]
        codes = sorted({int(c) for c in np.unique(values)} - {nodata})
        is_nlcd = bool(set(codes) - _NLCD_NODATA) and set(codes) - _NLCD_NODATA <= set(CLASSES)
    if is_nlcd:  # the layer's own names and colours, where it has them, win over NLCD's
        return LabelScheme(CLASSES, class_names(CLASSES, attrs), colour_table(CLASSES, attrs))
    if len(codes) < 2:
        raise ValueError(f"{source}: the label layer {layer.name!r} holds {len(codes)} class code(s) {codes}; "
                         "a classifier needs at least 2 classes")
    check_byte_codes(codes[0], codes[-1], f"{source}: the label layer {layer.name!r}")
    classes = tuple(codes)
    return LabelScheme(classes, class_names(classes, attrs, nlcd=False), colour_table(classes, attrs))


# --- reading patches.zarr -----------------------------------------------------------------------


class PatchBatches(Dataset):
    """Batches of patches read from a ``patches.zarr`` store: item ``i`` is one batch.

    Each batch is a run of patch indices within one Zarr chunk where possible (one read per
    array), returned as ``(x (n, T, C, P, P) float32, valid (n, T, P, P) bool, labels (n, P, P)
    int64)`` with labels the class indices of ``classes`` (default the NLCD :data:`CLASSES`;
    ``-1``: no label or a code outside ``classes``; all ``-1`` when the store has no ``label``
    layer). The store is opened lazily in each DataLoader worker.
    """

    def __init__(self, store: str | Path, indices: np.ndarray, *, batch: int = 16,
                 label: str | None = "landcover", classes: tuple[int, ...] = CLASSES) -> None:
        self.store = str(store)
        self.label = label
        self.classes = tuple(classes)
        self._lookup = class_lookup(self.classes)
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        self._group: Any = None
        chunk = int(self._open()["data"].chunks[0])
        self.runs: list[np.ndarray] = []
        for c in np.unique(indices // chunk):
            members = indices[indices // chunk == c]
            self.runs.extend(np.array_split(members, int(np.ceil(len(members) / batch))))

    def _open(self) -> Any:
        if self._group is None:
            import zarr

            self._group = zarr.open_group(self.store, mode="r")
        return self._group

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_group": None}  # each worker opens its own handle

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = self._open()
        idx = self.runs[i]
        sel = slice(int(idx[0]), int(idx[-1]) + 1)
        rel = idx - idx[0]
        x = np.asarray(g["data"][sel])[rel].astype(np.float32, copy=False)
        valid = np.asarray(g["valid"][sel])[rel].astype(bool, copy=False)
        if self.label is not None and self.label in g:
            codes = np.asarray(g[self.label][sel])[rel]
            codes = np.nan_to_num(codes, nan=255) if np.issubdtype(codes.dtype, np.floating) else codes
            labels = self._lookup[np.clip(codes.astype(np.int64), 0, 255)]
        else:
            labels = np.full((len(idx), *x.shape[-2:]), -1, dtype=np.int64)
        return x, valid, labels


def patch_loader(batches: PatchBatches, *, shuffle: bool = False, workers: int = 0,
                 device: torch.device | None = None, seed: int = 0) -> DataLoader:
    """A DataLoader over :class:`PatchBatches` (batch_size None: one item is one batch), with
    ``workers`` reader processes and pinned memory on CUDA."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(batches, batch_size=None, shuffle=shuffle, num_workers=workers,
                      pin_memory=device is not None and device.type == "cuda",
                      persistent_workers=workers > 0, generator=gen)


def band_statistics(loader: DataLoader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-band mean and std of the observed values and the class pixel counts of a loader (over
    the classes of its :class:`PatchBatches`)."""
    total = count = square = None
    k = len(getattr(loader.dataset, "classes", CLASSES))
    classes = np.zeros(k, dtype=np.int64)
    for x, valid, labels in loader:
        x, valid, labels = np.asarray(x), np.asarray(valid), np.asarray(labels)
        obs = (valid & np.isfinite(x).all(axis=2))[:, :, None]  # (n, T, 1, P, P)
        vals = np.where(obs, x, 0.0).astype(np.float64)
        n = np.broadcast_to(obs, x.shape).sum(axis=(0, 1, 3, 4))
        s = vals.sum(axis=(0, 1, 3, 4))
        q = (vals**2).sum(axis=(0, 1, 3, 4))
        total, count, square = (s, n, q) if total is None else (total + s, count + n, square + q)
        classes += np.bincount(labels[labels >= 0].ravel(), minlength=k)
    if total is None or count is None or square is None or not count.all():
        raise ValueError("no observed (valid and finite) value in the training patches; "
                         "the cube has nothing to learn from")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32), classes


# --- model files --------------------------------------------------------------------------------


def weights_path(out: str | Path) -> Path:
    """``classes.zarr`` -> ``classes.zarr.cnn4d.pt`` (the model beside the artifact)."""
    out = Path(out)
    return out.with_name(out.name + ".cnn4d.pt")


def save_model(model: PixelClassifier, path: str | Path, *, bands: list[str],
               scheme: LabelScheme | None = None, dates: Sequence[str] = ()) -> Path:
    """Save the model with what rebuilds and describes it (``checkpoint.save_checkpoint``,
    loadable with weights_only): the class codes, names and colours (``scheme``, default NLCD),
    the bands and the dates (ISO days) of the training cube."""
    classes = scheme.classes if scheme else CLASSES
    if model.n_classes != len(classes):
        raise ValueError(f"the model predicts {model.n_classes} classes; the legend has {len(classes)}")
    legend = {"class_names": [scheme.names[c] for c in classes],
              "class_colours": [list(scheme.colours[c]) for c in classes]} if scheme else {}
    return save_checkpoint(path, model.state_dict(), kind=model.kind, config=model.config(), classes=list(classes),
                           **legend, bands=list(bands), dates=list(dates))


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[PixelClassifier, dict[str, Any]]:
    """A model saved by :func:`save_model` (``torch.load(weights_only=True)``) and its metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model file; train one with `fusioncube stage classify` first")
    try:
        state, meta = load_checkpoint(path, map_location=device)
    except CheckpointError as exc:  # not a torch file at all (a COG, a zip of something else, ...)
        raise ValueError(f"{path}: not a fusioncube classifier checkpoint ({exc}); a file that needs more than "
                         "weights_only=True is never loaded: it could run code") from exc
    if meta.get("kind") not in CLASSIFIER_KINDS or "config" not in meta:
        held = f"it holds a {meta['kind']} model" if meta.get("kind") else "it holds bare weights"
        raise ValueError(f"{path}: not a fusioncube classifier ({held}; expected a dict with kind, config, "
                         "state_dict as written by tasks.classify.save_model)")
    model = build_classifier(meta["kind"], **meta["config"])
    state.setdefault("seen", model.seen)  # saved before 2026-12: every class may be predicted
    model.load_state_dict(state)
    return model.eval(), meta


def model_mismatch(net: PixelClassifier, meta: dict[str, Any], ds: xr.Dataset) -> list[str]:
    """Why a saved classifier may read this cube wrongly (:func:`tasks.cube.training_mismatch`
    against the statistics and dates it was trained with)."""
    mean, std = (getattr(net, n).detach().cpu().numpy() for n in ("mean", "std"))
    return training_mismatch(ds, mean, std, meta.get("dates") or [])


def map_strips(net: PixelClassifier, data: xr.DataArray, valid: xr.DataArray, *, rows: int = MAP_ROWS,
               cols: int = 128, batch: int = 4, device: torch.device | str = "cpu",
               tta: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Class probabilities of every pixel of a cube, a strip of ``rows`` rows at a time:
    ``(first row, (K, rows, width) float32)``.

    Each ``rows x cols`` window is predicted with a halo of the network's receptive radius
    (:attr:`~fusion_models.classifiers.PixelClassifier.halo`) read from its neighbours, cut at the
    cube's edges (where the network pads as it does on a whole image), so the map equals one
    forward pass over the whole cube: no seams where windows meet, whatever their size.
    ``data``: ``(time, band, y, x)``, ``valid``: ``(time, y, x)``, lazy (read a strip at a time).
    Windows of one shape go through the network ``batch`` at a time (the defaults were the
    fastest on a 2-core CPU for the demo cube: 64 x 128 windows, 4 at a time). ``tta``: see
    :func:`~fusion_models.classifier_training.predict_proba`.
    """
    h = net.halo
    height, width = (int(n) for n in data.shape[-2:])
    # the cube is read a block of whole chunk rows at a time (a chunk decoded once, not once a strip)
    chunk = int(data.chunks[-2][0]) if data.chunks else rows
    block = rows * max(1, -(-chunk // rows))
    x_block: np.ndarray | None = None
    v_block: np.ndarray | None = None
    block_lo = 0
    for top in range(0, height, rows):
        n_rows = min(rows, height - top)
        lo, hi = max(0, top - h), min(height, top + n_rows + h)
        # x_block and v_block are read together: both None (the first strip) or neither
        if x_block is None or v_block is None or hi > block_lo + x_block.shape[-2]:
            block_lo, block_hi = lo, min(height, max(hi, top + block + h))
            x_block = np.asarray(data[:, :, block_lo:block_hi, :].values, dtype=np.float32)
            v_block = np.asarray(valid[:, block_lo:block_hi, :].values, dtype=bool)
        x = x_block[:, :, lo - block_lo:hi - block_lo]
        v = v_block[:, lo - block_lo:hi - block_lo]
        strip = np.empty((net.n_classes, n_rows, width), np.float32)
        shapes: dict[int, list[tuple[int, int, int]]] = {}  # window width -> (left, first column, columns)
        for left in range(0, width, cols):
            a, b = max(0, left - h), min(width, left + cols + h)
            shapes.setdefault(b - a, []).append((left, a, min(cols, width - left)))
        for span, group in shapes.items():
            for first in range(0, len(group), batch):
                part = group[first:first + batch]
                xs = np.stack([x[..., a:a + span] for _, a, _ in part])
                vs = np.stack([v[..., a:a + span] for _, a, _ in part])
                proba = next(predict_proba(net, [(xs, vs, np.zeros((len(part), 1, 1), np.int64))], device=device,
                                           tta=tta))
                for p, (left, a, n) in zip(proba, part, strict=True):
                    strip[:, :, left:left + n] = p[:, top - lo:top - lo + n_rows, left - a:left - a + n]
        yield top, strip


def model_scheme(meta: dict[str, Any]) -> LabelScheme:
    """The legend a saved model predicts (checkpoints without one: the NLCD classes)."""
    classes = tuple(int(c) for c in meta.get("classes", CLASSES))
    if "class_names" not in meta:
        return LabelScheme(classes, class_names(classes), colour_table(classes))
    return LabelScheme(classes, dict(zip(classes, meta["class_names"], strict=True)),
                       # cast: save_model writes the scheme's (r, g, b, a) colours, 4 numbers each
                       {c: cast(tuple[int, int, int, int], tuple(int(v) for v in rgba))
                        for c, rgba in zip(classes, meta["class_colours"], strict=True)})


# --- pictures -----------------------------------------------------------------------------------


def confusion_png(confusion: np.ndarray, path: str | Path, *, title: str = "",
                  classes: tuple[int, ...] = CLASSES, legend: str = "NLCD class",
                  names: dict[int, str] | None = None) -> Path:
    """Row-normalised confusion matrix (truth rows, predicted columns) of the classes present,
    ticked with code and name (``names``, default NLCD's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.quicklook import save_figure

    conf = np.asarray(confusion, dtype=np.float64)
    keep = (conf.sum(axis=1) > 0) | (conf.sum(axis=0) > 0)
    sub = conf[np.ix_(keep, keep)]
    norm = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1)
    names = names if names is not None else dict(NLCD_CLASSES)
    codes = [f"{c} {names.get(c, '')}".strip() for c, k in zip(classes, keep, strict=True) if k]
    side = 0.55 * len(codes) + 3.5
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(codes)), codes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(codes)), codes, fontsize=8)
    ax.set_xlabel(f"predicted {legend}")
    ax.set_ylabel(f"true {legend}")
    for i in range(len(codes)):
        for j in range(len(codes)):
            if sub[i, j]:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.7, label="share of the true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def class_rows(result: dict[str, Any], names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Per-class precision / recall / F1 / support rows of a :func:`scores` result (classes in
    the order of ``names``, default NLCD)."""
    names = names or {c: NLCD_CLASSES[c] for c in CLASSES}
    return [
        {"code": c, "class": name, "precision": round(result["precision"][k], 4),
         "recall": round(result["recall"][k], 4), "f1": round(result["f1"][k], 4),
         "support": int(result["support"][k])}
        for k, (c, name) in enumerate(names.items())
        if result["support"][k] or sum(row[k] for row in result["confusion"])
    ]


# --- the stage ----------------------------------------------------------------------------------


def classify_key(cube: str | Path, params: dict[str, Any], model: str | Path | None) -> tuple[str, dict[str, str]]:
    """The checkpoint key of classifying ``cube`` with ``params`` (and a saved ``model``)."""
    inputs = {"cube": fingerprint(cube)}
    if model is not None:
        inputs["model"] = fingerprint(model)
    if Path(str(params.get("label", ""))).is_file():  # a label raster: its content is an input
        inputs["labels"] = fingerprint(params["label"])
    return stage_key(STAGE, inputs=inputs, params=params, code=code_version(*CODE_MODULES)), inputs


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r}")


@keeps_torch_rng
def classify_cube(
    cube: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    label: str = "landcover",
    epochs: int = 15,
    patch: int = 32,
    block: int = 2,
    batch: int = 4,
    crop: int = 16,
    lr: float = 3e-3,
    width: int = 8,
    seed: int = 0,
    device: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Classify every pixel of a cube into the NLCD classes (or the label layer's own legend, see
    :func:`label_scheme`) with a 4D-CNN (trained or loaded).

    Parameters
    ----------
    cube
        A schema-following cube store (``tasks.cube``); for training it needs the ``label``
        layer (``(y, x)`` class codes).
    out
        Where ``classes.zarr`` goes; manifest, COG, model and (when training) patch store beside it.
    model
        A model file written by an earlier run (``<out>.cnn4d.pt``): apply it instead of training.
    label
        The cube's label layer (training and scoring).
    epochs, lr, crop, width
        Training passes, AdamW peak learning rate, training crop side, 4D-CNN width.
    patch, block
        Patch side (pixels) and split block side (patches) of the patch store.
    batch
        Patches per training step (inference reads at least 16 patches per batch).
    seed
        Seeds the split, the initial weights and the augmentation.
    device
        ``"cuda"``/``"cpu"``; default: a GPU when present. Not part of the key.
    workers
        DataLoader reader processes; default 4 on CUDA, 0 on CPU (the reads are cheap beside
        the CPU convolutions). Not part of the key.
    overwrite
        Replace an ``out`` made with another key. A finished ``out`` with this key is reused.

    Returns
    -------
    Manifest
        ``outputs``: paths (classes, COG, model, patches, confusion PNG), classes found;
        ``stats``: test scores (accuracy, macro-F1, per class, confusion), training history,
        seconds, device.
    """
    _check_positive(epochs=epochs, patch=patch, block=block, batch=batch, crop=crop, width=width)
    cube, out = Path(cube), Path(out)
    # a saved model reads the label layer only to score its map, when the cube has one
    reads_label = model is None or label in open_cube(cube).data_vars or Path(label).is_file()
    params: dict[str, Any] = {"label": label if reads_label else None, "patch": patch, "block": block, "seed": seed}
    if model is None:
        params.update({"epochs": epochs, "batch": batch, "crop": crop, "lr": lr, "width": width})
    else:
        params["model"] = Path(model).name  # the file's content is an input (classify_key)
    key, inputs = classify_key(cube, params, model)
    found = reuse_or_refuse(out, key, stage=STAGE, overwrite=overwrite,
                           inputs=[cube, *([model] if model is not None else [])])
    if found is not None and Path(found.outputs.get("cog", "")).exists():
        return found

    started = _time.perf_counter()
    dev = resolve_device(device)
    n_workers = (4 if dev.type == "cuda" else 0) if workers is None else workers
    ds = open_cube(cube)
    raster = None  # a label raster file instead of a layer: warped onto the cube's grid
    if label not in ds.data_vars and Path(label).is_file():
        codes_map, attrs, _ = raster_labels(ds, Path(label))
        raster = xr.DataArray(codes_map, dims=("y", "x"), name=Path(label).name, attrs=attrs)
    if model is None and label not in ds.data_vars and raster is None:  # before any work is written
        raise ValueError(
            f"{cube}: no label layer {label!r} to train with (variables: {sorted(map(str, ds.data_vars))}); "
            "give a (y, x) layer of class codes or a class raster file (--label NAME|FILE, label=), or a "
            "saved model to apply (--model M.pt, model=)"
        )
    if model is not None:  # a model that cannot read this cube is refused before any work is written
        net, meta = load_model(model, device=dev)
        scheme = model_scheme(meta)
        cube_bands = [str(b) for b in ds["band"].values]
        if net.n_times != ds.sizes["time"] or net.n_bands != len(cube_bands):
            raise ValueError(
                f"{model}: the model was trained on {net.n_times} dates x {net.n_bands} bands "
                f"({meta.get('bands')}); the cube {cube} has {ds.sizes['time']} x {len(cube_bands)} {cube_bands}. "
                "Train a model on this cube (leave out --model)"
            )
        trained_on = [str(b) for b in meta.get("bands") or []]
        if trained_on and trained_on != cube_bands:  # the same count of other (or reordered) bands
            raise ValueError(
                f"{model}: the model was trained on the bands {trained_on}, in that order; the cube {cube} "
                f"has {cube_bands}. Give it a cube with those bands in that order (e.g. ds.sel(band="
                f"{trained_on}), renaming bands that are the same measurement), or train a model on this cube "
                "(leave out --model)"
            )
        for problem in model_mismatch(net, meta, ds):
            log.warning("%s: the cube %s may not suit this model: %s. Its map may be wrong however confident "
                        "it looks; train a model on this cube (leave out --model)", model, cube, problem)
    else:
        scheme = label_scheme(raster if raster is not None else ds[label], source=str(cube))
    height, width_px = ds.sizes["y"], ds.sizes["x"]
    size = min(patch, height, width_px)
    patches = out.with_name(out.name + ".patches.zarr")
    label_var = label  # the patch store's variable of labels
    if model is None:  # training reads its batches from a patch store
        make_patches(cube, patches, size=size, block=block, seed=seed, batch=16, overwrite=True, progress=progress)
        pds = xr.open_zarr(patches, consolidated=None)
        split = np.array([str(s) for s in pds["split"].values])
        origins = np.stack([pds["row0"].values, pds["col0"].values], axis=1)
        if raster is not None:  # the raster's patches beside the cube's, under the name the loaders read
            label_var = "label_raster"
            cut = np.stack([raster.values[r:r + size, c:c + size] for r, c in origins])
            xr.Dataset({label_var: (("patch", "py", "px"), cut)}).to_zarr(patches, mode="a", zarr_format=3,
                                                                       consolidated=True)
            pds = xr.open_zarr(patches, consolidated=None)
        has_label = label_var in pds
        bands = [str(b) for b in pds["band"].values]
    else:  # applying reads the map straight from the cube: only the split is needed, to score it
        origins, split = patch_split(cube, size=size, block=block, seed=seed)
        split = split.astype(str)
        has_label = raster is not None or label in ds.data_vars
    torch.manual_seed(seed)

    def loader(where: str | None, *, shuffle: bool = False) -> tuple[PatchBatches, DataLoader]:
        idx = np.arange(len(split)) if where is None else np.flatnonzero(split == where)
        per = batch if shuffle else max(batch, 16)  # small steps to train, larger reads to infer
        pb = PatchBatches(patches, idx, batch=per, label=label_var if has_label else None, classes=scheme.classes)
        return pb, patch_loader(pb, shuffle=shuffle, workers=n_workers, device=dev, seed=seed)

    fit_stats: dict[str, Any] = {}
    if model is None:
        train_pb, train_dl = loader("train", shuffle=True)
        if not len(train_pb):
            raise ValueError(f"{cube}: the split left no training patch (block={block}, patch={size}); "
                             "use a smaller block")
        try:
            mean, std, counts = band_statistics(loader("train")[1])
        except ValueError as exc:  # name the band or mask that emptied the cube, when that is why
            if bool((ds["valid"] & ds["data"].notnull().all("band")).any()):
                raise
            raise ValueError(f"{cube}: no observed pixel, nothing to learn from: "
                             f"{unobserved_reason(ds['data'], ds['valid'])}") from exc
        if counts.sum() == 0:
            raise ValueError(f"{cube}: the {label!r} layer holds no class code of its legend "
                             f"({', '.join(map(str, scheme.classes))}) in the training patches")
        net = build_classifier("cnn4d", n_times=int(pds.sizes["time"]), n_bands=len(bands),
                               n_classes=len(scheme.classes), width=width, mean=mean.tolist(), std=std.tolist())
        val_pb, val_dl = loader("val")
        n_train = int((split == "train").sum())
        if n_train * pds["data"].dtype.itemsize * np.prod(pds["data"].shape[1:]) <= IN_MEMORY_BYTES:
            # in memory: the batches' members drawn anew every epoch (see shuffled_batches)
            tr = [np.concatenate(a) for a in zip(*loader("train")[1], strict=True)]
            order = np.random.default_rng(seed)

            def train_batches() -> Any:
                return shuffled_batches(tr[0], tr[1], tr[2], batch=batch, rng=order)
        else:
            def train_batches() -> Any:
                return train_dl  # runs of a store chunk, in random order

        fit = fit_classifier(net, train_batches, val=(lambda: val_dl) if len(val_pb) else None,
                             weights=class_weights(counts), epochs=epochs, lr=lr, crop=min(crop, size),
                             device=dev, seed=seed, progress=progress)
        net.only_predict(counts > 0)  # never a class of the legend with no training pixel
        wpath = save_model(net, weights_path(out), bands=bands, scheme=scheme,
                           dates=[str(d)[:10] for d in ds["time"].values])
        fit_stats = {"loss_history": [round(v, 5) for v in fit.history],
                     "val_macro_f1": [round(v, 4) for v in fit.val_f1], "best_epoch": fit.best_epoch,
                     "fit_seconds": round(fit.seconds, 3),
                     "train_pixels_per_class": {str(c): int(n) for c, n in zip(scheme.classes, counts, strict=True)}}
    else:
        wpath = Path(model)

    # every pixel, a strip of rows at a time, each window with its halo (map_strips): the map is
    # one forward pass over the whole cube. Test scores: the map over the test patches.
    # seen: (y, x) observed on at least one date (streamed over the cube's chunks, the map gap
    # filling leaves its never-observed pixels NaN by); pixels never observed get no class
    seen = observed_anywhere(ds)
    k = len(scheme.classes)
    lut = np.asarray(scheme.classes, dtype=np.uint8)
    fill = scheme.fill
    coords = {name: ds.coords[name].load() for name in ("y", "x", "spatial_ref") if name in ds.coords}
    gm = {"grid_mapping": "spatial_ref"} if "spatial_ref" in coords else {}
    chunks = (min(height, MAP_CHUNK), min(width_px, MAP_CHUNK))
    template = xr.Dataset(
        {
            "classes": (("y", "x"), dask_array.full((height, width_px), fill, dtype=np.uint8, chunks=chunks), {
                "long_name": "land cover class (4D-CNN)", "flag_values": list(scheme.classes),
                "flag_meanings": flag_meanings(scheme.names[c] for c in scheme.classes),
                "flag_colors": ["#{:02x}{:02x}{:02x}".format(*scheme.colours[c][:3]) for c in scheme.classes],
                "nodata": fill, **gm}),
            "confidence": (("y", "x"), dask_array.full((height, width_px), np.nan, dtype=np.float32, chunks=chunks),
                           {"long_name": "probability of the class (NaN: never observed)", "units": "1", **gm}),
        },
        coords=coords,
        attrs=product_attrs(STAGE, key, params, code=code_version(*CODE_MODULES), title=f"classes of {cube.name}",
                            classify_key=key, cube=str(cube.resolve()),
                            # the model beside this product by its name, one applied from elsewhere by its path
                            model=wpath.name if model is None else str(Path(wpath).resolve())),
    )
    codes = np.full((height, width_px), fill, dtype=np.uint8)  # for the COG: one byte a pixel
    class_pixels = np.zeros(k, dtype=np.int64)
    confusion = np.zeros((k, k), dtype=np.int64)
    test_area = np.zeros((height, width_px), dtype=bool)
    for r, c in origins[split == "test"]:
        test_area[r:r + size, c:c + size] = True
    to_index = None
    if has_label:
        layer = raster if raster is not None else ds[label]
        to_index = class_lookup(scheme.classes)  # codes -> class indices, -1 for no label
    with atomic_artifact(out, overwrite=True) as tmp:  # reuse or refusal decided above
        template.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, compute=False,
                         encoding={"classes": {"chunks": chunks}, "confidence": {"chunks": chunks}})
        group = zarr.open_group(str(tmp), mode="r+")
        t0 = _time.perf_counter()
        strips: Any = map_strips(net, ds["data"], ds["valid"], device=dev)
        if progress:
            from tqdm.auto import tqdm

            strips = tqdm(strips, total=-(-height // MAP_ROWS), desc="classify map", unit="strip")
        for top, proba in strips:
            rows = slice(top, top + proba.shape[1])
            best = proba.argmax(axis=0)
            mapped = seen[rows]  # never observed: the fill and NaN confidence, counted nowhere
            part = np.where(mapped, lut[best], np.uint8(fill))
            zarr_array(group, "classes")[rows] = part
            zarr_array(group, "confidence")[rows] = np.where(mapped, proba.max(axis=0), np.float32(np.nan))
            codes[rows] = part
            class_pixels += np.bincount(best[mapped], minlength=k)
            test_pixels = test_area[rows] & mapped
            if to_index is not None and test_pixels.any():
                lab = np.asarray(layer.isel(y=rows).values)
                lab = np.nan_to_num(lab, nan=255) if np.issubdtype(lab.dtype, np.floating) else lab
                idx = to_index[np.clip(lab.astype(np.int64), 0, 255)]
                confusion += confusion_matrix(idx[test_pixels], best[test_pixels], k)
        infer_seconds = _time.perf_counter() - t0
    result = scores_from_confusion(confusion) if has_label and confusion.sum() else None
    from tasks.quicklook import write_class_cog

    cog = write_class_cog(cog_path(out), codes, transform=cube_transform(ds), crs=cube_crs(ds),
                          colormap=scheme.colours, nodata=fill, names=scheme.names)
    png = None
    if result is not None:
        png = confusion_png(np.asarray(result["confusion"]), out.with_name(out.name + ".confusion.png"),
                            title=f"{cube.name}, test patches: accuracy {result['accuracy']:.3f}, "
                                  f"macro-F1 {result['macro_f1']:.3f}",
                            classes=scheme.classes, legend="NLCD class" if scheme.nlcd else "class",
                            names=scheme.names)
    found_classes = {str(c): int(n) for c, n in zip(scheme.classes, class_pixels, strict=True) if n}
    manifest = Manifest(
        stage=STAGE, key=key, params=params, inputs=inputs, code_version=code_version(*CODE_MODULES),
        outputs={"path": str(out), "cube": str(cube), "cog": str(cog), "model": str(wpath),
                 "patches": str(patches) if model is None else None,
                 "confusion_png": str(png) if png else None,
                 "classes_found": found_classes, "mapped_pixels": int(seen.sum()), "trained": model is None},
        stats={
            "test": None if result is None else {
                "accuracy": round(result["accuracy"], 4), "macro_f1": round(result["macro_f1"], 4),
                "pixels": result["pixels"], "per_class": class_rows(result, scheme.names),
                "confusion": result["confusion"]},
            **fit_stats,
            "inference_seconds": round(infer_seconds, 3),
            "patches_per_s": round(len(split) / max(infer_seconds, 1e-9), 2),
            "pixels_per_s": round(height * width_px / max(infer_seconds, 1e-9), 1),
            "seconds": round(_time.perf_counter() - started, 3),
            "device": str(dev),
        },
    )
    write_manifest(out, manifest)
    log.info("classify: wrote %s (%s)", out, "" if result is None else
             f"test accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    return manifest


# --- CLI ----------------------------------------------------------------------------------------


def _cmd_classify(args: argparse.Namespace) -> int:
    import sys

    from tasks.info import describe

    manifest = classify_cube(args.cube, args.out, model=args.model, label=args.label, epochs=args.epochs,
                             patch=args.patch, seed=args.seed, device=args.device, overwrite=args.overwrite,
                             progress=True)
    test = manifest.stats.get("test") or {}
    sys.stdout.write("\n".join([*describe(args.out), f"  map: {manifest.outputs['cog']}; model: {manifest.outputs['model']}"]) + "\n")
    if test:
        sys.stdout.write(f"test patches: accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} "
                         f"({test['pixels']} pixels); confusion matrix: {manifest.outputs.get('confusion_png')}\n")
    sys.stdout.write(f"quick-look: {map_quicklook(args.out)}\n")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``stage classify --cube IN.zarr --out OUT.zarr [--model M.pt] [--device cpu|cuda]``."""
    p = subparsers.add_parser(
        "classify", help="per-pixel land-cover classes with a 4D-CNN (trained on the cube's label layer: "
                         "NLCD or the layer's own legend)")
    p.add_argument("--cube", required=True, help="a schema-following cube (.zarr)")
    p.add_argument("--out", required=True, help="classes.zarr to write (COG and model beside it)")
    p.add_argument("--model", default=None, help="a saved model (.pt) to apply instead of training")
    p.add_argument("--device", default=None, metavar="DEV", help=DEVICE_HELP)
    p.add_argument("--label", default="landcover",
                   help="the cube's label layer (default landcover), or a class raster file in any CRS "
                        "(warped onto the cube's grid by majority)")
    p.add_argument("--epochs", type=int, default=15, help="training passes (default 15)")
    p.add_argument("--patch", type=int, default=32,
                   help="training patch side in pixels (default 32; smaller on a small cube gives it validation "
                        "and test blocks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_classify)
    return p


# --- Prefect task -------------------------------------------------------------------------------


@task(name="classify", retries=1, retry_delay_seconds=10, cache_policy=NONE)
@reports_warnings
def classify_task(
    cube: str,
    out: str,
    *,
    model: str | None = None,
    label: str = "landcover",
    epochs: int = 15,
    patch: int = 32,
    block: int = 2,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prefect task: ``classify_cube`` on paths, plus artifacts: the per-class precision / recall /
    F1 table, the confusion-matrix image and a markdown summary.

    No Prefect result caching: the manifest beside ``out`` is the cache.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.quicklook import made_in_task_run, product_key, publish_image

    logger = get_run_logger()
    manifest = classify_cube(cube, out, model=model, label=label, epochs=epochs, patch=patch, block=block,
                             seed=seed, device=device, overwrite=overwrite)
    test = manifest.stats.get("test")
    if test:
        create_table_artifact(table=test["per_class"], key=product_key("classify-classes", cube, out),
                              description=f"per-class precision / recall / F1 on the test patches of {cube}")
        png = manifest.outputs.get("confusion_png")
        if png and Path(png).exists():
            publish_image(png, key=product_key("classify-confusion", cube, out),
                          description="confusion matrix (rows: truth, normalised)",
                          fresh=made_in_task_run(manifest))
    create_markdown_artifact(
        key=product_key("classify", cube, out),
        markdown=(f"### Land-cover classes of `{cube}`\n\n4D-CNN, device `{manifest.stats['device']}`; "
                  f"map `{manifest.outputs['cog']}`\n\n"
                  + (f"test accuracy **{test['accuracy']:.3f}**, macro-F1 **{test['macro_f1']:.3f}** "
                     f"({test['pixels']} pixels)\n" if test else "no label layer: not scored\n")),
        description="classification summary",
    )
    png = map_quicklook(out)
    publish_image(png, key=product_key("classify-map", cube, out), description=f"classes and confidence, {out}",
                  fresh=made_in_task_run(manifest))
    logger.info("classify %s: key %s%s", out, manifest.key,
                f", test macro-F1 {test['macro_f1']:.3f}" if test else "")
    return {"artifact": str(out), **asdict(manifest), "quicklook": str(png)}


def map_quicklook(out: str | Path) -> Path:
    """``OUT.zarr.quicklook.png``: the class map beside its confidence, drawn again only when the
    product is newer than it."""
    from tasks.labels import quicklook_png
    from tasks.quicklook import is_current, quicklook_path

    png = quicklook_path(out)
    return png if is_current(png, out) else quicklook_png(out, png, var="classes")
