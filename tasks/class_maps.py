"""Class maps (land cover, label rasters) onto a cube's grid: the code that marks "no class" and
the resampling that keeps each class in place. Apart from ``tasks.warp`` so that the stages that
read label rasters (``labels``, ``classify``) do not depend on the catalog and ingest modules."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

__all__ = ["class_fill", "class_resampling", "raster_legend", "target_pixel_scale"]


def class_fill(data: np.ndarray | list[np.ndarray], nodata: float | None) -> int:
    """The code that marks "no class" in a class map (``data``: its codes, or those of several
    files of one map): its declared ``nodata``, else a code the map does not use (255 or the
    dtype's largest, else the smallest free one), so that class 0 stays a class and the area
    outside the map's footprint is not taken for one."""
    if nodata is not None:
        return int(nodata)
    arrays = data if isinstance(data, list) else [data]
    info = np.iinfo(arrays[0].dtype)
    used = np.unique(np.concatenate([np.unique(a) for a in arrays]))
    for code in (255, info.max):
        if info.min <= code <= info.max and code not in used:
            return int(code)
    free = np.setdiff1d(np.arange(max(info.min, 0), min(info.max, 65535) + 1), used)
    if not free.size:
        raise ValueError("the class map uses every code of its data type and declares no nodata; "
                         "give the source a nodata in the catalog")
    return int(free[0])


def target_pixel_scale(src_transform: Affine, src_crs: CRS, dst_transform: Affine, dst_crs: CRS,
                       shape: tuple[int, int]) -> float | None:
    """How many source pixels a target pixel spans along its wider side (below 1: the target is
    finer), measured at the centre of the target grid of ``shape``; None where the source's CRS
    cannot hold that point."""
    from rasterio.warp import transform as transform_points

    row, col = shape[0] / 2, shape[1] / 2  # a target pixel at the grid's centre, in source units
    xs, ys = zip(*(dst_transform * (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (0, 1))), strict=True)
    try:
        sx, sy = transform_points(dst_crs, src_crs, list(xs), list(ys))
    except Exception:  # a point the source's CRS cannot hold (PROJ's errors vary)
        return None
    width, height = math.hypot(sx[1] - sx[0], sy[1] - sy[0]), math.hypot(sx[2] - sx[0], sy[2] - sy[0])
    if not (math.isfinite(width) and math.isfinite(height)):
        return None
    src_w, src_h = math.hypot(src_transform.a, src_transform.d), math.hypot(src_transform.b, src_transform.e)
    return max(width / src_w, height / src_h)


def class_resampling(explicit: str | None, src_transform: Affine, src_crs: CRS, dst_transform: Affine,
                     dst_crs: CRS, shape: tuple[int, int]) -> Resampling:
    """Resampling of a class map: ``explicit`` (the catalog's) when given; else, or when that is
    ``mode``, majority where a target pixel spans several source pixels and nearest where the
    target pixels are finer. There GDAL's mode counts each source pixel a target pixel touches
    once and breaks ties by the first, the one under its top-left corner: the map would move half
    a target pixel south-east (NLCD's 30 m onto a 3 m grid)."""
    if explicit and explicit != "mode":
        return Resampling[explicit]
    scale = target_pixel_scale(src_transform, src_crs, dst_transform, dst_crs, shape)
    return Resampling.nearest if scale is not None and scale <= 1 + 1e-6 else Resampling.mode


def raster_legend(src: Any, codes: Iterable[int] | None = None) -> dict[str, Any]:
    """The legend of an open class raster ``src`` (band 1) as CF ``flag_values`` /
    ``flag_meanings`` / ``flag_colors`` (from its colour table):

    - the classes its ``CLASSES`` tag names (``"1=Forest; 2=Soy Corn"``, as the stages' COGs write
      it, :func:`tasks.quicklook.write_class_cog`);
    - else, given the ``codes`` it holds where it is read and a colour table, those codes, named
      as NLCD's where they all are NLCD codes, else ``class <code>``;
    - else ``{}``.
    """
    from tasks.cube import flag_meanings

    names: dict[int, str] = {}
    for item in str(src.tags().get("CLASSES", "")).split(";"):
        code, sep, name = item.strip().partition("=")
        if sep and code.strip().isdigit() and name.strip():
            names[int(code)] = name.strip()
    try:
        table = src.colormap(1)
    except ValueError:  # no colour table
        table = None
    if not names and codes is not None and table:
        from tasks.legends import NLCD_CLASSES

        present = sorted({int(c) for c in codes})
        nlcd = bool(present) and set(present) <= set(NLCD_CLASSES)
        names = {c: NLCD_CLASSES[c] if nlcd else f"class {c}" for c in present}
    if not names:
        return {}
    legend: dict[str, Any] = {"flag_values": sorted(names),
                              "flag_meanings": flag_meanings(names[c] for c in sorted(names))}
    if table:
        legend["flag_colors"] = ["#{:02x}{:02x}{:02x}".format(*table.get(c, (0, 0, 0, 255))[:3]) for c in sorted(names)]
    return legend
