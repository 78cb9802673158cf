"""Quick-look pictures for operators: the newest composite of a cube, as a PNG."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from tasks.cube import open_cube  # noqa: E402

__all__ = ["composite_png", "stretch", "thumbnail_data_uri"]

log = logging.getLogger(__name__)


def stretch(values: np.ndarray, mask: np.ndarray, *, low: float = 2, high: float = 98) -> np.ndarray:
    """Percentile stretch to 0..1 using the masked pixels' distribution; NaN stays NaN."""
    sample = values[mask & np.isfinite(values)]
    if sample.size == 0:
        return np.full(values.shape, np.nan, dtype=np.float32)
    lo, hi = np.percentile(sample, [low, high])
    scale = hi - lo if hi > lo else 1.0
    return np.clip((values - lo) / scale, 0, 1).astype(np.float32)


def _rgb_bands(bands: list[str]) -> list[str] | None:
    names = [b.lower() for b in bands]
    if all(c in names for c in ("red", "green", "blue")):
        return [bands[names.index(c)] for c in ("red", "green", "blue")]
    return None


def composite_png(
    cube: str | Path, out: str | Path, *, time_index: int = -1, max_pixels: int = 1024
) -> Path:
    """Write a PNG of one date of a cube (default: the newest): true colour when the cube has
    red/green/blue bands, else the first band with a colour bar; pixels not ``valid`` are greyed.

    Only that date is read, subsampled to at most ``max_pixels`` along each side.
    """
    ds = open_cube(cube)
    if ds.sizes["time"] == 0:
        raise ValueError(f"{cube}: the cube has no time step to show")
    order = np.argsort(ds["time"].values)
    t = int(order[time_index])
    step = max(1, int(np.ceil(max(ds.sizes["y"], ds.sizes["x"]) / max_pixels)))
    one: xr.Dataset = ds.isel(time=t, y=slice(None, None, step), x=slice(None, None, step)).load()
    valid = one["valid"].values
    bands = [str(b) for b in one["band"].values]
    rgb = _rgb_bands(bands)
    fig, ax = plt.subplots(figsize=(7, 7 * one.sizes["y"] / max(one.sizes["x"], 1) + 0.6), dpi=110)
    date = np.datetime_as_string(one["time"].values, unit="m")
    if rgb is not None:
        img = np.dstack([stretch(one["data"].sel(band=b).values, valid) for b in rgb])
        img = np.nan_to_num(img, nan=0.0)
        img[~valid] = 0.55 * img[~valid] + 0.45 * np.array([0.8, 0.8, 0.8])
        ax.imshow(img, interpolation="nearest")
        what = "true colour (" + ", ".join(rgb) + ")"
    else:
        band = bands[0]
        values = one["data"].sel(band=band).values
        shown = np.where(valid, values, np.nan)
        finite = shown[np.isfinite(shown)]
        vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (0, 1))
        im = ax.imshow(shown, cmap="inferno", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_facecolor("#cccccc")
        fig.colorbar(im, ax=ax, shrink=0.7, label=band)
        what = band
    share = float(valid.mean()) if valid.size else 0.0
    ax.set_title(f"{Path(cube).name}  {date}  {what}\nvalid (clear) share {share:.0%}; grey = not valid", fontsize=9)
    ax.set_axis_off()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def thumbnail_data_uri(png: str | Path, *, max_pixels: int = 360) -> str:
    """A small PNG of ``png`` as a ``data:`` URI, for Prefect image artifacts."""
    img = plt.imread(str(png))
    step = max(1, int(np.ceil(max(img.shape[:2]) / max_pixels)))
    buf = io.BytesIO()
    plt.imsave(buf, img[::step, ::step], format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
