"""Gap-filling benchmark: LRTC-Net against Tucker completion, HaLRTC and linear interpolation.

One run:

- sample area (Planet-like, seeded): the 32 x 32 px x 3 bands (blue, green, red) x ``n_dates``
  patches of one sample area, with its clear truth. Two mask kinds: 20 % random missing entries
  (the deck's setting) and realistic clouds (the sample's true cloud/shadow masks, what its UDM
  flags). Every method sees only the observed entries: LRTC-Net is fitted self-supervised on them
  (hiding a further share under masks of the same kind), Tucker completion (Shi et al. 2015, the
  same ranks), HaLRTC (Liu et al. 2013) and per-pixel linear temporal interpolation (weighted by
  acquisition day) complete the same patches. The setting is transductive, as the stage is: the
  net is fitted on the observed entries of the very patches it then fills and is scored on (it
  never sees the truth under the gaps), not on held-out patches as the deck's 80 / 20 split, and
  the shared ranks come from a Tucker sweep on these patches. Two LRTC-Nets, the ablation: ``lrtcnet_deck`` is the deck's plain net (zeros at
  the gaps, random orthonormal D_n, the Tucker layers alone) and ``lrtcnet`` is ours, what the
  stage runs (interpolation start, HOSVD D_n, learned per-layer steps, residual refiner and a
  stacking head whose weights are solved on self-supervised hidden entries; see
  ``fusion_models.lrtcnet``); same ranks, layers, epochs and masks. Training across sample areas (supervised on another seed's truth) does not work
  here: every seed has its own acquisition dates, so a learned temporal basis does not transfer.
- real data: the MODIS NDVI fixture (Sinop, 12 dates) ingested as a cube; observed pixels are hidden
  under cloud-shaped masks, the gap-filling *stage* (self-supervised LRTC-Net) fills the cube and
  the hidden values are scored against linear interpolation.

NRMSE = ||(Xhat - X) on missing entries||_F / ||X on missing entries||_F; PSNR = 10 log10(peak^2 /
MSE on missing entries) with peak the largest true value of the test set; runtime in seconds
(training and inference separately for LRTC-Net). Writes JSON and a markdown table beside it,
and a before / after / truth PNG.

    python -m benchmarks.gapfill --out gapfill.json [--quick]
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

from benchmarks._cli import bench_parser, modis_ndvi_cube, report, torch_machine, write_result

DECK_NRMSE = 0.0134  # the seed deck's LRTC-Net on DynamicEarthNet, 20 % random missing
log = logging.getLogger(__name__)

# HaLRTC's (rho, iterations) per mask kind, chosen on a VALIDATION area (seed 1, 100 dates, the
# same patches and masks) from rho in (1, 5) x iterations in (8, 30, 100), NRMSE: random 20 %
# rho 1 / 8 it. 0.0926 (rho 5 / 30 it.: 0.1037); clouds rho 5 / 8 it. 0.1933 (30 it.: 0.2247;
# rho 1: 0.28-0.29). There, Tucker completion's temporal rank 5 / 10 / 20 scored 0.165 / 0.166 /
# 0.170 under clouds and 0.131 / 0.123 / 0.119 at random 20 %; it keeps the net's ranks, as the
# issue asks of the baseline.
HALRTC = {"random20": {"rho": 1.0, "iters": 8}, "cloud": {"rho": 5.0, "iters": 8}}
QUICK = {"n_dates": 20, "seed": 0, "epochs": 5, "lr": 5e-3, "tucker_iters": 10,
         "halrtc": HALRTC, "modis_epochs": 3}
DEFAULT = {"n_dates": 100, "seed": 0, "epochs": 30, "lr": 5e-3, "tucker_iters": 30,
           "halrtc": HALRTC, "modis_epochs": 20}
# The ablation: the deck's plain LRTC-Net (start P_Omega(X) = 0 at the gaps, random orthonormal
# D_n, the layers alone) against ours (the stage's: interpolation start, HOSVD D_n, learned
# per-layer steps, residual refiner, stacking head). Same ranks, layers, epochs and self-supervised
# masks.
VARIANTS: dict[str, dict[str, Any]] = {
    "lrtcnet_deck": {"init": "zeros", "factor_init": "random", "step_sizes": False, "refine": 0,
                     "stack": False},
    "lrtcnet": {"init": "linear", "factor_init": "hosvd", "step_sizes": True, "refine": 16,
                "stack": True},
}  # "lrtcnet" is fusion_models.lrtcnet_training.OURS, what the stage runs (checked in run())


def _nrmse(est: np.ndarray, truth: np.ndarray, missing: np.ndarray) -> float:
    return float(np.linalg.norm((est - truth)[missing]) / np.linalg.norm(truth[missing]))


def _psnr(est: np.ndarray, truth: np.ndarray, missing: np.ndarray, peak: float) -> float:
    mse = float(np.mean((est - truth)[missing] ** 2))
    return float(10 * np.log10(peak**2 / mse)) if mse > 0 else float("inf")


def _patches(root: Path, *, bands: int = 3, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth patches ``(P, T, C, size, size)``, cloud masks ``(P, T, size, size)`` and the dates
    ``(T,)`` of one area."""
    import xarray as xr

    from fusion_models.patching import extract_patches, patch_origins

    ds = xr.open_zarr(root / "truth" / "planet_truth.zarr", consolidated=None)
    data = ds["data"].isel(band=slice(0, bands)).values.astype(np.float32)
    cloud = ds["cloud"].values.astype(bool)
    origins = patch_origins(data.shape[-2], data.shape[-1], size=size, stride=size)
    return extract_patches(data, origins, size), extract_patches(cloud, origins, size), ds["time"].values


def _per_patch(fn, x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.float64)
    for p in range(x.shape[0]):
        out[p] = fn(x[p], np.broadcast_to(observed[p][:, None], x[p].shape))
    return out


def _setting(
    test: np.ndarray,
    test_obs: np.ndarray,
    cfg: dict[str, Any],
    *,
    ranks: tuple[int, ...],
    dates: np.ndarray,
    label: str,
    hide_kind: str,
    hide_share: float,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """All methods on one (patches, mask) setting; figures in physical units.

    LRTC-Net is fitted self-supervised on the observed entries of these same patches (a further
    ``hide_share`` of them hidden under ``hide_kind`` masks per step): it never sees the truth
    under the gaps, like the baselines, which also only see the observed entries.
    """
    import torch

    from fusion_models.completion import halrtc, tucker_completion
    from fusion_models.lrtcnet_training import complete, fit_lrtcnet, interpolate

    obs_vals = np.where(test_obs[:, :, None], test, np.nan)
    mean = np.nanmean(obs_vals, axis=(0, 1, 3, 4), keepdims=True)
    std = np.nanstd(obs_vals, axis=(0, 1, 3, 4), keepdims=True)
    te_in = np.where(test_obs[:, :, None], (test - mean) / std, 0.0).astype(np.float32)
    missing = np.broadcast_to(~test_obs[:, :, None], test.shape)
    peak = float(test.max())
    results: dict[str, dict[str, float]] = {}
    outputs: dict[str, np.ndarray] = {}

    def score(name: str, est_std: np.ndarray, seconds: float, **extra: float) -> None:
        est = est_std * std + mean
        outputs[name] = est
        results[name] = {"nrmse": _nrmse(est, test, missing), "psnr": _psnr(est, test, missing, peak),
                         "seconds": round(seconds, 3), **extra}
        log.info("%s %s: NRMSE %.4f", label, name, results[name]["nrmse"])

    t0 = time.perf_counter()
    lin = interpolate(te_in, test_obs, times=dates)  # weighted by acquisition day
    score("linear", lin, time.perf_counter() - t0)
    for name, variant in VARIANTS.items():  # the deck's plain net, then ours (the stage's)
        torch.manual_seed(0)
        fit = fit_lrtcnet(te_in, test_obs, ranks=ranks, layers=20, epochs=cfg["epochs"], batch=16,
                          lr=cfg["lr"], hide_kind=hide_kind, hide_share=hide_share, seed=0,
                          device="cpu", times=dates, **variant)
        t0 = time.perf_counter()
        net = complete(fit.net, te_in, test_obs, batch=16, init=variant.get("init", "linear"), times=dates)
        score(name, net, time.perf_counter() - t0, train_seconds=round(fit.seconds, 3))
    t0 = time.perf_counter()
    tk = _per_patch(lambda x, m: tucker_completion(x, m, ranks=ranks, iters=cfg["tucker_iters"],
                                                   init=interpolate(x[None], m[None, :, 0], dates)[0]).filled,
                    te_in, test_obs)
    score("tucker", tk, time.perf_counter() - t0)
    t0 = time.perf_counter()
    ha = _per_patch(lambda x, m: halrtc(x, m, **cfg["halrtc"][label],
                                        init=interpolate(x[None], m[None, :, 0], dates)[0]).filled,
                    te_in, test_obs)
    score("halrtc", ha, time.perf_counter() - t0)
    return results, outputs


def _modis(work: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Self-supervised stage on the real MODIS NDVI cube with observed pixels hidden."""
    import xarray as xr

    from fusion_models.completion import linear_interpolation
    from fusion_models.lrtcnet_training import cloud_masks
    from tasks.cube import open_cube
    from tasks.gapfill import gapfill_cube

    ds = open_cube(modis_ndvi_cube(work / "modis" / "cube.zarr")).load()
    truth = ds["data"].values.astype(np.float32)
    valid = ds["valid"].values & np.isfinite(truth).all(axis=1)
    rng = np.random.default_rng(7)
    hidden = cloud_masks(valid.shape, share=0.3, rng=rng) & valid
    seen = valid & ~hidden
    hid = ds.copy()
    hid["data"] = (ds["data"].dims, np.where(seen[:, None], truth, np.nan).astype(np.float32),
                   dict(ds["data"].attrs))
    hid["valid"] = (ds["valid"].dims, seen, dict(ds["valid"].attrs))
    hidden_cube = work / "modis" / "hidden.zarr"
    hid.to_zarr(hidden_cube, zarr_format=3, consolidated=True, mode="w")
    t0 = time.perf_counter()
    gapfill_cube(hidden_cube, work / "modis" / "filled.zarr", epochs=cfg["modis_epochs"], layers=20,
                 batch=8, device="cpu")
    seconds = time.perf_counter() - t0
    filled = xr.open_zarr(work / "modis" / "filled.zarr", consolidated=None)["data"].values
    score = np.broadcast_to(hidden[:, None], truth.shape)
    t1 = time.perf_counter()
    lin = linear_interpolation(np.where(seen[:, None], truth, np.nan), np.broadcast_to(seen[:, None], truth.shape),
                               times=ds["time"].values)
    lin_seconds = time.perf_counter() - t1
    peak = float(truth[score].max())
    return {
        "shape": list(truth.shape),
        "hidden_share_of_observed": float(hidden.sum() / max(valid.sum(), 1)),
        "lrtcnet": {"nrmse": _nrmse(filled, truth, score), "psnr": _psnr(filled, truth, score, peak),
                    "seconds": round(seconds, 3)},
        "linear": {"nrmse": _nrmse(lin, truth, score), "psnr": _psnr(lin, truth, score, peak),
                   "seconds": round(lin_seconds, 3)},
    }


def _png(path: Path, test: np.ndarray, obs: np.ndarray, outputs: dict[str, np.ndarray]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = int(np.argmax((~obs).mean(axis=(1, 2, 3)) * ((~obs).mean(axis=(1, 2, 3)) < 0.6)))
    gaps = (~obs[p]).mean(axis=(1, 2))
    dates = np.sort(np.argsort(-(gaps * (gaps < 0.9)))[:4])
    rows = [("before", np.where(obs[p][:, None], test[p], np.nan)), ("LRTC-Net", outputs["lrtcnet"][p]),
            ("linear", outputs["linear"][p]), ("truth", test[p])]
    lo, hi = np.percentile(test[p], [2, 98])
    fig, axes = plt.subplots(len(rows), len(dates), figsize=(2.2 * len(dates), 2.2 * len(rows)),
                             squeeze=False)
    for i, (name, arr) in enumerate(rows):
        for j, t in enumerate(dates):
            img = np.clip((np.moveaxis(arr[t][[2, 1, 0]], 0, -1) - lo) / (hi - lo), 0, 1)
            img[~np.isfinite(img).all(-1)] = 0.5
            axes[i, j].imshow(img)
            axes[i, j].set_title(f"{name}, date {t} ({100 * gaps[t]:.0f} % cloud)", fontsize=7)
            axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Gap-filling benchmark", "", f"Data: {result['data']}", "",
             "| setting | method | NRMSE | PSNR (dB) | seconds | train seconds |",
             "|---|---|---|---|---|---|"]
    for setting, methods in result["settings"].items():
        for name, r in methods.items():
            lines.append(f"| {setting} | {name} | {r['nrmse']:.4f} | {r['psnr']:.2f} | {r['seconds']:.1f} | "
                         f"{r.get('train_seconds', '')} |")
    for name, r in ((k, result["real"][k]) for k in ("lrtcnet", "linear")):
        lines.append(f"| real MODIS NDVI, cloud-hidden | {name} | {r['nrmse']:.4f} | {r['psnr']:.2f} | "
                     f"{r['seconds']:.1f} | |")
    lines += ["", "Summary: " + json.dumps(result["summary"]), "",
              f"Targets: {json.dumps(result['targets'])}", "",
              f"Deck anchor (DynamicEarthNet, 20 % random, supervised on 1600 series): NRMSE "
              f"{DECK_NRMSE}; ours here (sample area, 20 % random, self-supervised on 4 patches): "
              f"{result['summary']['nrmse_lrtcnet_random20']:.4f}; the deck's plain net here: "
              f"{result['summary']['nrmse_lrtcnet_deck_random20']:.4f}", ""]
    return "\n".join(lines)


def run(out: Path, *, quick: bool = False, sample: Path | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``out`` (JSON), ``out.with_suffix('.md')`` and ``.png``.

    ``sample``: keep the generated sample areas there and reuse them (default: a temporary folder).
    """
    import torch

    from fusion_models.completion import default_ranks
    from fusion_models.lrtcnet_training import OURS
    from tasks.gapfill import default_ranks as stage_ranks
    from tasks.sample_area import generate_sample_area

    if VARIANTS["lrtcnet"] != OURS:
        raise RuntimeError(f"benchmark's 'lrtcnet' {VARIANTS['lrtcnet']} is not the stage's {OURS}")
    # one thread: on the shared 2-core machine two torch threads were 3-5x slower per training
    # step than one (the other core is busy); numpy's BLAS keeps its own setting
    torch.set_num_threads(1)
    cfg = QUICK if quick else DEFAULT
    started = time.perf_counter()
    stages: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - since, 2)
        log.info("gapfill bench: %s %.1f s", name, stages[name])
        return now
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fusioncube-bench-gapfill-"))
    root = Path(sample) if sample else work
    try:
        area = generate_sample_area(root / f"small-n{cfg['n_dates']}-s{cfg['seed']}", size="small",
                                    seed=cfg["seed"], n_dates=cfg["n_dates"]).root
        gen_seconds = time.perf_counter() - started
        t = lap("sample_area", started)
        test, test_cloud, dates = _patches(area)
        shape = test.shape[1:]
        ranks = stage_ranks(shape)  # (10 % of dates, all bands, full spatial rank)
        rng = np.random.default_rng(0)
        random_obs = rng.random(test_cloud.shape) >= 0.2
        settings: dict[str, dict[str, dict[str, float]]] = {}
        settings["random20"], _ = _setting(test, random_obs, cfg, ranks=ranks, dates=dates, label="random20",
                                           hide_kind="random", hide_share=0.2)
        t = lap("random20", t)
        settings["cloud"], cloud_out = _setting(test, ~test_cloud, cfg, ranks=ranks, dates=dates, label="cloud",
                                                hide_kind="cloud", hide_share=0.3)
        t = lap("cloud", t)
        png = _png(out.with_suffix(".png"), test, ~test_cloud, cloud_out)
        t = lap("png", t)
        real = _modis(work, cfg)
        lap("real_modis", t)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def best(setting: str) -> float:
        return min(v["nrmse"] for k, v in settings[setting].items() if not k.startswith("lrtcnet"))


    summary = {
        "nrmse_lrtcnet_random20": settings["random20"]["lrtcnet"]["nrmse"],
        "nrmse_lrtcnet_cloud": settings["cloud"]["lrtcnet"]["nrmse"],
        "nrmse_best_baseline_cloud": best("cloud"),
        "nrmse_best_baseline_random20": best("random20"),
        "nrmse_real_lrtcnet": real["lrtcnet"]["nrmse"],
        "nrmse_real_linear": real["linear"]["nrmse"],
        # beside the keys: the ablation (the deck's plain net) and the deck's own figure
        "nrmse_lrtcnet_deck_random20": settings["random20"]["lrtcnet_deck"]["nrmse"],
        "nrmse_lrtcnet_deck_cloud": settings["cloud"]["lrtcnet_deck"]["nrmse"],
        "deck_anchor_nrmse_random20": DECK_NRMSE,
    }
    targets = {
        "cloud: lrtcnet <= 0.8 x best baseline": summary["nrmse_lrtcnet_cloud"] <= 0.8 * summary["nrmse_best_baseline_cloud"],
        "random20: lrtcnet <= best baseline": summary["nrmse_lrtcnet_random20"] <= summary["nrmse_best_baseline_random20"],
        "real: lrtcnet <= 0.8 x linear": summary["nrmse_real_lrtcnet"] <= 0.8 * summary["nrmse_real_linear"],
    }
    result = {
        "summary": summary,
        "targets": targets,
        "deck_anchor_nrmse_random20": DECK_NRMSE,
        "settings": settings,
        "real": real,
        "data": {
            "sample_area": f"size small (64 x 64 px), {cfg['n_dates']} dates, seed {cfg['seed']}, "
                           "bands blue, green, red; truth from truth/planet_truth.zarr",
            "patches": int(test.shape[0]),
            "patch_shape_T_C_H_W": list(shape), "ranks": list(ranks),
            "deck_ranks": list(default_ranks(shape)),
            "cloud_share_test": float(test_cloud.mean()),
            "lrtcnet": f"20 layers, batch 16, Adam lr {cfg['lr']}, {cfg['epochs']} epochs (deck: lr "
                       "1e-4, 100 epochs on 1600 series, supervised; scaled to 2 CPU cores, one torch "
                       "thread), fitted "
                       "self-supervised on the observed entries of the scored patches (no truth)",
            "variants": {k: dict(v) for k, v in VARIANTS.items()},
            "ranks_note": "ranks (10 % of dates, all 3 bands, full 32 x 32 spatial) for every "
                          "Tucker-type method (LRTC-Net variants and Tucker completion); a Tucker "
                          "sweep on these patches found temporal rank 10 best under clouds (20 and "
                          "30 were worse: 0.186, 0.190) and spatial ranks 24/16 within 0.002 of "
                          "full; the deck's 10 % spatial rank (4 x 4 of 32 x 32) gave Tucker 0.175 "
                          "and the earlier net (interpolation start, HOSVD D_n) 0.218 on random 20 %",
            "validation": "training settings were compared on a validation sample area (seed 1, "
                          "never on these test patches; there Tucker 0.166, linear 0.169 under "
                          "clouds): the net's error under clouds stays at 0.150-0.155 for 15-60 "
                          "epochs, with temporal rank 5 (0.152) or 20 (0.161), refiner width 32 "
                          "(0.150), refiner context of +-1/2 dates (0.151/0.152), the start as a "
                          "refiner input (0.154), lr 2e-3 (0.157), more or data-shaped hidden "
                          "masks (0.157/0.158); 120 cosine steps at lr 1e-2 lowered the "
                          "self-supervised loss but not the error under real clouds. About 55 % of "
                          "the squared error sits on dates >= 80 % cloudy in a patch, where the "
                          "date-specific texture can only come from neighbouring dates. The stacking head "
                          "(temporal interpolation and normalized convolutions of the low-rank "
                          "misfit, weights per cloud-cover class of a date image solved by least "
                          "squares on 3 draws of hidden masks) was chosen there: 0.153 -> 0.148 "
                          "under clouds. Tried there and not kept: a temporal factor fitted by "
                          "alternating least squares with a random-walk prior over acquisition "
                          "days (0.150-0.155 as a plain fill, vs 0.157 for the HOSVD factor), "
                          "best linear unbiased (ridge-prior) coefficients (-0.005), per "
                          "patch-date row or offset corrections from a date's clear pixels "
                          "(worse: 0.156-0.167), nearest neighbours in coefficient space for the "
                          "misfit (no better than normalized convolution), hidden masks with "
                          "mean share 0.5 to see more cloudy images (0.151), weights linear in "
                          "the cloud share instead of classes (0.149-0.151). With the truth's own "
                          "rank-10 temporal factor a plain least-squares fill scores 0.134 there "
                          "(0.129 with normalized convolution of the misfit): most of the "
                          "remaining gap is the temporal factor of the mostly cloudy dates",
            "real_fixture": "MODIS NDVI Sinop (12 dates, 147 x 255 px), 30 % of observed hidden under "
                            f"cloud-shaped masks, stage self-supervised, {cfg['modis_epochs']} epochs",
        },
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "sample_generation_seconds": round(gen_seconds, 1),
        "stage_seconds": stages,
        "png": str(png),
        "machine": torch_machine(),
    }
    write_result(out, result, indent=2, default=float)
    out.with_suffix(".md").write_text(_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    return report(run, bench_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
