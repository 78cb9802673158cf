"""Is the built-in sample area as hard as real data? Its statistics beside a real MODIS NDVI series.

Three figures, each for the sample's Planet NDVI (time, y, x) and for the real MODIS MOD13Q1 NDVI
fixture (Sinop, 12 dates), cropped to the same number of dates and the same number of pixels:

- top-10% energy share: the share of squared singular values held by the top 10% of them, for
  each mode unfolding, averaged over the three modes. Higher means more low-rank, i.e. easier to
  compress or to complete from few observations;
- spatial lag-1 autocorrelation (x and y averaged): higher means smoother, easier to interpolate;
- temporal lag-1 autocorrelation.

The energy share is measured on the sample's clear truth (no clouds or noise); the
autocorrelations on the observed scenes, NaN where the UDM2 does not say clear.

Run ``python -m benchmarks.realism --out realism.json [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import tempfile
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import rasterio

from benchmarks._cli import write_result
from fusion_models.statistics import lag1_autocorrelation, top_energy_share

__all__ = ["real_fixture_dir", "run"]

log = logging.getLogger(__name__)

N_DATES = 12
_DATE_RE = re.compile(r"(\d{4}-\d{2}-\d{2})")
_SCENE_RE = re.compile(r"PSScene_(\d{8})_\d{6}_.*_3B_AnalyticMS_SR\.tif$")


def real_fixture_dir() -> Path:
    """The real MODIS NDVI fixture folder (env ``FUSIONCUBE_REAL_FIXTURES`` overrides its parent)."""
    env = os.environ.get("FUSIONCUBE_REAL_FIXTURES")
    base = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared/fixtures/real"
    return base / "modis_ndvi_sinop" if (base / "modis_ndvi_sinop").is_dir() else base


def _real_ndvi(folder: Path) -> tuple[np.ndarray, list[str]]:
    files = sorted(folder.glob("*.jp2"), key=lambda p: _DATE_RE.search(p.name).group(1))
    if len(files) < 2:
        raise FileNotFoundError(
            f"{folder}: expected the MODIS NDVI .jp2 series; found {len(files)} files "
            "(set FUSIONCUBE_REAL_FIXTURES to the folder holding modis_ndvi_sinop)"
        )
    stack = []
    for path in files:
        with rasterio.open(path) as src:
            stack.append(src.read(1).astype(np.float64))
    ndvi = np.stack(stack) * 1e-4  # (T, y, x)
    ndvi[ndvi < -0.2999] = np.nan  # MOD13Q1 fill value -3000
    return ndvi, [_DATE_RE.search(p.name).group(1) for p in files]


def _ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (nir - red) / (nir + red)


def _sample_truth_ndvi(truth: Path) -> np.ndarray:
    import xarray as xr

    with xr.open_zarr(truth, consolidated=False) as ds:
        data = ds["data"].sel(band=["red", "nir"]).values.astype(np.float64)
    return _ndvi(data[:, 0], data[:, 1])


def _sample_observed_ndvi(planet_dir: Path, grid, dates: list[datetime]) -> np.ndarray:
    """Mosaic the observed scenes per date on the Planet grid; NaN where not clear."""
    h, w = grid.shape
    index = {d.strftime("%Y%m%d"): t for t, d in enumerate(dates)}
    out = np.full((len(dates), h, w), np.nan)
    for path in sorted(planet_dir.glob("*_AnalyticMS_SR.tif")):
        t = index[_SCENE_RE.search(path.name).group(1)]
        with rasterio.open(path) as src, rasterio.open(
            str(path).replace("_AnalyticMS_SR.tif", "_udm2.tif")
        ) as udm:
            col = round((src.transform.c - grid.bounds[0]) / grid.resolution)
            row = round((grid.bounds[3] - src.transform.f) / grid.resolution)
            dn = src.read([3, 4]).astype(np.float64)
            clear = (udm.read(1) == 1) & (dn[0] > 0)
        value = np.where(clear, _ndvi(dn[0], dn[1]), np.nan)
        block = out[t, row:row + src.height, col:col + src.width]
        out[t, row:row + src.height, col:col + src.width] = np.where(np.isnan(block), value, block)
    return out


def _centre_crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    r0, c0 = (h - shape[0]) // 2, (w - shape[1]) // 2
    return x[..., r0:r0 + shape[0], c0:c0 + shape[1]]


def _fill(x: np.ndarray) -> np.ndarray:
    """Replace the few NaNs by the per-date median (the energy share needs finite values)."""
    med = np.nanmedian(x.reshape(x.shape[0], -1), axis=1)
    return np.where(np.isnan(x), med[:, None, None], x)


def _stats(energy_on: np.ndarray, ac_on: np.ndarray) -> dict:
    energy = [top_energy_share(energy_on, m, 0.1) for m in range(3)]
    centred = energy_on - energy_on.mean()
    energy_c = [top_energy_share(centred, m, 0.1) for m in range(3)]
    ac_x, ac_y = lag1_autocorrelation(ac_on, 2), lag1_autocorrelation(ac_on, 1)
    return {
        "top10_energy": float(np.mean(energy)),
        "top10_energy_per_mode": {"time": energy[0], "y": energy[1], "x": energy[2]},
        "top10_energy_centred": float(np.mean(energy_c)),
        "top10_energy_centred_per_mode": {"time": energy_c[0], "y": energy_c[1], "x": energy_c[2]},
        "spatial_ac": float(np.nanmean([ac_x, ac_y])),
        "spatial_ac_x": ac_x,
        "spatial_ac_y": ac_y,
        "temporal_ac": lag1_autocorrelation(ac_on, 0),
        "shape": list(energy_on.shape),
        "observed_share": float(np.isfinite(ac_on).mean()),
        "ndvi_mean": float(np.nanmean(ac_on)),
        "ndvi_std": float(np.nanstd(ac_on)),
    }


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("fusioncube", "numpy", "scipy", "rasterio", "xarray", "zarr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run(out: Path, *, quick: bool = False, seed: int = 0) -> dict:
    """Generate the sample area, put its NDVI statistics beside the real fixture's, write JSON + md.

    Parameters
    ----------
    out : Path
        The JSON file to write; the markdown table goes to ``out.with_suffix('.md')``.
    quick : bool
        Use the ``small`` sample (64 x 64 pixels) instead of ``demo`` (CI: a few seconds).
    seed : int
        Seed of the sample area.

    Returns
    -------
    dict
        What was written to ``out``; ``summary`` holds the headline figures.
    """
    from tasks.sample_area import generate_sample_area

    out = Path(out)
    size = "small" if quick else "demo"
    real, real_dates = _real_ndvi(real_fixture_dir())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusioncube-realism-") as tmp:
        area = generate_sample_area(Path(tmp) / "sample", size=size, seed=seed, n_dates=N_DATES)
        gen_s = time.perf_counter() - t0
        truth = _sample_truth_ndvi(area.truth_dir / "planet_truth.zarr")
        observed = _sample_observed_ndvi(area.planet_dir, area.planet_grid, list(area.planet_dates))
    n_t = min(N_DATES, truth.shape[0], real.shape[0])
    shape = (min(truth.shape[1], real.shape[1]), min(truth.shape[2], real.shape[2]))
    truth, observed = _centre_crop(truth[:n_t], shape), _centre_crop(observed[:n_t], shape)
    real = _centre_crop(real[:n_t], shape)
    sample_stats = _stats(truth, observed)
    sample_stats["truth_spatial_ac"] = float(np.mean(
        [lag1_autocorrelation(truth, 2), lag1_autocorrelation(truth, 1)]))
    sample_stats["truth_temporal_ac"] = lag1_autocorrelation(truth, 0)
    real_stats = _stats(_fill(real), real)
    result = {
        "benchmark": "realism",
        "summary": {
            "sample_top10_energy": sample_stats["top10_energy"],
            "real_top10_energy": real_stats["top10_energy"],
            "sample_spatial_ac": sample_stats["spatial_ac"],
            "real_spatial_ac": real_stats["spatial_ac"],
            "sample_temporal_ac": sample_stats["temporal_ac"],
            "real_temporal_ac": real_stats["temporal_ac"],
        },
        "sample": {"size": size, "seed": seed, "dates": [d.isoformat() for d in area.planet_dates[:n_t]],
                   "generation_s": gen_s, **sample_stats},
        "real": {"fixture": "MODIS MOD13Q1 NDVI, Sinop (e-sensing/sits)", "dates": real_dates[:n_t],
                 **real_stats},
        "data": {"tensor_shape": [n_t, *shape], "values_per_tensor": int(n_t * shape[0] * shape[1])},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "software": _versions(),
        "when": datetime.now().isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result, indent=2)
    out.with_suffix(".md").write_text(_markdown(result))
    log.info("realism: %s", result["summary"])
    return result


def _markdown(result: dict) -> str:
    s, r = result["sample"], result["real"]
    rows = [
        ("top-10% energy share (mean of 3 modes)", "top10_energy"),
        ("top-10% energy share, mean removed", "top10_energy_centred"),
        ("spatial lag-1 autocorrelation", "spatial_ac"),
        ("temporal lag-1 autocorrelation", "temporal_ac"),
        ("NDVI mean", "ndvi_mean"),
        ("NDVI std", "ndvi_std"),
        ("observed (clear) share", "observed_share"),
    ]
    lines = [
        "# Realism: sample area vs real data (NDVI, time x y x x)",
        "",
        f"Tensor {result['data']['tensor_shape']}; sample `{s['size']}` seed {s['seed']}; "
        f"real: {r['fixture']}. Machine: {result['machine']['platform']}, "
        f"{result['machine']['cpu_count']} CPUs.",
        "",
        "| statistic | sample | real |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {s[key]:.4f} | {r[key]:.4f} |" for label, key in rows]
    lines += ["", "Energy on the sample's clear truth; autocorrelations on its observed scenes "
              "(NaN where the UDM2 is not clear). Lower energy and lower autocorrelation = harder.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.realism", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="small sample (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args.out, quick=args.quick, seed=args.seed)


if __name__ == "__main__":
    main()
