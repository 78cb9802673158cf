"""Land-cover classification benchmark: 4D-CNN against a 3D-CNN, a 2D-CNN, kNN and an RBF-SVM.

One run, one split for every method:

- data: the built-in sample area (``demo`` size, 512 x 512 Planet-like pixels at 3 m, ``n_dates``
  dates), ingested into a cube by the project's own ingest (clouds, UDM mask, noise and
  misregistration included) and cut by the patch stage into 32 x 32 pixel patches with its
  spatial-block split (blocks of 2 x 2 patches, 70 / 15 / 15 % train / val / test, buffer patches
  dropped). The held-out test blocks are never seen in training.
- samples and labels: every pixel is a sample, labelled with the sample area's full-resolution
  (3 m) land cover truth (``truth/planet_truth.zarr``) -- the 30 m NLCD-like layer of the cube
  disagrees with it on ~18 % of the 3 m pixels (mixed 30 m cells), label noise that would cap every
  method alike. Scores are over all labelled pixels of the test patches, predicted as the stage
  predicts its map: with their neighbourhood in the cube (inputs only: the labels of the test
  blocks are never seen). The CNNs run over the whole cube with ``tasks.classify.map_strips``
  (windows with the receptive radius as halo: one forward pass over the cube), kNN and the SVM
  read each test pixel's 3 x 3 window across patch borders.
- methods: the three CNNs (``fusion_models.classifiers``) are fully convolutional per-pixel
  classifiers with the same depth, the same 5 x 5 pixel receptive field, the same input treatment
  (standardised bands, 0 where not observed, the observed mask as a feature), the same training
  (cross entropy weighted by inverse class frequency capped at ``weight_cap``, AdamW, cosine
  decay, the same number of epochs of steps of 4 patches -- a new random draw of the batches'
  members every epoch, the same sequence for every CNN -- cut to random 16 x 16 crops, each patch
  with its own random flip / quarter turn, the epoch with the best validation macro-F1 kept).
  Optional generic tricks, off by default because they did not help in our runs: ``average``
  (weight averaging of the last epochs, kept only when it beats the best epoch on validation --
  it never did), ``tta`` (test-time averaging over the 8 symmetries of the square: +-0.001
  macro-F1 at 8 x the inference cost) and ``label_smoothing`` (with the class weights it pulls
  the majority class down: much worse for every CNN). The 4D-CNN uses the separable 4D
  convolution (``fusion_models.conv4d.SeparableConv4d``) with a width that gives it about the
  3D-CNN's parameter count. kNN (distance weighted) and the RBF-SVM (class_weight "balanced")
  classify the flattened 3 x 3 pixel window x all dates x (bands + mask) of each pixel; they are
  fitted on a class-balanced sample of training pixels (at most ``per_class`` per class) because
  both scale badly with the number of samples, and their hyper-parameters (k; C and gamma, as
  multiples of sklearn's "scale") are chosen by macro-F1 on ``val_pixels`` random labelled pixels
  of the validation patches (an SVM predicts ~500 pixels/s on one core, so all of them would
  cost minutes per setting); the test blocks are never used for any choice.
- figures: overall accuracy, macro-F1 (over the classes present in the test truth), training and
  inference seconds, inference throughput in pixels/s and, for the CNNs (the whole cube's map),
  in 32 x 32 patches/s.
  ``patches_per_s_cpu`` is the 4D-CNN's patches/s on the CPU; with a GPU the 4D-CNN is also
  timed there (``patches_per_s_gpu`` and the ratio).

    python -m benchmarks.classify --out classify.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._cli import write_result

log = logging.getLogger(__name__)

# max_train / max_val: patches of those splits used (None: all); the test split is always whole
# width4d: channels of the (separable) 4D-CNN, chosen so that it has about as many parameters as
# the 3D-CNN (width 16); weight_cap: cap of the inverse-frequency class weights (all CNNs);
# threads: torch CPU threads (1: on a shared 2-core machine 2 threads ran ~10x slower per step)
# epochs: 60 -- with 40 the best validation epoch of the 4D- and 3D-CNN was among the last five and
# 60 raised every CNN's best validation macro-F1 (4D 0.529 -> 0.554, 3D 0.494 -> 0.502, 2D 0.486 -> 0.502)
# knn_k / svm_c / svm_gamma: the grids searched on the validation pixels (gamma as a multiple of
# sklearn's "scale" = 1 / (features x variance)); label_smoothing / average / tta: see the docstring
_CNN = {"per_sample_augment": True, "label_smoothing": 0.0, "average": 0, "tta": False}
QUICK = {"n_dates": 6, "epochs": 3, "batch": 4, "width4d": 8, "weight_cap": 20.0, "per_class": 30, "max_train": 48,
         "max_val": 16, "threads": 1, "seed": 0, **_CNN, "knn_k": (3, 5), "svm_c": (10.0,),
         "svm_gamma": (0.3, 1.0), "val_pixels": 1000}
DEFAULT = {"n_dates": 12, "epochs": 60, "batch": 4, "width4d": 8, "weight_cap": 20.0, "per_class": 300,
           "max_train": None, "max_val": None, "threads": 1, "seed": 0, **_CNN,
           "knn_k": (1, 3, 5, 10, 20, 40), "svm_c": (1.0, 10.0, 100.0), "svm_gamma": (0.3, 1.0),
           "val_pixels": 3000}
DECK = {"cnn4d": (0.89, 0.77), "cnn3d": (0.70, 0.50), "knn": (0.74, 0.57), "svm": (0.59, 0.49),
        "cnn2d": (0.60, 0.36)}
BASELINES = ("cnn3d", "cnn2d", "knn", "svm")


def _prepare(root: Path, n_dates: int, seed: int) -> tuple[Path, Path]:
    """Sample area -> cube (with the 3 m truth as layer ``truth``) -> patches.zarr."""
    import xarray as xr

    from tasks.catalog import load_catalog
    from tasks.ingest import ingest_cube
    from tasks.patch import make_patches
    from tasks.sample_area import generate_sample_area

    generate_sample_area(root / "sample", size="demo", seed=seed, n_dates=n_dates)
    repo = Path(__file__).resolve().parents[1]
    catalog = load_catalog(repo / "data_catalog.yaml",
                           env={"FUSIONCUBE_SAMPLE": str(root / "sample"), "FUSIONCUBE_DATA": str(root)})
    cube = ingest_cube(catalog, "planet", workers=2).path
    truth = xr.open_zarr(root / "sample" / "truth" / "planet_truth.zarr", consolidated=None)["landcover"]
    grid = xr.open_zarr(cube, consolidated=None)
    truth = truth.sel(y=grid["y"], x=grid["x"], method="nearest", tolerance=0.5).load()
    xr.Dataset({"truth": (("y", "x"), truth.values.astype(np.uint8), dict(truth.attrs))}).to_zarr(
        cube, mode="a", consolidated=True)
    patches = root / "patches.zarr"
    make_patches(cube, patches, size=32, block=2, seed=seed)
    return Path(cube), patches


def _windows(x: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray, *, halo: int = 0) -> np.ndarray:
    """Flattened 3 x 3 pixel windows of every pixel: ``(n, T, C, P, P) -> (n P' P', 9 T (C + 1))``,
    ``P' = P - 2 halo``: patches read with a ``halo`` (1: the neighbours' pixels, as the stage
    reads them) give the windows of their inner pixels; beyond that, zeros (not observed)."""
    obs = valid & np.isfinite(x).all(axis=2)
    z = np.where(obs[:, :, None], (x - mean[None, None, :, None, None]) / std[None, None, :, None, None], 0)
    feat = np.concatenate([z, obs[:, :, None]], axis=2).astype(np.float32)  # (n, T, C + 1, P, P)
    n, t, c, p, _ = feat.shape
    pad = np.pad(feat, [(0, 0)] * 3 + [(1, 1), (1, 1)])
    shifted = [pad[..., i:i + p, j:j + p] for i in range(3) for j in range(3)]
    stack = np.stack(shifted, axis=1).reshape(n, 9 * t * c, p, p)  # (n, 9 T (C + 1), P, P)
    inner = stack[..., halo:p - halo, halo:p - halo]
    return inner.transpose(0, 2, 3, 1).reshape(-1, 9 * t * c)


def _with_halo(data: np.ndarray, valid: np.ndarray, origins: np.ndarray, size: int,
               halo: int) -> tuple[np.ndarray, np.ndarray]:
    """The patches at ``origins`` of a cube's ``data (T, C, H, W)`` / ``valid (T, H, W)`` with a
    ``halo`` of their neighbours' pixels (NaN / not observed beyond the cube):
    ``(n, T, C, P + 2 halo, P + 2 halo)``, ``(n, T, P + 2 halo, P + 2 halo)``."""
    pd_ = np.pad(data, [(0, 0), (0, 0), (halo, halo), (halo, halo)], constant_values=np.nan)
    pv = np.pad(valid, [(0, 0), (halo, halo), (halo, halo)])
    side = size + 2 * halo
    return (np.stack([pd_[..., r:r + side, c:c + side] for r, c in origins]),
            np.stack([pv[..., r:r + side, c:c + side] for r, c in origins]))


def _load(loader: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, vs, ys = zip(*[(np.asarray(a), np.asarray(b), np.asarray(c)) for a, b, c in loader], strict=True)
    return np.concatenate(xs), np.concatenate(vs), np.concatenate(ys)


def run(out: Path, *, quick: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``out`` (JSON) and ``out.with_suffix('.md')``; ``overrides``
    replace entries of the configuration (``seed`` draws another sample area and training order)."""
    import torch
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    from fusion_models.classifier_training import (
        class_weights,
        fit_classifier,
        scores,
        shuffled_batches,
    )
    from fusion_models.classifiers import build_classifier
    from tasks.classify import CLASSES, PatchBatches, band_statistics, map_strips, patch_loader

    cfg = dict(QUICK if quick else DEFAULT)
    unknown = set(overrides or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown benchmark setting(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides or {})
    torch.set_num_threads(min(cfg["threads"], torch.get_num_threads()))
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fusioncube-bench-classify-"))
    try:
        t0 = time.perf_counter()
        cube, patches = _prepare(work, cfg["n_dates"], cfg["seed"])
        prep_seconds = time.perf_counter() - t0
        import xarray as xr

        pds = xr.open_zarr(patches, consolidated=None)
        split = np.array([str(s) for s in pds["split"].values])
        n_times, n_bands = int(pds.sizes["time"]), int(pds.sizes["band"])

        limit = {"train": cfg["max_train"], "val": cfg["max_val"], "test": None}
        subset_rng = np.random.default_rng(cfg["seed"])
        members = {}
        for name, cap in limit.items():
            idx = np.flatnonzero(split == name)
            members[name] = np.sort(subset_rng.permutation(idx)[:cap]) if cap else idx

        def batches(where: str, *, shuffle: bool = False, batch: int = 16) -> Any:
            pb = PatchBatches(patches, members[where], batch=batch, label="truth")
            return patch_loader(pb, shuffle=shuffle, seed=cfg["seed"])

        val_dl, test_dl = batches("val"), batches("test")
        tr_x, tr_v, tr_y = _load(batches("train"))  # the training patches fit in memory (~35 MB)
        mean, std, counts = band_statistics(batches("train"))
        weights = class_weights(counts, cap=cfg["weight_cap"])
        k = len(CLASSES)
        test_x, test_v, test_y = _load(test_dl)
        truth = test_y.ravel()
        # the test pixels are predicted as the stage predicts them: with their neighbourhood in the
        # cube (the CNNs over the whole cube, map_strips; kNN / SVM windows with a 1 px halo)
        cube_ds = xr.open_zarr(cube, consolidated=None)
        cube_x, cube_v = cube_ds["data"].values.astype(np.float32), cube_ds["valid"].values.astype(bool)
        size = int(pds.sizes["py"])
        test_origins = np.stack([pds["row0"].values, pds["col0"].values], axis=1)[members["test"]].astype(int)
        cube_patches = cube_x.shape[-2] * cube_x.shape[-1] / size**2
        inner = _with_halo(cube_x, cube_v, test_origins, size, 0)
        assert np.array_equal(inner[0], test_x, equal_nan=True) and np.array_equal(inner[1], test_v)
        results: dict[str, dict[str, Any]] = {}
        models: dict[str, Any] = {}

        for kind in ("cnn4d", "cnn3d", "cnn2d"):
            torch.manual_seed(cfg["seed"])
            width = {"cnn4d": cfg["width4d"], "cnn3d": 16, "cnn2d": 64}[kind]
            net = build_classifier(kind, n_times=n_times, n_bands=n_bands, n_classes=k, width=width,
                                   mean=mean.tolist(), std=std.tolist())
            order = np.random.default_rng(cfg["seed"])  # every CNN sees the same batches

            def epoch(order: np.random.Generator = order) -> list[Any]:
                return shuffled_batches(tr_x, tr_v, tr_y, batch=cfg["batch"], rng=order)

            fit = fit_classifier(net, epoch,
                                 val=lambda: val_dl, weights=weights,
                                 epochs=cfg["epochs"], lr=3e-3, crop=16, device="cpu", seed=cfg["seed"],
                                 per_sample_augment=cfg["per_sample_augment"],
                                 label_smoothing=cfg["label_smoothing"], average=cfg["average"])
            t0 = time.perf_counter()
            whole = np.concatenate([p for _, p in map_strips(net, xr.DataArray(cube_x), xr.DataArray(cube_v),
                                                             device="cpu", tta=cfg["tta"])], axis=1)
            infer = time.perf_counter() - t0
            proba = np.stack([whole[:, r:r + size, c:c + size] for r, c in test_origins])
            s = scores(truth, proba.argmax(axis=1).ravel(), k)
            results[kind] = {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"],
                             "train_seconds": round(fit.seconds, 3), "inference_seconds": round(infer, 3),
                             "patches_per_s": round(cube_patches / infer, 2),
                             "pixels_per_s": round(cube_patches * size**2 / infer, 1), "best_epoch": fit.best_epoch,
                             "val_macro_f1": [round(v, 4) for v in fit.val_f1], "averaged": fit.averaged,
                             "parameters": int(sum(p.numel() for p in net.parameters())),
                             "per_class_f1": {str(c): round(f, 4) for c, f, n in
                                              zip(CLASSES, s["f1"], s["support"], strict=True) if n}}
            models[kind] = net
            log.info("%s: accuracy %.3f, macro-F1 %.3f", kind, s["accuracy"], s["macro_f1"])

        # kNN and RBF-SVM on flattened 3 x 3 windows, fitted on a class-balanced pixel sample
        feats = _windows(tr_x, tr_v, mean, std)
        labels = tr_y.ravel()
        rng = np.random.default_rng(cfg["seed"])
        pick = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:cfg["per_class"]]
                               for c in range(k)])
        fx, fy = feats[pick], labels[pick]
        test_feats = _windows(*_with_halo(cube_x, cube_v, test_origins, size, 1), mean, std, halo=1)
        keep = truth >= 0
        # hyper-parameters by macro-F1 on random labelled validation pixels (never the test blocks)
        val_x, val_v, val_y = _load(val_dl)
        val_labels = val_y.ravel()
        vpick = rng.permutation(np.flatnonzero(val_labels >= 0))[:cfg["val_pixels"]]
        val_feats, val_truth = _windows(val_x, val_v, mean, std)[vpick], val_labels[vpick]
        scale = 1.0 / (fx.shape[1] * fx.var())  # sklearn's gamma="scale"
        grids: dict[str, list[tuple[dict[str, Any], Any]]] = {
            "knn": [({"k": k_}, KNeighborsClassifier(n_neighbors=k_, weights="distance"))
                    for k_ in cfg["knn_k"]],
            "svm": [({"C": c_, "gamma_x_scale": g_}, SVC(C=c_, gamma=g_ * scale, class_weight="balanced"))
                    for c_ in cfg["svm_c"] for g_ in cfg["svm_gamma"]],
        }
        chosen: dict[str, tuple[dict[str, Any], Any, list[dict[str, Any]]]] = {}
        for kind, grid in grids.items():
            t0 = time.perf_counter()
            tried = []
            for hp, est in grid:
                est.fit(fx, fy)
                f1 = scores(val_truth, est.predict(val_feats), k)["macro_f1"]
                tried.append({**hp, "val_macro_f1": round(f1, 4)})
                log.info("%s %s: validation macro-F1 %.3f", kind, hp, f1)
            i = int(np.argmax([t["val_macro_f1"] for t in tried]))
            chosen[kind] = (grid[i][0], grid[i][1], tried)
            log.info("%s: chose %s in %.1f s", kind, grid[i][0], time.perf_counter() - t0)
        for kind in ("knn", "svm"):
            hp, est, tried = chosen[kind]
            t0 = time.perf_counter()
            est.fit(fx, fy)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pred = np.full(truth.shape, -1, dtype=np.int64)
            pred[keep] = est.predict(test_feats[keep])
            infer = time.perf_counter() - t0
            s = scores(truth, np.where(keep, pred, 0), k)
            results[kind] = {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"],
                             "train_seconds": round(train_s, 3), "inference_seconds": round(infer, 3),
                             "pixels_per_s": round(int(keep.sum()) / infer, 1), "train_samples": len(fy),
                             "hyper_parameters": hp, "validation_search": tried,
                             "per_class_f1": {str(c): round(f, 4) for c, f, n in
                                              zip(CLASSES, s["f1"], s["support"], strict=True) if n}}
            log.info("%s: accuracy %.3f, macro-F1 %.3f", kind, s["accuracy"], s["macro_f1"])

        summary: dict[str, Any] = {
            "acc_4dcnn": round(results["cnn4d"]["accuracy"], 4),
            "f1_4dcnn": round(results["cnn4d"]["macro_f1"], 4),
            "acc_best_baseline": round(max(results[b]["accuracy"] for b in BASELINES), 4),
            "f1_best_baseline": round(max(results[b]["macro_f1"] for b in BASELINES), 4),
            "patches_per_s_cpu": results["cnn4d"]["patches_per_s"],
        }
        summary["best_baseline_f1"] = max(BASELINES, key=lambda b: results[b]["macro_f1"])
        summary["target_met"] = bool(summary["acc_4dcnn"] > summary["acc_best_baseline"]
                                     and summary["f1_4dcnn"] >= summary["f1_best_baseline"] + 0.05)
        if torch.cuda.is_available():
            net = models["cnn4d"]  # the same map as on the CPU (map_strips over the whole cube)

            def whole_map() -> None:
                for _ in map_strips(net, xr.DataArray(cube_x), xr.DataArray(cube_v), device="cuda"):
                    pass  # each strip comes back to the host: the timing includes the copies

            whole_map()  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(3):
                whole_map()
            torch.cuda.synchronize()
            gpu = 3 * cube_patches / (time.perf_counter() - t0)
            summary["patches_per_s_gpu"] = round(gpu, 2)
            summary["gpu_cpu_ratio"] = round(gpu / summary["patches_per_s_cpu"], 2)
        report = {
            "summary": summary,
            "methods": results,
            "deck": {m: {"accuracy": a, "macro_f1": f} for m, (a, f) in DECK.items()},
            "data": {"sample_area": "demo", "pixels": [512, 512], "dates": n_times, "bands": n_bands,
                     "patches": {s: int((split == s).sum()) for s in ("train", "val", "test", "buffer")},
                     "patches_used": {s: len(m) for s, m in members.items()},
                     "test_pixels_labelled": int(keep.sum()),
                     "train_pixels_per_class": {str(c): int(n) for c, n in zip(CLASSES, counts, strict=True)},
                     "labels": "sample-area 3 m truth land cover", "prep_seconds": round(prep_seconds, 1)},
            "config": {**cfg, "quick": quick},
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, report, indent=1)
    rows = ["| method | accuracy | macro-F1 | train s | inference s | pixels/s | deck acc / F1 |",
            "|---|---|---|---|---|---|---|"]
    for m in ("cnn4d", *BASELINES):
        r = results[m]
        rows.append(f"| {m} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['train_seconds']:.1f} | "
                    f"{r['inference_seconds']:.2f} | {r['pixels_per_s']:.0f} | {DECK[m][0]} / {DECK[m][1]} |")
    out.with_suffix(".md").write_text(
        "# Land-cover classification benchmark\n\n" + "\n".join(rows) + "\n\n"
        + f"summary: `{json.dumps(summary)}`\n")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, VALUE as JSON (e.g. --set seed=1 --set epochs=90)")
    args = p.parse_args()
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set wants KEY=VALUE; got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(args.out, quick=args.quick, overrides=overrides)["summary"], indent=2))


if __name__ == "__main__":
    main()
