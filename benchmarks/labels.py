"""Label-recovery benchmark: UNet + LRTD layer against CE-only, a random forest and nearest upsampling.

One run on the built-in sample area (Planet-like cube built by the real ingest, 3 m, with its
static ``landcover`` layer = the 30 m NLCD-like product nearest-resampled to the grid):

- the cube is cut into ``size x size`` patches; patches are split into train and test by spatial
  blocks of ``block x block`` patches (``fusion_models.patching.block_split``, fractions 0.75 /
  0 / 0.25, no pixel shared): everything is scored on the held-out test blocks only, against the
  sample area's full-resolution (3 m) land-cover truth (``truth/planet_truth.zarr``);
- label settings on the train blocks: 1 % and 5 % of the pixels as sparse point labels (uniform
  random, true 3 m class), and coarse labels (the cube's 30 m ``landcover`` layer as the only
  supervision, every train pixel);
- validation: ``val_blocks`` of the train blocks (drawn with the seed) are held out for the one
  choice made from data (the coarse-label fusion below); the test blocks are never used to choose;
- methods: UNet + LRTD (``lambda > 0``), the same UNet with ``lambda = 0`` (cross-entropy only),
  a per-pixel random forest (scikit-learn) on the same labelled pixels and the same per-pixel
  inputs (standardised values, 0 where not observed, plus the valid flags of every date), nearest
  upsampling of the coarse labels (the layer itself), and the same UNet + LRTD trained on every
  train pixel's true class (``full``, for ``acc_ratio_1pct_vs_full``).

Sparse labels: the two UNets are trained with each model seed of ``seeds`` (0-3 by default;
same labels, same split) and the summary gives the mean mIoU (``miou_lrtd_1pct``,
``miou_ce_only_1pct``) with the per-seed values and the paired per-seed differences
(``miou_gain_1pct_per_seed``) beside it; single runs differ by about 0.01-0.03. Both UNets (and
the ``full`` one) get the same training: batches drawn anew every epoch from a fresh permutation
of the in-memory training patches (no chunk-run batching here), a flip / quarter turn drawn per
patch (``per_patch_augment``), and model selection (``select``): they are fitted on the train
blocks minus the ``val_blocks`` validation blocks, and the weights of the epoch with the best
validation mIoU (against the setting's own labels on those blocks: the 1 % points there, not
the dense 3 m truth; from epoch ``select_from * epochs`` on) are kept. The only difference between
the two is lambda.

Coarse labels (``miou_lrtd_coarse``): the UNet trained on the 30 m labels alone cannot beat them
(even trained on every true 3 m label it scores below nearest upsampling on the rare classes,
and the product's classes come partly from context the spectra lack), and nearest upsampling is
wrong mainly in the mixed 30 m cells at class edges. So the coarse map is used as what it is, a
per-pixel prior available everywhere (nearest upsampling uses it on the test blocks too): the
UNet + LRTD probabilities ``S`` are fused with the local class shares ``q`` of the coarse map in a
``w x w`` box (``p_k ~ S_k^a q_k``, ``fusion_models.unet_lrtd_training.fuse_prior``), so a pixel keeps a
class of its coarse neighbourhood and the network decides where the edge of a coarse cell lies.
``(w, a)`` is calibrated on ANOTHER sample area (seed ``fusion_area_seed``), whose 3 m truth
stands for a calibration site: a UNet + LRTD trained on its coarse labels (its train blocks minus
its validation blocks) is fused with every ``w in fusion_windows`` (1 = the coarse map itself,
i.e. nearest) and ``a in fusion_powers`` and scored on its validation blocks. On the benchmark's
area the 30 m layer stays the only supervision, as the setting requires; the final model is
trained on all its train blocks. The unfused UNet +
LRTD (``miou_lrtd_coarse_unfused``) and the CE-only UNet, unfused and fused with the same
``(w, a)``, are reported beside it.

Metrics on the test pixels: overall accuracy, macro-F1 and mIoU, both macro means over the classes
present in the test truth (a class present but never predicted scores 0; a predicted class absent
from the truth only lowers the others' precision/IoU).

Choices made on the validation blocks for this revision (1 % labels; fit on the 12 train blocks
minus the 2 validation blocks, scored on these; model seeds 0 / 1; one flip per
batch, no selection; each fit 20 epochs): val mIoU CE only 0.2583 / 0.2630 (mean 0.2607);
LRTD lambda 10, ranks (15, 8, 8): 0.2626 / 0.2577 (0.2602); ranks (15, 16, 16): 0.2646 / 0.2588
(0.2617) -> spatial rank share 0.5 kept. The low-rank term over the whole unlabelled scene
(``pool``: the validation and test patches join the batches without labels, transductive as the
stage): CE only 0.2529 / 0.2639, LRTD lambda 10 (ranks 8) 0.2385, lambda 50 0.2165 (seed 0): the
term on unlabelled pixels raises OA (0.699 -> 0.722) but removes small classes, so mIoU falls ->
off. Predicting with the blend ``(1 - b) S + b Shat`` (``blend``): b = 0.5 / 1 lowered val mIoU
by 0.000-0.004 in every run -> 0.
Test blocks, default run with these choices (model seeds 0-3): LRTD 0.2674 (0.280 / 0.257 / 0.249 /
0.284) vs CE only 0.2828 (0.290 / 0.275 / 0.278 / 0.289), paired differences -0.010 / -0.018 /
-0.029 / -0.005; OA 0.781 vs 0.791; 5 % labels: LRTD 0.320 vs CE only 0.315 (seed 0). With this
protocol the low-rank term does not raise mIoU at 1 % labels: it smooths the class maps, which
erodes the small developed and grassland areas (classes 22, 71) the mIoU counts as much as the
large ones. The target ``miou_lrtd_1pct >= miou_ce_only_1pct + 0.02`` is missed. With this
revision's protocol (epochs selected on the validation blocks' 1 % points, not their dense truth;
the coarse fusion calibrated on the seed-1 area): LRTD 0.2747 (0.280 / 0.250 / 0.280 / 0.289) vs
CE only 0.2811, random forest 0.240; coarse fused 0.378 (window 3, power 1) vs nearest 0.365,
unfused 0.285; the all-labels UNet OA 0.821, mIoU 0.323.

Earlier settings of the UNets (chosen with a small sweep on this same split, 1 % labels, seed 0, so they
are not tuned on independent data): stacked dates as channels, width 16, depth 2, 32 px patches,
20 epochs, Adam with a one-cycle schedule peaking at 1e-2, batch 8, flips/turns; LRTD ``hooi``
variant, ranks ``(K, 8, 8)`` (full class rank, a quarter of the patch side in space; now ``(K, 16, 16)``,
see above), lambda 10.
Sweep (mIoU, 1 %): CE only 0.287; class rank 4 with lambda 1 / 10 / 50: 0.289 / 0.281 / 0.275
(a lower class rank suppresses a patch's small classes: OA rises, mIoU falls); full class rank
with lambda 10 / 30 / 100: 0.289 / 0.275 / 0.295, spatial rank 16: 0.291; trainable factors
(class rank 4), lambda 10: 0.258; predicting with Shat instead of S: lower or equal in every
LRTD run; inverse-square-root class weights in the CE: 0.209 (LRTD) / 0.246 (CE only), i.e. worse.
Over three model seeds (0, 1, 2; same 1 % labels) LRTD vs CE only: mIoU 0.288 / 0.287,
0.286 / 0.288, 0.309 / 0.286 (mean +0.008, spread about 0.01) and OA +0.013, +0.007, +0.013: the
low-rank term raises OA every time, mIoU on average by less than the issue's 0.02. Lambda checked
on the validation blocks (1 % labels, seed 0, UNets trained on the train blocks minus the
validation blocks): val mIoU for lambda 0 / 10 / 100: 0.261 / 0.269 / 0.251, so 10 is kept;
with lambda ramped up linearly over the first half of the epochs (``lam_warmup`` 0.5): 0.277
(lambda 10) / 0.259 (lambda 100). Seed 1: CE only 0.267, lambda 10 0.272, with warm-up 0.270.
Mean of the two seeds: CE only 0.264, lambda 10 0.271, with warm-up 0.273 -> warm-up 0.5 kept
(a small, within-noise preference). Test blocks, default run, mean of seeds 0-2: LRTD 0.2885
(0.284 / 0.265 / 0.316) vs CE only 0.2870; the same run without warm-up gave 0.2945 (0.288 /
0.286 / 0.309): either way below the issue's +0.02, the spread over seeds is larger than the gap.
Coarse fusion grid on validation (default run): window 1 (nearest) 0.4235; window 3: 0.430 /
0.428 (a = 0.5 / 1); window 5: 0.431 / 0.426; window 11: 0.415 / 0.387 -> window 5, a = 0.5.

    fusioncube bench labels --out labels.json [--size quick]
    python -m benchmarks.labels --out labels.json [--quick]
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._cli import bench_parser, report, torch_machine, write_result

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)

QUICK: dict[str, Any] = {
    "area": "demo", "seed": 0, "crop": 192, "size": 32, "block": 2, "epochs": 12, "width": 16,
    "depth": 2, "lr": 1e-2, "batch": 8, "lam": 10.0, "variant": "hooi", "rank_k": 15,
    "rank_share": 0.25, "rf_trees": 60, "settings": ("1pct", "coarse"), "ce_coarse": False,
    "threads": 1, "full": True, "class_power": 0.0, "seeds": (0,), "val_blocks": 1, "lam_warmup": 0.5,
    "pool": False, "select": True, "select_from": 0.5, "per_patch_augment": True, "blend": 0.0,
    "fusion_windows": (1, 3, 5, 11), "fusion_powers": (0.5, 1.0), "fusion_area_seed": 1,
}
DEFAULT: dict[str, Any] = {
    "area": "demo", "seed": 0, "crop": None, "size": 32, "block": 4, "epochs": 20, "width": 16,
    "depth": 2, "lr": 1e-2, "batch": 8, "lam": 10.0, "variant": "hooi", "rank_k": 15,
    "rank_share": 0.5, "rf_trees": 200, "settings": ("1pct", "5pct", "coarse"), "ce_coarse": True,
    "threads": 2, "full": True, "class_power": 0.0, "seeds": (0, 1, 2, 3), "val_blocks": 2, "lam_warmup": 0.5,
    "pool": False, "select": True, "select_from": 0.5, "per_patch_augment": True, "blend": 0.0,
    "fusion_windows": (1, 3, 5, 11), "fusion_powers": (0.5, 1.0), "fusion_area_seed": 1,
}


# --- metrics ------------------------------------------------------------------------------------


def scores(pred: np.ndarray, truth: np.ndarray, classes: tuple[int, ...]) -> dict[str, Any]:
    """Overall accuracy, macro-F1 and mIoU over the classes present in ``truth``; per-class IoU.

    ``pred`` and ``truth`` are class codes of the scored pixels (1-D).
    """
    pred = np.asarray(pred).ravel()
    truth = np.asarray(truth).ravel()
    present = [c for c in classes if (truth == c).any()]
    f1, iou = {}, {}
    for c in present:
        tp = float(((pred == c) & (truth == c)).sum())
        fp = float(((pred == c) & (truth != c)).sum())
        fn = float(((pred != c) & (truth == c)).sum())
        f1[c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        iou[c] = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "oa": float((pred == truth).mean()),
        "macro_f1": float(np.mean(list(f1.values()))),
        "miou": float(np.mean(list(iou.values()))),
        "iou": {str(c): round(v, 4) for c, v in iou.items()},
    }


# --- data ---------------------------------------------------------------------------------------


def build_data(root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Sample area -> ingested Planet cube -> standardised patches, split, truth and coarse labels."""
    import xarray as xr

    from fusion_models.patching import block_split, extract_patches, patch_origins
    from tasks.catalog import load_catalog
    from tasks.cube import open_cube
    from tasks.ingest import ingest_cube
    from tasks.labels import model_inputs
    from tasks.sample_area import generate_sample_area

    area = generate_sample_area(root / "sample", size=cfg["area"], seed=cfg["seed"])
    catalog = load_catalog(REPO / "data_catalog.yaml",
                           env={"FUSIONCUBE_SAMPLE": str(root / "sample"), "FUSIONCUBE_DATA": str(root / "data")})
    ingest_cube(catalog, "planet", workers=2)
    ds = open_cube(catalog.cube_path("planet"))
    truth_ds = xr.open_zarr(area.truth_dir / "planet_truth.zarr", consolidated=None)
    if not (np.allclose(ds["x"].values, truth_ds["x"].values) and np.allclose(ds["y"].values, truth_ds["y"].values)):
        raise RuntimeError("the cube's grid differs from the truth's; the benchmark needs them aligned")
    crop = cfg["crop"] or ds.sizes["y"]
    sub = ds.isel(y=slice(0, crop), x=slice(0, crop)).load()
    data = sub["data"].values.astype(np.float32)
    x, observed = model_inputs(data, sub["valid"].values.astype(bool))
    truth = truth_ds["landcover"].values[:crop, :crop].astype(np.uint8)
    coarse = sub["landcover"].values.astype(np.uint8)
    size = cfg["size"]
    origins = patch_origins(crop, crop, size=size, stride=size)
    split = block_split(origins, size=size, block=cfg["block"], fractions=(0.75, 0.0, 0.25), seed=cfg["seed"])
    return {
        "origins": origins,
        "coarse_image": coarse,
        "x": extract_patches(x, origins, size),  # (P, T, C, s, s)
        "valid": extract_patches(observed, origins, size),  # (P, T, s, s)
        "truth": extract_patches(truth, origins, size),  # (P, s, s)
        "coarse": extract_patches(coarse, origins, size),
        "split": split,
        "shape": list(data.shape),
        "valid_share": float(observed.mean()),
    }


def sparse_labels(truth: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Codes at a uniform random ``share`` of the pixels, ``NO_CLASS`` elsewhere."""
    from tasks.labels import NO_CLASS

    rng = np.random.default_rng([seed, round(share * 1e4)])
    pick = rng.random(truth.shape) < share
    return np.where(pick, truth, NO_CLASS).astype(np.uint8)


def pixel_features(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Patches ``(P, T, C, s, s)`` -> per-pixel features ``(P*s*s, T*(C+1))``, as the UNet sees them."""
    import torch

    from fusion_models.unet_lrtd import stack_time

    stacked = stack_time(torch.as_tensor(x), torch.as_tensor(valid)).numpy()  # (P, F, s, s)
    return np.moveaxis(stacked, 1, -1).reshape(-1, stacked.shape[1])


# --- methods ------------------------------------------------------------------------------------


def run_unet(data: dict[str, Any], labels: np.ndarray, cfg: dict[str, Any], *, lam: float,
             classes: tuple[int, ...], seed: int | None = None, fit_on: np.ndarray | None = None,
             predict_on: np.ndarray | None = None, select: bool = False) -> tuple[np.ndarray, float]:
    """Train on the ``fit_on`` patches (default: train) with ``labels`` (codes, NO_CLASS =
    unlabelled); return the class probabilities ``(P, K, s, s)`` of the ``predict_on`` patches
    (default: test) and the seconds taken."""
    import math

    from fusion_models.unet_lrtd_training import class_weights, fit_unet_lrtd, predict_proba
    from tasks.labels import codes_to_index

    train = data["split"] == "train" if fit_on is None else fit_on
    test = data["split"] == "test" if predict_on is None else predict_on
    val = None
    if select:  # fit on the train blocks minus the validation blocks, keep the best epoch on those
        held = validation_patches(data, cfg) & train
        train = train & ~held
        # scored on the setting's own labels there (1 % points, not the dense 3 m truth)
        val = (data["x"][held], data["valid"][held], codes_to_index(labels[held], classes))
    # the rest of the scene (every patch not fitted with labels: held-out and test blocks) joins
    # the batches without labels, so the low-rank term acts on it (transductive, as the stage)
    unlabelled = (data["x"][~train], data["valid"][~train]) if cfg.get("pool") and (~train).any() else None
    size = cfg["size"]
    k = len(classes)
    ranks = (min(cfg["rank_k"], k), math.ceil(cfg["rank_share"] * size), math.ceil(cfg["rank_share"] * size))
    idx = codes_to_index(labels[train], classes)
    weight = class_weights(idx, k, power=cfg["class_power"]) if cfg["class_power"] > 0 else None
    t0 = time.perf_counter()
    fit = fit_unet_lrtd(data["x"][train], data["valid"][train], idx, classes=k, lam=lam, class_weight=weight,
                        variant=cfg["variant"], ranks=ranks, epochs=cfg["epochs"], batch=cfg["batch"],
                        lr=cfg["lr"], width=cfg["width"], depth=cfg["depth"],
                        lam_warmup=cfg["lam_warmup"], seed=cfg["seed"] if seed is None else seed,
                        unlabelled=unlabelled, val=val, select_from=cfg["select_from"],
                        per_patch_augment=cfg["per_patch_augment"], device="cpu")
    prob = predict_proba(fit.net, data["x"][test], data["valid"][test], blend=cfg["blend"] if lam > 0 else 0.0)
    return prob, time.perf_counter() - t0


def to_codes(prob: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Probabilities ``(P, K, s, s)`` -> class codes ``(P, s, s)`` (argmax)."""
    return np.asarray(classes, dtype=np.uint8)[prob.argmax(1)]


def validation_patches(data: dict[str, Any], cfg: dict[str, Any]) -> np.ndarray:
    """A validation subset of the train patches: whole spatial blocks (``cfg['val_blocks']`` of
    them, drawn with the seed), so that choices made on it are made on held-out ground like the
    test blocks, never on the test blocks themselves."""
    span = cfg["block"] * cfg["size"]
    origins = data["origins"]
    cols = int(origins[:, 1].max()) // span + 1
    block_id = (origins[:, 0] // span) * cols + origins[:, 1] // span
    train = data["split"] == "train"
    blocks = np.unique(block_id[train])
    n = min(int(cfg["val_blocks"]), len(blocks) - 1)
    if n < 1:
        raise ValueError(f"need at least 2 train blocks to hold out validation blocks; got {len(blocks)}")
    pick = np.random.default_rng([cfg["seed"], 7]).choice(blocks, n, replace=False)
    return train & np.isin(block_id, pick)


def coarse_prior_patches(data: dict[str, Any], mask: np.ndarray, classes: tuple[int, ...],
                         window: int) -> np.ndarray:
    """The local coarse-label prior (:func:`fusion_models.unet_lrtd_training.local_class_share`) computed on
    the whole image, cut into the ``mask`` patches ``(P, K, s, s)``."""
    from fusion_models.patching import extract_patches
    from fusion_models.unet_lrtd_training import local_class_share
    from tasks.labels import codes_to_index

    share = local_class_share(codes_to_index(data["coarse_image"], classes), len(classes), window=window)
    return extract_patches(share, data["origins"][mask], cfg_size(data))


def cfg_size(data: dict[str, Any]) -> int:
    """Patch side of the data's patches."""
    return int(data["truth"].shape[-1])


def choose_fusion(data: dict[str, Any], cfg: dict[str, Any], classes: tuple[int, ...]) -> dict[str, Any]:
    """Pick the coarse-prior fusion (window, power) on validation blocks.

    A UNet + LRTD is trained on the coarse labels of the train blocks minus the validation blocks;
    every (window, power) of ``cfg['fusion_grid']`` is scored (mIoU against the 3 m truth) on the
    validation blocks, window 1 meaning the coarse map itself (so fusion is chosen only where it
    beats nearest upsampling on validation)."""
    from fusion_models.unet_lrtd_training import fuse_prior

    val = validation_patches(data, cfg)
    fit_on = (data["split"] == "train") & ~val
    prob, sec = run_unet(data, data["coarse"], cfg, lam=cfg["lam"], classes=classes, fit_on=fit_on, predict_on=val)
    grid = []
    for window in cfg["fusion_windows"]:
        prior = coarse_prior_patches(data, val, classes, window)
        for power in cfg["fusion_powers"]:
            pred = to_codes(fuse_prior(prob, prior, power=power), classes)
            grid.append({"window": window, "power": power,
                         "val_miou": round(scores(pred, data["truth"][val], classes)["miou"], 4)})
    best = max(grid, key=lambda g: g["val_miou"])
    log.info("coarse fusion chosen on %d validation patches: window %d, power %g (val mIoU %.4f)",
             int(val.sum()), best["window"], best["power"], best["val_miou"])
    return {"window": best["window"], "power": best["power"], "grid": grid, "val_patches": int(val.sum()),
            "seconds": round(sec, 2)}


def run_rf(data: dict[str, Any], labels: np.ndarray, cfg: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Per-pixel random forest on the labelled train pixels; predict test codes."""
    from sklearn.ensemble import RandomForestClassifier

    from tasks.labels import NO_CLASS

    train = data["split"] == "train"
    test = data["split"] == "test"
    t0 = time.perf_counter()
    feats = pixel_features(data["x"][train], data["valid"][train])
    y = labels[train].ravel()
    keep = y != NO_CLASS
    rf = RandomForestClassifier(n_estimators=cfg["rf_trees"], n_jobs=2, random_state=cfg["seed"],
                                min_samples_leaf=1)
    rf.fit(feats[keep], y[keep])
    pred = rf.predict(pixel_features(data["x"][test], data["valid"][test]))
    return pred.reshape(data["truth"][test].shape).astype(np.uint8), time.perf_counter() - t0


# --- report -------------------------------------------------------------------------------------


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Label-recovery benchmark", "", f"Data: {json.dumps(result['data'])}", "",
             "| setting | method | OA | macro-F1 | mIoU | seconds |", "|---|---|---|---|---|---|"]
    for setting, methods in result["settings"].items():
        for name, r in methods.items():
            lines.append(f"| {setting} | {name} | {r['oa']:.4f} | {r['macro_f1']:.4f} | "
                         f"{r['miou']:.4f} | {r['seconds']:.1f} |")
    lines += ["", "Summary: " + json.dumps(result["summary"]), "",
              "Targets: " + json.dumps(result["targets"]), ""]
    return "\n".join(lines)


def run(out: Path, *, quick: bool = False, sample: Path | None = None,
        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``out`` (JSON) and ``out.with_suffix('.md')``.

    ``sample``: keep the generated sample area and cube there and reuse them (default: a temporary
    folder). ``overrides``: replace configuration entries (for experiments).
    """
    import torch

    from tasks.labels import CODES

    cfg = {**(QUICK if quick else DEFAULT), **(overrides or {})}
    torch.set_num_threads(cfg["threads"])
    started = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fusioncube-bench-labels-"))
    root = Path(sample) if sample else work
    # the coarse setting's fusion is calibrated on another area, with that area's 3 m truth: on
    # this one the 30 m layer stays the only supervision
    cal = {**cfg, "seed": cfg["fusion_area_seed"]}
    try:
        data = build_data(root / f"{cfg['area']}-s{cfg['seed']}", cfg)
        calibration = build_data(root / f"{cfg['area']}-s{cal['seed']}", cal) if "coarse" in cfg["settings"] else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data_seconds = time.perf_counter() - started
    test = data["split"] == "test"
    truth_test = data["truth"][test]
    classes = CODES
    settings: dict[str, dict[str, dict[str, Any]]] = {}

    def record(setting: str, method: str, pred: np.ndarray, seconds: float, **extra: Any) -> None:
        r = {**scores(pred, truth_test, classes), "seconds": round(seconds, 2), **extra}
        settings.setdefault(setting, {})[method] = r
        log.info("%s %s: OA %.4f, macro-F1 %.4f, mIoU %.4f (%.1f s)", setting, method, r["oa"],
                 r["macro_f1"], r["miou"], seconds)

    from fusion_models.unet_lrtd_training import fuse_prior

    fusion: dict[str, Any] = {}
    seeds = [int(v) for v in cfg["seeds"]]
    full_seed = cfg["seed"] if cfg["seed"] in seeds else seeds[0]  # the all-labels UNet's model seed
    for setting in cfg["settings"]:
        if setting == "coarse":
            labels = data["coarse"]
            record("coarse", "nearest", data["coarse"][test], 0.0)
        else:
            share = {"1pct": 0.01, "5pct": 0.05}[setting]
            labels = sparse_labels(data["truth"], share, cfg["seed"])
        n_lab = int((labels[data["split"] == "train"] != 255).sum())
        if setting == "coarse":
            assert calibration is not None
            fusion = {**choose_fusion(calibration, cal, classes), "area_seed": cal["seed"]}
            prior = coarse_prior_patches(data, test, classes, fusion["window"])
            prob, sec = run_unet(data, labels, cfg, lam=cfg["lam"], classes=classes)
            record(setting, "unet_lrtd_fused", to_codes(fuse_prior(prob, prior, power=fusion["power"]), classes),
                   sec + fusion["seconds"], labelled_pixels=n_lab)
            record(setting, "unet_lrtd", to_codes(prob, classes), sec, labelled_pixels=n_lab)
            if cfg["ce_coarse"]:
                prob, sec = run_unet(data, labels, cfg, lam=0.0, classes=classes)
                record(setting, "unet_ce_only", to_codes(prob, classes), sec, labelled_pixels=n_lab)
                record(setting, "unet_ce_only_fused",
                       to_codes(fuse_prior(prob, prior, power=fusion["power"]), classes), sec, labelled_pixels=n_lab)
            continue
        # sparse labels: the UNets over the model seeds (same labels); the mean is the headline
        for method, lam in (("unet_lrtd", cfg["lam"]), ("unet_ce_only", 0.0)):
            runs = []
            for seed in (seeds if setting == "1pct" else seeds[:1]):
                prob, sec = run_unet(data, labels, cfg, lam=lam, classes=classes, seed=seed, select=cfg["select"])
                runs.append({**scores(to_codes(prob, classes), truth_test, classes), "seconds": round(sec, 2),
                             "seed": seed})
                log.info("%s %s seed %d: OA %.4f, mIoU %.4f", setting, method, seed, runs[-1]["oa"],
                         runs[-1]["miou"])
            settings.setdefault(setting, {})[method] = {
                "oa": float(np.mean([r["oa"] for r in runs])),
                "macro_f1": float(np.mean([r["macro_f1"] for r in runs])),
                "miou": float(np.mean([r["miou"] for r in runs])),
                "seconds": round(sum(r["seconds"] for r in runs), 2),
                "labelled_pixels": n_lab,
                "per_seed": runs,
            }
        pred, sec = run_rf(data, labels, cfg)
        record(setting, "random_forest", pred, sec, labelled_pixels=n_lab)
    if cfg["full"]:
        prob, sec = run_unet(data, data["truth"], cfg, lam=cfg["lam"], classes=classes,
                             seed=full_seed, select=cfg["select"])
        record("full", "unet_lrtd", to_codes(prob, classes), sec,
               labelled_pixels=int(data["truth"][data["split"] == "train"].size))
    if not {"1pct", "coarse", "full"} <= set(settings):  # an experiment with a subset of settings
        result = {"settings": settings, "config": cfg, "seconds": round(time.perf_counter() - started, 1),
                  "summary": {}, "targets": {}}
        write_result(out, result, indent=2, default=str)
        return result
    s1, sc = settings["1pct"], settings["coarse"]
    summary = {
        "miou_lrtd_1pct": s1["unet_lrtd"]["miou"],
        "miou_ce_only_1pct": s1["unet_ce_only"]["miou"],
        "miou_rf_1pct": s1["random_forest"]["miou"],
        "miou_lrtd_coarse": sc["unet_lrtd_fused"]["miou"],
        "miou_nearest_coarse": sc["nearest"]["miou"],
        # the same model seed over and under the line (``full`` is trained once, with the config's)
        "acc_ratio_1pct_vs_full": next(r["oa"] for r in s1["unet_lrtd"]["per_seed"] if r["seed"] == full_seed)
        / settings["full"]["unet_lrtd"]["oa"],
        "miou_lrtd_1pct_per_seed": [r["miou"] for r in s1["unet_lrtd"]["per_seed"]],
        "miou_ce_only_1pct_per_seed": [r["miou"] for r in s1["unet_ce_only"]["per_seed"]],
        "miou_gain_1pct_per_seed": [round(a["miou"] - b["miou"], 4) for a, b in
                                    zip(s1["unet_lrtd"]["per_seed"], s1["unet_ce_only"]["per_seed"], strict=True)],
        "miou_lrtd_coarse_unfused": sc["unet_lrtd"]["miou"],
    }
    targets = {
        "miou_lrtd_1pct >= miou_ce_only_1pct + 0.02": summary["miou_lrtd_1pct"] >= summary["miou_ce_only_1pct"] + 0.02,
        "miou_lrtd_1pct > miou_rf_1pct": summary["miou_lrtd_1pct"] > summary["miou_rf_1pct"],
        "miou_lrtd_coarse > miou_nearest_coarse": summary["miou_lrtd_coarse"] > summary["miou_nearest_coarse"],
        "acc_ratio_1pct_vs_full >= 0.9": summary["acc_ratio_1pct_vs_full"] >= 0.9,
    }
    present = sorted(int(c) for c in np.unique(truth_test))
    result = {
        "summary": summary,
        "targets": targets,
        "settings": settings,
        "data": {
            "sample_area": f"size {cfg['area']}, seed {cfg['seed']}, Planet-like cube "
                           f"{data['shape']} (time, band, y, x), {data['valid_share']:.0%} observed",
            "patches": f"{int((data['split'] == 'train').sum())} train / {int(test.sum())} test "
                       f"patches of {cfg['size']} px, spatial blocks of {cfg['block']} x {cfg['block']} patches",
            "test_pixels": int(truth_test.size),
            "classes_in_test_truth": present,
            "miou": "mean IoU over the classes present in the test truth",
        },
        "coarse_fusion": fusion,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "data_seconds": round(data_seconds, 1),
        "machine": torch_machine(),
    }
    write_result(out, result, indent=2, default=float)
    out.with_suffix(".md").write_text(_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a configuration entry, e.g. --set lam=2.0")
    args = parser.parse_args(argv)
    return report(run, args, overrides={k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)})


if __name__ == "__main__":
    raise SystemExit(main())
