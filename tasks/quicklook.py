"""Quick-look pictures for operators: the newest composite of a cube, as a PNG."""

from __future__ import annotations

import base64
import io
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from tasks.cube import open_cube

__all__ = [
    "FILLED_TINT", "RGB_NAMES", "artifact_key", "composite_png", "filled_view", "is_current", "made_in_task_run",
    "newest_composite", "publish_image", "rgb_bands", "stretch",
    "percent", "product_key", "quicklook_path", "save_figure", "thumbnail_data_uri", "write_class_cog",
]

log = logging.getLogger(__name__)


def stretch(values: np.ndarray, mask: np.ndarray, *, low: float = 2, high: float = 98) -> np.ndarray:
    """Percentile stretch to 0..1 using the masked pixels' distribution; NaN stays NaN."""
    sample = values[mask & np.isfinite(values)]
    if sample.size == 0:
        return np.full(values.shape, np.nan, dtype=np.float32)
    lo, hi = np.percentile(sample, [low, high])
    scale = hi - lo if hi > lo else 1.0
    return np.clip((values - lo) / scale, 0, 1).astype(np.float32)


# (red, green, blue) band names by product, lower case: named bands, Sentinel-2 / HLS, Landsat 8-9
# Collection 2, MODIS surface reflectance.
RGB_NAMES = (
    ("red", "green", "blue"),
    ("b04", "b03", "b02"),
    ("b4", "b3", "b2"),
    ("sr_b4", "sr_b3", "sr_b2"),
    ("sur_refl_b01", "sur_refl_b04", "sur_refl_b03"),
)


def rgb_bands(bands: list[str]) -> list[str] | None:
    """The cube's (red, green, blue) bands by name, when it has them (see :data:`RGB_NAMES`)."""
    names = [str(b).lower() for b in bands]
    for rgb in RGB_NAMES:
        if all(c in names for c in rgb):
            return [bands[names.index(c)] for c in rgb]
    return None


def newest_composite(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the newest valid observation of a (time, band, y, x) stack sorted by time.

    Returns (band, y, x) values (NaN where no date is valid) and the (y, x) "any valid" mask.
    """
    t = valid.shape[0]
    newest = np.where(valid, np.arange(t)[:, None, None], -1).max(axis=0)  # (y, x)
    has = newest >= 0
    idx = np.clip(newest, 0, None)
    out = np.take_along_axis(data, idx[None, None, :, :].repeat(data.shape[1], axis=1), axis=0)[0]
    out[:, ~has] = np.nan
    return out, has


#: the outline around gap-filled pixels in a filled cube's quick-look
FILLED_TINT = "#00e5ff"


def filled_view(data: np.ndarray, valid: np.ndarray, filled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One date of a gap-filled cube: (band, y, x) values where observed or filled (NaN
    elsewhere), the (y, x) "has a value" mask, and the (y, x) mask of the filled pixels."""
    tint = filled & ~valid
    has = (valid | tint) & np.isfinite(data).all(axis=0)
    values = np.where(has[None], data, np.nan)
    return values, has, tint & has


def composite_png(
    cube: str | Path, out: str | Path, *, dates: int = 8, max_pixels: int = 1024
) -> Path:
    """Write a PNG of the cube's newest composite: per pixel the newest clear observation among
    the last ``dates`` dates. True colour when the cube has red/green/blue bands, else the first
    band with a colour bar; pixels with no clear observation are grey.

    Only those dates are read, subsampled to at most ``max_pixels`` along each side.
    """
    ds = open_cube(cube)
    if ds.sizes["time"] == 0:
        raise ValueError(f"{cube}: the cube has no time step to show")
    gapfilled = "filled" in ds.data_vars and tuple(ds["filled"].dims) == ("time", "y", "x")
    order = np.argsort(ds["time"].values)[-(1 if gapfilled else dates):]
    why = ""
    if gapfilled:  # a gap-filled cube: its newest date with filled pixels, whole, the filled ones marked
        with_fills = np.flatnonzero(np.asarray(ds["filled"].any(("y", "x"))))
        if with_fills.size:
            order = np.array([max(with_fills, key=lambda t: ds["time"].values[t])])
            why = " (the newest date with filled pixels)"
    step = max(1, int(np.ceil(max(ds.sizes["y"], ds.sizes["x"]) / max_pixels)))
    sub: xr.Dataset = ds[["data", "valid", *(["filled"] if gapfilled else [])]].isel(
        time=order, y=slice(None, None, step), x=slice(None, None, step)
    ).load()
    tint = None
    if gapfilled:
        values, has, tint = filled_view(sub["data"].values[-1], sub["valid"].values[-1], sub["filled"].values[-1])
    else:
        values, has = newest_composite(sub["data"].values, sub["valid"].values)
    bands = [str(b) for b in sub["band"].values]
    rgb = rgb_bands(bands)
    ny, nx = has.shape
    fig, ax = plt.subplots(figsize=(7, 7 * ny / max(nx, 1) + 0.6), dpi=110)
    first = np.datetime_as_string(sub["time"].values[0], unit="D")
    last = np.datetime_as_string(sub["time"].values[-1], unit="D")
    if rgb is not None:
        img = np.dstack([stretch(values[bands.index(b)], has) for b in rgb])
        img[~has] = 0.8
        ax.imshow(img, interpolation="nearest")
        what = "true colour (" + ", ".join(rgb) + ")"
    else:
        shown = values[0]
        finite = shown[np.isfinite(shown)]
        vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
        cmap = plt.get_cmap("inferno").copy()
        cmap.set_bad("#cccccc")  # no clear value (the axes are hidden, so their face colour is not)
        im = ax.imshow(np.ma.masked_where(~has | ~np.isfinite(shown), shown), cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.7, label=bands[0])
        what = bands[0]
    if tint is not None:
        if tint.any() and not tint.all():  # a light veil and an outline: the filled values still show
            veil = np.zeros((*tint.shape, 4))
            veil[tint] = (*matplotlib.colors.to_rgb(FILLED_TINT), 0.3)
            ax.imshow(veil, interpolation="nearest")
            ax.contour(tint.astype(float), levels=[0.5], colors=FILLED_TINT, linewidths=1.2)
        ax.set_title(
            f"{Path(cube).name}: {last}{why}, observed and gap-filled values\n"
            f"{what}; {percent(tint.mean())} of the pixels filled (veiled in cyan, outlined), "
            f"{percent((~has).mean())} without a value (grey)", fontsize=9)
    else:
        ax.set_title(
            f"{Path(cube).name}: newest clear value per pixel, {first} .. {last} ({len(order)} "
            f"date{'s' if len(order) != 1 else ''})\n{what}; {percent(has.mean())} of pixels have a clear value "
            "(grey: none)",
            fontsize=9,
        )
    ax.set_axis_off()
    return save_figure(fig, out, bbox_inches="tight")


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """Save a matplotlib figure as ``path`` (its folder made) and close it: written under a
    temporary name and renamed into place, so a reader never sees half a picture and a symbolic
    link planted at ``path`` is replaced, not written through."""
    import os
    import uuid

    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, **savefig)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def quicklook_path(out: str | Path) -> Path:
    """``X.zarr`` -> ``X.zarr.quicklook.png``: a stage product's quick-look, named after the whole
    product (``X.png`` may be a file of the user's)."""
    return Path(str(out) + ".quicklook.png")


def is_current(png: str | Path, artifact: str | Path) -> bool:
    """True when ``png`` exists and is newer than ``artifact``'s manifest: a reused artifact keeps
    its picture instead of drawing it again."""
    from tasks.checkpoint import manifest_path

    png, manifest = Path(png), manifest_path(artifact)
    return png.exists() and manifest.exists() and png.stat().st_mtime_ns >= manifest.stat().st_mtime_ns


def percent(fraction: float) -> str:
    """A share as a person reads it in a caption: ``0 %``, ``<0.1 %``, ``3.2 %``, ``>99.9 %``,
    ``100 %`` (rounding never says 0 or 100 of a share that is not)."""
    pct = 100.0 * float(fraction)
    if pct <= 0.0 or pct >= 100.0:
        return f"{pct:.0f} %"
    if pct < 0.1:
        return "<0.1 %"
    if pct > 99.9:
        return ">99.9 %"
    return f"{pct:.1f} %"


def artifact_key(text: str) -> str:
    """A Prefect artifact key from free text: lowercase letters, digits and dashes, at most 60."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:60] or "artifact"


def product_key(kind: str, cube: str | Path, out: str | Path) -> str:
    """The artifact key of a stage product: its kind, its cube's name and its own, e.g.
    ``gapfill-planet-filled``. Every cube's stage products have the same file names
    (``<stage dir>/<cube>/filled.zarr``): keyed on the product alone, one cube's picture hid the
    others' in the UI, and a cube whose product was reused never showed its own."""
    def stem(path: str | Path) -> str:
        return Path(path).name.removesuffix(".zarr")

    return artifact_key(f"{kind}-{stem(cube)}-{stem(out)}")


def made_in_task_run(manifest: Any) -> bool:
    """True when ``manifest`` (a stage's :class:`tasks.checkpoint.Manifest`) was written since the
    running Prefect task (this attempt) began: the task made its product, it did not reuse one.
    True outside a task run."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    began = ctx.task_run.start_time if ctx is not None else None
    return began is None or datetime.fromisoformat(manifest.created) >= began


def publish_image(png: str | Path, *, key: str, description: str, fresh: bool, max_pixels: int = 1000) -> bool:
    """Publish ``png`` as a Prefect image artifact under ``key`` when its product is ``fresh`` (made
    in this run) or nothing is published under ``key`` yet. A product a run only reused is not
    published again: a served deployment's hourly run that changes nothing stored its stages'
    quick-looks again each time, base64 in Prefect's database (about 0.5 MB a run on a 150 x 250
    px, 28-date cube; gigabytes a year, never pruned). Returns whether it published."""
    from prefect.artifacts import Artifact, create_image_artifact

    if not fresh and Artifact.get(key) is not None:
        return False
    create_image_artifact(image_url=thumbnail_data_uri(png, max_pixels=max_pixels), key=key, description=description)
    return True


def thumbnail_data_uri(png: str | Path, *, max_pixels: int = 1000) -> str:
    """``png`` as a ``data:`` URI for a Prefect image artifact, scaled down (with antialiasing, so
    titles and tick labels stay legible) to at most ``max_pixels`` on its longer side."""
    from PIL import Image

    with Image.open(png) as img:
        img.load()
        small = img.copy()
    small.thumbnail((max_pixels, max_pixels), Image.Resampling.LANCZOS)  # never enlarges
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _rgba8(color: str) -> tuple[int, int, int, int]:
    """A matplotlib colour (``#rrggbb``, ``#rrggbbaa``, a name) as a GDAL colour-table entry, 0..255."""
    from matplotlib.colors import to_rgba

    r, g, b, a = (round(255 * v) for v in to_rgba(color))
    return r, g, b, a


def colour_table(classes: tuple[int, ...], attrs: dict | None = None) -> dict[int, tuple[int, int, int, int]]:
    """RGBA per class code: the label layer's ``flag_colors`` when it has them, else the official
    NLCD legend (``tasks.legends.NLCD_COLORMAP``), else a colour of the tab20 palette."""
    from matplotlib import colormaps

    from tasks.legends import NLCD_COLORMAP

    table = dict(NLCD_COLORMAP)
    attrs = attrs or {}
    if "flag_colors" in attrs and "flag_values" in attrs:
        for code, col in zip(attrs["flag_values"], attrs["flag_colors"], strict=False):
            table[int(code)] = _rgba8(str(col))
    palette = colormaps["tab20"]
    unknown = [c for c in classes if c not in table]
    for i, c in enumerate(unknown):
        r, g, b = (int(255 * v) for v in palette(i % 20)[:3])
        table[c] = (r, g, b, 255)
    return {c: table[c] for c in classes}


def class_names(classes: tuple[int, ...], attrs: dict | None = None, *, nlcd: bool = True) -> dict[int, str]:
    """Name per class code: the layer's ``flag_meanings`` when it has them, else the NLCD names
    (``nlcd``; off for a legend of another scheme, whose codes may collide with NLCD's), else
    ``"class <code>"``."""
    from tasks.legends import NLCD_CLASSES

    names = dict(NLCD_CLASSES) if nlcd else {}
    attrs = attrs or {}
    if "flag_values" in attrs and "flag_meanings" in attrs:
        from tasks.cube import flag_meaning

        meanings = str(attrs["flag_meanings"]).split()
        for code, m in zip(attrs["flag_values"], meanings, strict=False):
            if not (int(code) in names and flag_meaning(names[int(code)]) == m):  # NLCD's own name: kept as written
                names[int(code)] = m.replace("_", " ")
    return {c: names.get(c, f"class {c}") for c in classes}


def cog_path(out: str | Path) -> Path:
    """``X.zarr`` -> ``X.zarr.tif``: the colour-mapped Cloud-Optimized GeoTIFF of a class-map product
    (labels, classify). The whole name is kept: ``X.tif`` may be the very raster the map was
    trained on."""
    out = Path(out)
    return out.with_name(out.name + ".tif")


def write_class_cog(
    path: str | Path,
    codes: np.ndarray,
    *,
    transform: object,
    crs: object,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    nodata: int = 0,
    names: dict[int, str] | None = None,
) -> Path:
    """Write a class map as a Cloud-Optimized GeoTIFF with a colour table (default: NLCD's).

    ``codes`` is ``(y, x)`` uint8 class codes (``nodata`` where unclassified); ``transform`` an
    ``affine.Affine``, ``crs`` anything rasterio takes. The file is written under a temporary name
    and renamed into place. ``names`` (code -> class name) go into the ``CLASSES`` tag.
    """
    import os
    import uuid

    import rasterio

    from tasks.legends import NLCD_COLORMAP

    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise ValueError(
            f"codes must be a (y, x) uint8 class map; got shape {codes.shape} dtype {codes.dtype} "
            "(cast with .astype(np.uint8))"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    profile = dict(driver="COG", height=codes.shape[0], width=codes.shape[1], count=1, dtype="uint8",
                   crs=crs, transform=transform, nodata=nodata, compress="deflate",
                   blocksize=256, overview_resampling="mode")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(codes, 1)
            dst.write_colormap(1, dict(colormap or NLCD_COLORMAP))
            if names:
                dst.update_tags(CLASSES="; ".join(f"{k}={v}" for k, v in sorted(names.items())))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
