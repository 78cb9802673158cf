"""The built-in sample area: a seeded generator of Planet-, MODIS- and NLCD-like rasters with truth.

Everything starts from one full-resolution (3 m) land-cover map of an Iowa-like landscape (warped
Voronoi fields of corn and soybean, pasture and hay, section-line roads, a meandering river with
riparian forest and wetlands, a creek with grass buffers, a village, farmsteads with windbreaks,
farm ponds). From it:

- ``planet/``: PlanetScope-like 4-band surface reflectance (uint16, reflectance x 10000, nodata 0)
  and an 8-band UDM2-like sidecar, EPSG:32615 at 3 m. Spectra are a linear mixture of green
  vegetation, dry vegetation and a background (soil, residue, water, impervious) whose fractions
  follow per-class, per-field and per-pixel phenology; field-scale and pixel-scale texture, a
  sensor PSF, soil moisture after rain, water turbidity, per-scene calibration, column striping,
  sensor noise, clouds with thin edges and cloud shadows, haze, partial footprints, dates covered by
  two frames, and sub-pixel to ~1 pixel misregistration. The UDM2 is imperfect on purpose (thin
  cloud edges missed, bright roofs flagged as cloud, water flagged as shadow).
- ``modis/``: MOD11A1-like daily land surface temperature and QC in the MODIS sinusoidal projection
  (~1 km): a seasonal trend, regional weather (a common AR(1) swing and a few large-scale patterns
  with their own AR(1) daily coefficients, felt by land cover), land-cover baselines and
  phenology, an overpass-time (diurnal heating) and view-angle effect, soil moisture after rain, a
  small mesoscale residual, retrieval noise (``LST_NOISE_K``), cloud gaps, cold cloud-edge
  contamination (large biases mostly masked, small ones mostly passed) and injected compact
  thermal anomalies (a few pixels, 1-3 days, 3-8 K).
- ``nlcd/``: an NLCD-like land-cover raster, EPSG:5070 at 30 m on NLCD's own lattice, the 3 m map
  aggregated by majority with some class confusion, the official colour map and class names.
- ``truth/``: ``planet_truth.zarr`` (clear surface reflectance, full-resolution land cover, true
  cloud and shadow mask) and ``modis_truth.zarr`` (clear LST without retrieval noise, anomaly mask
  and magnitude).

Geometry. Every Planet scene is written on the same 3 m lattice as :data:`PLANET_ORIGIN` (its
origin is a whole number of pixels from it); a scene that covers only part of the area is written
over the bounding box of its footprint, so file extents differ between scenes. The misregistration
is in the content: each scene's image is shifted by a random sub-pixel to ~1 pixel offset.

Truth. ``planet_truth.zarr`` holds the surface as an ideal sensor would see it through the PSF on
the true grid: no atmosphere, clouds, noise, calibration error or misregistration. It has one
time step per acquisition DATE (dates covered by two frames have one entry).

Example
-------
>>> area = generate_sample_area("/tmp/sample", size="small", seed=0)  # doctest: +SKIP
>>> sorted(p.name for p in area.planet_dir.iterdir())[:1]  # doctest: +SKIP
['PSScene_20190414_155212_1012_3B_AnalyticMS_SR.tif']
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points
from rasterio.windows import Window
from scipy import ndimage

from tasks._sample_textures import (
    double_logistic,
    fractal_noise,
    mode_aggregate,
    smooth_noise,
    warped_voronoi,
)
from tasks.cube import flag_meanings
from tasks.legends import NLCD_CLASSES, NLCD_COLORMAP

__all__ = [
    "CLASSES",
    "CLASS_NAMES",
    "NLCD_COLORMAP",
    "SIZES",
    "Grid",
    "SampleArea",
    "SizeSpec",
    "generate_sample_area",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2"  # 2: LST background of a few weather modes, sensor noise, stronger anomalies
MANIFEST = "sample_area.json"

# --- geometry -------------------------------------------------------------------------------------
PLANET_CRS = "EPSG:32615"  # UTM 15N, central Iowa (Ames is at ~450 km E, 4650 km N)
PLANET_RES = 3.0
PLANET_ORIGIN = (450000.0, 4650000.0)  # (xmin, ymax) of every size; scenes sit on this lattice
MODIS_CRS = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
MODIS_RES = 926.625433055833
MODIS_TILE = "h11v04"  # the tile that holds central Iowa
_MODIS_TILE_SIZE = 1111950.5197665554
MODIS_TILE_ORIGIN = (-20015109.355798 + 11 * _MODIS_TILE_SIZE, 10007554.677899 - 4 * _MODIS_TILE_SIZE)
_MODIS_CENTRE_PX = (961, 53)  # (row, col) in h11v04 of the Planet area
NLCD_CRS = "EPSG:5070"
NLCD_RES = 30.0
_NLCD_LATTICE = 15.0  # NLCD pixel edges sit at 15 m modulo 30 m in CONUS Albers
NLCD_NODATA = 250
YEAR = 2019
LST_NOISE_K = 0.35  # MODIS-like LST retrieval noise (std, K), added to the stored values only
_LST_WEATHER_MODES = np.array([1.6, 1.1, 0.8, 0.6])  # std (K) of the regional weather patterns

# --- classes --------------------------------------------------------------------------------------
CLASS_NAMES: dict[int, str] = NLCD_CLASSES  # the 15 NLCD classes of the source deck
CLASSES: tuple[int, ...] = tuple(NLCD_CLASSES)
_IDX = {c: i for i, c in enumerate(CLASSES)}
_SOY = len(CLASSES)  # pseudo-class index for soybean fields (class 82)
_HAY = len(CLASSES) + 1  # pseudo-class index for hay fields (class 81, cut in summer)
_OATS = len(CLASSES) + 2  # small grain (class 82): early green-up, harvested in July
_LATE = len(CLASSES) + 3  # late-planted soybean (class 82; 2019 was a wet spring)
_CROPS = (_IDX[82], _SOY, _OATS, _LATE)

BANDS = ("blue", "green", "red", "nir")
# Endmember reflectance (blue, green, red, nir).
_GREEN = {
    "corn": (0.030, 0.070, 0.036, 0.42), "soy": (0.028, 0.076, 0.032, 0.50),
    "grass": (0.034, 0.074, 0.044, 0.38), "tree": (0.022, 0.050, 0.028, 0.34),
    "conifer": (0.018, 0.040, 0.022, 0.24),
}
_DRY = np.array((0.068, 0.100, 0.140, 0.270), np.float32)
_BACK = {
    "soil": (0.055, 0.080, 0.110, 0.170), "water": (0.045, 0.055, 0.040, 0.018),
    "urban": (0.110, 0.120, 0.130, 0.150), "sand": (0.140, 0.190, 0.240, 0.290),
    "litter": (0.040, 0.060, 0.080, 0.140),
}
_RESIDUE = np.array((0.085, 0.115, 0.145, 0.215), np.float32)
_SEDIMENT = np.array((0.020, 0.040, 0.045, 0.012), np.float32)
_CLOUD = np.array((0.55, 0.56, 0.58, 0.60), np.float32)
_SHADOW_T = np.array((0.42, 0.36, 0.32, 0.30), np.float32)  # sunlit share left in full shadow
_HAZE = np.array((1.0, 0.72, 0.48, 0.22), np.float32)

# Phenology per (pseudo-)class: green endmember, background, cover (cmin, cmax, rise, fall, rates),
# greenness (gmin, rise, fall, rates). Day-of-year units; per-field and per-pixel shifts are added.
_PHENO_COLS = ("cmin", "cmax", "c_rise", "c_fall", "rc_rise", "rc_fall",
               "gmin", "g_rise", "g_fall", "rg_rise", "rg_fall")
_PHENO: dict[int, tuple[str, str, tuple[float, ...]]] = {
    _IDX[11]: ("grass", "water", (0.0, 0.07, 195, 250, 0.1, 0.1, 0.6, 0, 400, 1, 1)),
    _IDX[21]: ("grass", "urban", (0.72, 0.72, 0, 400, 1, 1, 0.45, 112, 292, 0.1, 0.06)),
    _IDX[22]: ("grass", "urban", (0.42, 0.42, 0, 400, 1, 1, 0.45, 112, 292, 0.1, 0.06)),
    _IDX[23]: ("grass", "urban", (0.18, 0.18, 0, 400, 1, 1, 0.45, 112, 292, 0.1, 0.06)),
    _IDX[24]: ("grass", "urban", (0.05, 0.05, 0, 400, 1, 1, 0.45, 112, 292, 0.1, 0.06)),
    _IDX[31]: ("grass", "sand", (0.03, 0.03, 0, 400, 1, 1, 0.3, 130, 250, 0.1, 0.1)),
    _IDX[41]: ("tree", "litter", (0.95, 0.95, 0, 400, 1, 1, 0.05, 128, 288, 0.15, 0.1)),
    _IDX[42]: ("conifer", "litter", (0.9, 0.9, 0, 400, 1, 1, 0.85, 0, 400, 1, 1)),
    _IDX[43]: ("tree", "litter", (0.93, 0.93, 0, 400, 1, 1, 0.45, 128, 288, 0.15, 0.1)),
    _IDX[52]: ("tree", "soil", (0.45, 0.8, 122, 320, 0.08, 0.05, 0.3, 125, 285, 0.12, 0.08)),
    _IDX[71]: ("grass", "soil", (0.5, 0.85, 118, 325, 0.07, 0.05, 0.35, 0, 248, 1, 0.04)),
    _IDX[81]: ("grass", "soil", (0.55, 0.95, 112, 320, 0.08, 0.05, 0.3, 0, 285, 1, 0.08)),
    _IDX[82]: ("corn", "soil", (0.02, 0.96, 166, 290, 0.09, 0.3, 0.0, 0, 248, 1, 0.08)),
    _IDX[90]: ("tree", "water", (0.9, 0.9, 0, 400, 1, 1, 0.08, 126, 285, 0.15, 0.1)),
    _IDX[95]: ("grass", "water", (0.3, 0.9, 138, 320, 0.07, 0.05, 0.2, 0, 265, 1, 0.05)),
    _SOY: ("soy", "soil", (0.02, 0.96, 178, 278, 0.1, 0.3, 0.0, 0, 256, 1, 0.14)),
    _HAY: ("grass", "soil", (0.55, 0.95, 112, 320, 0.08, 0.05, 0.3, 0, 285, 1, 0.08)),
    _OATS: ("grass", "soil", (0.02, 0.9, 122, 203, 0.1, 0.4, 0.0, 0, 180, 1, 0.12)),
    _LATE: ("soy", "soil", (0.02, 0.93, 196, 292, 0.1, 0.3, 0.0, 0, 268, 1, 0.12)),
}
_N_PHENO = len(CLASSES) + 4
# Texture knobs, tuned with benchmarks/realism.py so the sample is no more low-rank or smooth than
# real data (see its report).
FIELD_SPACING_M = 120.0  # mean distance between field seeds
PIXEL_DELAY_DAYS = 12.0  # std of the per-pixel (rough, beta 1) development delay
STATIC_TEXTURE = 0.2  # relative std of the per-pixel canopy vigour
DYNAMIC_TEXTURE = 0.5  # amplitude of the date-specific canopy texture (x 4c(1-c): most at half cover)
DYNAMIC_MEMORY = 0.5  # correlation of that texture between consecutive dates
_SATELLITES = ("1012", "0f4e", "1050", "2262", "2416", "103c", "0e26", "1039")


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, pixel size and bounds ``(xmin, ymin, xmax, ymax)``."""

    crs: str
    resolution: float
    bounds: tuple[float, float, float, float]

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        xmin, ymin, xmax, ymax = self.bounds
        return round((ymax - ymin) / self.resolution), round((xmax - xmin) / self.resolution)

    @property
    def transform(self) -> Affine:
        """The affine transform of the upper-left pixel corner."""
        return Affine(self.resolution, 0.0, self.bounds[0], 0.0, -self.resolution, self.bounds[3])


@dataclass(frozen=True)
class SampleArea:
    """Where the sample area was written, and its grids and dates."""

    root: Path
    planet_dir: Path
    modis_dir: Path
    nlcd_path: Path
    truth_dir: Path
    planet_grid: Grid
    modis_grid: Grid
    planet_dates: tuple[datetime, ...]
    modis_dates: tuple[datetime, ...]
    nlcd_grid: Grid | None = None


@dataclass(frozen=True)
class SizeSpec:
    """Size of a sample area: Planet pixels per side and dates, MODIS pixels per side and days."""

    planet_px: int
    n_dates: int
    modis_px: int
    modis_days: int


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec(planet_px=64, n_dates=6, modis_px=24, modis_days=16),
    "demo": SizeSpec(planet_px=512, n_dates=12, modis_px=64, modis_days=44),
    "bench": SizeSpec(planet_px=4096, n_dates=24, modis_px=96, modis_days=88),
}


# --- helpers --------------------------------------------------------------------------------------
def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _affine_map(src: str, dst: str, bounds: tuple[float, float, float, float]):
    """A least-squares affine approximation of ``src -> dst`` over ``bounds`` (sub-metre here)."""
    xmin, ymin, xmax, ymax = bounds
    gx, gy = np.meshgrid(np.linspace(xmin, xmax, 7), np.linspace(ymin, ymax, 7))
    tx, ty = warp_points(src, dst, gx.ravel().tolist(), gy.ravel().tolist())
    design = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.stack([tx, ty], axis=1), rcond=None)

    def apply(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (coef[0, 0] * x + coef[1, 0] * y + coef[2, 0],
                coef[0, 1] * x + coef[1, 1] * y + coef[2, 1])

    return apply


def _gtiff_profile(**kw) -> dict:
    return dict(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="zstd",
                predictor=2, num_threads="ALL_CPUS", **kw)


# --- land cover -----------------------------------------------------------------------------------
@dataclass
class _Landscape:
    """Full-resolution land cover on the extended grid plus what the spectra need."""

    lc: np.ndarray  # (H, W) uint8 NLCD codes
    pheno: np.ndarray  # (H, W) uint8 phenology index (class index, soybean, hay)
    field: np.ndarray  # (H, W) int32 polygon id
    n_fields: int
    margin: int  # pixels of the extended grid beyond the Planet area on each side


def _landscape(n: int, rng: np.random.Generator) -> _Landscape:
    """Draw the 3 m land cover of an Iowa-like landscape around an ``n x n`` Planet area."""
    side = n * PLANET_RES
    margin = math.ceil((90.0 + 0.04 * side) / PLANET_RES)
    m = n + 2 * margin
    shape = (m, m)
    # local metres: u east, v south of the Planet origin, at pixel centres
    coord = (np.arange(m, dtype=np.float32) - margin + 0.5) * PLANET_RES
    u, v = coord[None, :], coord[:, None]

    field = warped_voronoi(shape, FIELD_SPACING_M / PLANET_RES, rng, warp_px=9.0)
    n_fields = int(field.max()) + 1
    kind = rng.choice([82, 81, 71, 52], size=n_fields, p=[0.80, 0.16, 0.03, 0.01])
    lc = np.array([_IDX[int(k)] for k in kind], np.uint8)[field]
    topo = smooth_noise(shape, 3.0, rng, factor=8)
    patch = smooth_noise(shape, 2.5, rng, factor=4)
    lc[(topo < -2.1) & (patch > 0.0)] = _IDX[95]  # wet depressions in fields (prairie potholes)

    def paint(mask: np.ndarray, code: int) -> None:
        lc[mask] = _IDX[code]

    # grassed waterways along the drainage lines inside crop fields, and isolated trees
    drain = smooth_noise(shape, 3.0, rng, factor=4)
    grad = np.hypot(*np.gradient(drain))
    paint((np.abs(drain) < 1.8 * grad) & (topo < -0.4) & (lc == _IDX[82]), 71)
    paint((fractal_noise(shape, 0.5, rng) > 3.3) & (patch > 0.5), 41)

    # section-line roads every mile, gravel or paved, with grassy ditches
    for off, axis in ((700.0, u), (900.0, v)):
        d = np.abs((axis - off + 804.67) % 1609.34 - 804.67)
        paint(np.broadcast_to(d < 12.0, shape), 21)
        paint(np.broadcast_to(d < 4.5, shape), 22)

    # a meandering river with riparian woods and wetlands, a sand bar here and there
    wl = min(1400.0, 0.9 * side + 300.0)
    amp = min(0.12 * side, 350.0)
    phase = rng.uniform(0, 2 * np.pi)
    prof = ndimage.gaussian_filter1d(fractal_noise((1, m), 3.0, rng)[0], 8.0)
    vc = 0.68 * side + amp * np.sin(2 * np.pi * u[0] / wl + phase) + 25.0 * prof / prof.std()
    slope = ndimage.gaussian_filter1d(np.gradient(vc, PLANET_RES), 10.0)
    dist = np.abs(v - vc[None, :]) / np.sqrt(1.0 + slope**2)[None, :]
    width = 24.0 + 6.0 * patch
    ripar = 45.0 + 40.0 * np.clip(smooth_noise(shape, 3.0, rng, factor=8) + 1.0, 0, None)
    mix = smooth_noise(shape, 2.0, rng, factor=2)
    wood = dist < ripar
    paint(wood & (mix < -1.5), 52)
    paint(wood & (mix >= -1.5), 41)
    paint(wood & (mix > 1.2), 43)
    paint((dist < ripar * 1.4) & (topo < -0.8) & (mix < 0.5) & ~wood, 95)
    paint((dist < width / 2 + 18.0) & (mix > -0.8), 90)
    paint((dist < width / 2 + 18.0) & (mix <= -0.8), 95)
    paint(dist < width / 2, 11)
    paint((dist < width / 2) & (np.abs(dist - width / 4) < 5.0) & (mix > 1.4), 31)

    # a creek running roughly north-south with grass buffers and a few trees
    prof2 = ndimage.gaussian_filter1d(fractal_noise((m, 1), 3.0, rng)[:, 0], 4.0)
    uc = 0.22 * side + 30.0 * prof2 / prof2.std() + 0.08 * side * np.sin(2 * np.pi * coord / 900.0)
    d2 = np.abs(u - uc[:, None])
    paint((d2 < 22.0), 71)
    paint((d2 < 14.0) & (mix > 0.6), 41)
    paint(d2 < 3.5, 11)

    # a village in the north-east with streets, parks and yard trees
    cu, cv = 0.85 * side, 0.12 * side
    radius = min(0.28 * side, 900.0)
    r = np.sqrt((u - cu) ** 2 + (v - cv) ** 2) / radius
    inten = 1.0 - r + 0.22 * patch
    town = inten > 0.05
    lc[town & (inten <= 0.3)] = _IDX[21]
    lc[town & (inten > 0.3)] = _IDX[22]
    lc[town & (inten > 0.55)] = _IDX[23]
    lc[town & (inten > 0.8)] = _IDX[24]
    streets = town & ((np.abs((u - cu) % 95.0) < 4.5) | (np.abs((v - cv) % 95.0) < 4.5))
    paint(streets & (inten <= 0.55), 22)
    paint(streets & (inten > 0.55), 23)
    paint(town & (mix > 1.3) & (inten < 0.6), 41)

    # farmsteads: a yard and buildings with an L-shaped windbreak, farm ponds
    area_km2 = (m * PLANET_RES / 1000.0) ** 2
    for _ in range(rng.poisson(0.8 * area_km2)):
        fu, fv = rng.uniform(0, m * PLANET_RES, 2) - margin * PLANET_RES
        if np.hypot(fu - cu, fv - cv) < radius * 1.2:
            continue
        du, dv = u - fu, v - fv
        yard = (np.abs(du) < 35) & (np.abs(dv) < 35)
        paint(yard, 21)
        paint(yard & (np.abs(du) < 14) & (np.abs(dv) < 12), 22)
        paint(yard & (np.abs(du - 8) < 4) & (np.abs(dv + 6) < 4), 23)
        brk = ((du > -50) & (du < -35) & (dv > -50) & (dv < 35)) | (
            (dv > -50) & (dv < -35) & (du > -50) & (du < 35))
        paint(brk, 42 if rng.random() < 0.5 else 41)
    for _ in range(rng.poisson(0.5 * area_km2)):
        pu, pv = rng.uniform(0, m * PLANET_RES, 2) - margin * PLANET_RES
        rr = np.hypot(u - pu, v - pv) / rng.uniform(10, 28)
        paint(rr < 1.6, 95)
        paint(rr < 1.0, 11)

    pheno = lc.copy()
    # crop calendars per field; some fields strip-cropped along the contours (NE Iowa)
    crop = rng.choice(np.array([_IDX[82], _SOY, _LATE, _OATS]), size=n_fields, p=[0.45, 0.37, 0.11, 0.07])
    other = np.where(crop == _IDX[82], _SOY, _IDX[82])
    strips = rng.random(n_fields) < 0.2
    odd = (np.floor(topo * 6.0 + 0.7 * drain) % 2).astype(bool)
    cropped = lc == _IDX[82]
    pheno[cropped] = np.where(strips[field] & odd, other[field], crop[field])[cropped]
    hay = rng.random(n_fields) < 0.6
    pheno[(lc == _IDX[81]) & hay[field]] = _HAY
    codes = np.array(CLASSES, np.uint8)
    return _Landscape(lc=codes[lc], pheno=pheno, field=field, n_fields=n_fields, margin=margin)


# --- Planet surface -------------------------------------------------------------------------------
class _PlanetSurface:
    """Static per-pixel state of the Planet area; ``render(doy, ...)`` gives the clear surface."""

    def __init__(self, land: _Landscape, n: int, rng: np.random.Generator) -> None:
        k = land.margin
        self.n = n
        self.lc = land.lc[k:k + n, k:k + n]
        self.pc = land.pheno[k:k + n, k:k + n]
        fid = land.field[k:k + n, k:k + n]
        nf, shape = land.n_fields, (n, n)
        table = np.array([_PHENO[i][2] for i in range(_N_PHENO)], np.float32)  # (P, 11)
        self.table = {name: table[:, j] for j, name in enumerate(_PHENO_COLS)}
        # per-field timing (days), vigour and spectral variation; per-pixel growth delay
        f_shift = rng.normal(0, 7.0, nf).astype(np.float32)
        f_harv = rng.normal(0, 11.0, nf).astype(np.float32)
        f_sen = rng.normal(0, 6.0, nf).astype(np.float32)
        delay = (6.0 * fractal_noise(shape, 2.2, rng, outer_px=120)
                 + PIXEL_DELAY_DAYS * fractal_noise(shape, 1.0, rng))
        self.c_rise = table[self.pc, 2] + f_shift[fid] + delay
        self.c_fall = table[self.pc, 3] + f_harv[fid]
        self.g_fall = table[self.pc, 8] + f_sen[fid] + 0.6 * delay
        self.g_rise = table[self.pc, 7] + 0.5 * f_shift[fid]
        vigour = rng.uniform(0.82, 1.0, nf).astype(np.float32)[fid]
        self.cmax = np.minimum(1.0, table[self.pc, 1] * vigour
                               * (1 + STATIC_TEXTURE * fractal_noise(shape, 1.3, rng, outer_px=60)))
        self.cut_days = np.stack([155 + rng.normal(0, 6, nf), 196 + rng.normal(0, 7, nf),
                                  240 + rng.normal(0, 8, nf)]).astype(np.float32)[:, fid]
        self.hay = self.pc == _HAY
        self.dynamic: np.ndarray | None = None  # date-to-date canopy texture, AR(1) over dates
        # tramlines (planter / sprayer passes, 15 m) in crop fields, visible at low cover
        row_dir = rng.random(nf) < 0.5
        ii, jj = np.indices(shape, dtype=np.float32)
        pos = np.where(row_dir[fid], ii, jj) * PLANET_RES + rng.uniform(0, 15, nf)[fid]
        self.cover_crop = np.where(np.isin(self.pc, _CROPS) & (rng.random(nf) < 0.18)[fid],
                                   rng.uniform(0.3, 0.7, nf).astype(np.float32)[fid], 0.0)
        self.burndown = (128 + rng.normal(0, 8, nf)).astype(np.float32)[fid]
        self.rows = np.where(np.isin(self.pc, _CROPS),
                             0.5 + 0.5 * np.cos(2 * np.pi * pos / 15.0), 0.0).astype(np.float32)
        # endmembers per pixel and band, with field- and pixel-scale variation
        fine = fractal_noise(shape, 1.0, rng)
        soil_tex = fractal_noise(shape, 2.0, rng, outer_px=100)
        residue = rng.uniform(0.0, 0.7, nf).astype(np.float32)[fid] * (0.8 + 0.2 * fine)
        houses = np.repeat(np.repeat(rng.normal(0, 1, (n // 4 + 1, n // 4 + 1)), 4, 0), 4, 1)
        self.turbid = np.clip(smooth_noise(shape, 3.0, rng, factor=8) + 1.0, 0, None)
        back_kind = np.array([_PHENO[i][1] for i in range(_N_PHENO)])[self.pc]
        green_kind = np.array([_PHENO[i][0] for i in range(_N_PHENO)])[self.pc]
        self.soil = back_kind == "soil"
        self.water = back_kind == "water"
        f_gain = 1 + rng.normal(0, 0.05, (4, nf)).astype(np.float32)
        self.green = np.empty((4, n, n), np.float32)
        self.dry = np.empty((4, n, n), np.float32)
        self.back = np.empty((4, n, n), np.float32)
        for b in range(4):
            g = np.zeros(shape, np.float32)
            for name, spec in _GREEN.items():
                g[green_kind == name] = spec[b]
            self.green[b] = g * f_gain[b][fid] * (1 + 0.05 * fine)
            self.dry[b] = _DRY[b] * (1 + 0.08 * fine) * f_gain[b][fid]
            bk = np.zeros(shape, np.float32)
            for name, spec in _BACK.items():
                bk[back_kind == name] = spec[b]
            bk = np.where(self.soil, ((1 - residue) * bk + residue * _RESIDUE[b])
                          * (1 + 0.2 * soil_tex), bk)
            bk = np.where(back_kind == "urban", bk * np.exp(0.35 * houses[:n, :n]), bk)
            self.back[b] = bk * (1 + 0.03 * fine)

    def fractions(self, doy: float) -> tuple[np.ndarray, np.ndarray]:
        """Canopy cover and green share of the canopy, ``(n, n)`` float32 each."""
        t = self.table
        pc = self.pc
        c = t["cmin"][pc] + (self.cmax - t["cmin"][pc]) * double_logistic(
            doy, self.c_rise, self.c_fall, t["rc_rise"][pc], t["rc_fall"][pc])
        cut = np.ones_like(c)
        for k in range(self.cut_days.shape[0]):
            since = doy - self.cut_days[k]
            cut *= np.where(since >= 0, 1 - 0.6 * np.exp(-np.maximum(since, 0) / 14.0), 1.0)
        c = np.where(self.hay, c * cut, c)
        c = np.maximum(c, self.cover_crop * double_logistic(doy, 95.0, self.burndown, 0.1, 0.25))
        c = c * (1 - 0.25 * self.rows * (1 - c))
        g = t["gmin"][pc] + (1 - t["gmin"][pc]) * double_logistic(
            doy, self.g_rise, self.g_fall, t["rg_rise"][pc], t["rg_fall"][pc])
        return c.astype(np.float32), g.astype(np.float32)

    def render(self, doy: float, rng: np.random.Generator) -> np.ndarray:
        """Clear surface reflectance seen through the PSF, ``(4, n, n)`` float32."""
        c, g = self.fractions(doy)
        shape = (self.n, self.n)
        # what changes from date to date at field scale and below: uneven growth, stress patches
        fresh = fractal_noise(shape, 1.6, rng, outer_px=80)
        self.dynamic = fresh if self.dynamic is None else (
            DYNAMIC_MEMORY * self.dynamic + math.sqrt(1 - DYNAMIC_MEMORY**2) * fresh)
        c = np.clip(c + DYNAMIC_TEXTURE * 4 * c * (1 - c) * self.dynamic, 0, 1)
        g = np.clip(g * (1 + 0.5 * DYNAMIC_TEXTURE * fractal_noise(shape, 2.0, rng, outer_px=80)), 0, 1)
        wet = rng.uniform(0, 1) ** 2 * np.clip(1 + 0.5 * smooth_noise(shape, 3.0, rng, factor=16), 0, 2)
        turb = rng.uniform(0, 1.5)
        out = np.empty((4, *shape), np.float32)
        for b in range(4):
            back = np.where(self.soil, self.back[b] * (1 - 0.28 * wet), self.back[b])
            back = np.where(self.water, back + turb * self.turbid * _SEDIMENT[b], back)
            refl = c * (g * self.green[b] + (1 - g) * self.dry[b]) + (1 - c) * back
            out[b] = ndimage.gaussian_filter(refl, 0.55, mode="nearest")
        return out


# --- Planet scenes --------------------------------------------------------------------------------
def _planet_dates(n_dates: int, rng: np.random.Generator) -> list[datetime]:
    first, last = 100, 293  # 10 April .. 20 October
    span = last - first + 1
    if not 1 <= n_dates <= span:
        raise ValueError(f"n_dates must be in [1, {span}] (one growing season); got n_dates={n_dates}")
    edges = np.linspace(0, span, n_dates + 1)
    days = [first + int(rng.integers(math.ceil(a), max(math.ceil(a) + 1, math.floor(b))))
            for a, b in zip(edges[:-1], edges[1:], strict=True)]
    out = []
    for d in days:
        secs = int(rng.integers(15 * 3600 + 40 * 60, 17 * 3600))
        out.append(datetime(YEAR, 1, 1) + timedelta(days=d - 1, seconds=secs))
    return out


def _footprints(n: int, kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Boolean footprints of the scenes of one date: 'full', 'partial' or 'two' frames."""
    ii, jj = np.indices((n, n), dtype=np.float32)
    tilt = np.tan(np.radians(rng.uniform(6, 14))) * rng.choice([-1, 1])
    if kind == "full":
        return [np.ones((n, n), bool)]
    if kind == "partial":  # the side edge of a strip: a near north-south line
        edge = rng.uniform(0.3, 0.75) * n + tilt * (ii - n / 2)
        return [jj < edge] if rng.random() < 0.5 else [jj >= edge]
    edge = rng.uniform(0.3, 0.7) * n + tilt * (jj - n / 2)  # frame boundary across the strip
    overlap = rng.uniform(4, 14)
    return [ii < edge + overlap / 2, ii >= edge - overlap / 2]


def _clouds(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Cloud opacity, shadow strength and haze (each ``(n, n)``), and the cloud fraction drawn."""
    clear_day = rng.random() < 0.35
    frac = rng.uniform(0.0, 0.02) if clear_day else rng.uniform(0.05, 0.55)
    disp_m = rng.uniform(500, 1500) / math.tan(math.radians(rng.uniform(52, 65)))
    az = math.radians(rng.uniform(300, 335))  # shadow points north-west of its cloud
    dy, dx = int(round(-disp_m * math.cos(az) / PLANET_RES)), int(round(disp_m * math.sin(az) / PLANET_RES))
    pad = max(abs(dy), abs(dx)) + 2
    big = (n + 2 * pad, n + 2 * pad)
    field = smooth_noise(big, 3.2, rng, factor=4) + 0.3 * smooth_noise(big, 2.0, rng, factor=2)
    thr = float(np.quantile(field[::4, ::4], 1.0 - frac)) if frac > 0.005 else np.inf
    opacity = np.clip((field - thr) / 0.7, 0.0, 1.0) ** 0.8
    cloud = opacity[pad:pad + n, pad:pad + n]
    shadow = opacity[pad - dy:pad - dy + n, pad - dx:pad - dx + n]
    haze_level = 0.0 if rng.random() < 0.6 else rng.uniform(0.2, 1.0)
    haze = np.clip(haze_level + 0.5 * smooth_noise((n, n), 3.5, rng, factor=8), 0, None)
    haze = haze + 1.5 * np.clip(field[pad:pad + n, pad:pad + n] - thr + 0.5, 0, 0.5)  # halo
    return cloud.astype(np.float32), shadow.astype(np.float32), haze.astype(np.float32), frac


def _observe(truth: np.ndarray, cloud: np.ndarray, shadow: np.ndarray, haze: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Top-of-canopy reflectance as the sensor records it (before misregistration)."""
    gain = 1 + rng.normal(0, 0.03, 4).astype(np.float32)
    offset = rng.normal(0, 0.004, 4).astype(np.float32)
    obs = np.empty_like(truth)
    for b in range(4):
        r = truth[b] * gain[b] + offset[b] + 0.035 * haze * _HAZE[b]
        r = r * (1 - shadow * (1 - _SHADOW_T[b]))
        r = r * (1 - cloud) + cloud * _CLOUD[b] * (0.85 + 0.3 * cloud)
        obs[b] = r
    return obs


def _add_noise(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = np.array((0.008, 0.008, 0.009, 0.014), np.float32)
    n: int = obs.shape[-1]
    for b in range(4):
        stripes = rng.normal(0, 0.002, n).astype(np.float32)[None, :]
        noise = rng.standard_normal(obs.shape[1:], dtype=np.float32)
        obs[b] += stripes + noise * np.sqrt(sigma[b] ** 2 + (0.03 * np.abs(obs[b])) ** 2)
    return obs


def _udm2(cloud: np.ndarray, shadow: np.ndarray, haze: np.ndarray, obs: np.ndarray,
          water: np.ndarray, foot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An 8-band UDM2-like mask, imperfect like the real one. ``(8, n, n)`` uint8."""
    n = cloud.shape[0]
    wobble = 0.12 * fractal_noise((n, n), 1.5, rng)
    det_cloud = ndimage.binary_opening((cloud + wobble) > 0.38, iterations=1)
    bright = (obs[0] > 0.13) & (obs[3] < 0.3) & (smooth_noise((n, n), 2.5, rng, factor=4) > 0.8)
    det_cloud |= bright  # bright roofs and bare soil taken for cloud
    det_shadow = ((shadow + wobble) > 0.45) & ~det_cloud
    if rng.random() < 0.5:
        det_shadow |= water & (obs[3] < 0.05) & ~det_cloud  # dark water taken for shadow
    heavy = (haze > 1.3) & ~det_cloud & ~det_shadow
    light = (haze > 0.75) & ~heavy & ~det_cloud & ~det_shadow
    clear = foot & ~(det_cloud | det_shadow | heavy | light)
    conf = 100 - 55 * np.exp(-(((cloud + wobble) - 0.38) / 0.15) ** 2) - 8 * np.abs(wobble) / 0.12
    udm = np.zeros((8, n, n), np.uint8)
    udm[0] = clear
    udm[2] = det_shadow
    udm[3] = light
    udm[4] = heavy
    udm[5] = det_cloud
    udm[6] = np.clip(conf, 0, 100).astype(np.uint8)
    udm[7] = det_cloud.astype(np.uint8) << 1
    udm[:7, ~foot] = 0
    udm[7, ~foot] = 1  # blackfill
    return udm


def _write_scene(dirpath: Path, stem: str, obs: np.ndarray, udm: np.ndarray, foot: np.ndarray,
                 grid: Grid, when: datetime, sat: str) -> None:
    rows, cols = np.nonzero(foot.any(axis=1))[0], np.nonzero(foot.any(axis=0))[0]
    win = Window(cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    sl = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
    transform = rasterio.windows.transform(win, grid.transform)
    dn = np.clip(np.round(obs[:, sl[0], sl[1]] * 10000.0), 1, 65535).astype(np.uint16)
    dn[:, ~foot[sl]] = 0
    stamp = when.strftime("%Y:%m:%d %H:%M:%S")
    common = dict(width=int(win.width), height=int(win.height), crs=CRS.from_string(grid.crs),
                  transform=transform)
    with rasterio.open(dirpath / f"{stem}_3B_AnalyticMS_SR.tif", "w",
                       **_gtiff_profile(count=4, dtype="uint16", nodata=0, **common)) as dst:
        dst.write(dn)
        dst.descriptions = BANDS
        dst.update_tags(TIFFTAG_DATETIME=stamp, acquired=when.isoformat() + "Z", satellite_id=sat,
                        product="PSScene 3B AnalyticMS_SR (synthetic)", reflectance_scale="0.0001")
    with rasterio.open(dirpath / f"{stem}_3B_udm2.tif", "w",
                       **_gtiff_profile(count=8, dtype="uint8", **common)) as dst:
        dst.write(udm[:, sl[0], sl[1]])
        dst.descriptions = ("clear", "snow", "shadow", "light haze", "heavy haze", "cloud",
                            "confidence", "udm1")
        dst.update_tags(TIFFTAG_DATETIME=stamp, acquired=when.isoformat() + "Z", satellite_id=sat)


# --- NLCD -----------------------------------------------------------------------------------------
def _write_nlcd(path: Path, land: _Landscape, n: int, rng: np.random.Generator) -> Grid:
    x0, y1 = PLANET_ORIGIN
    side = n * PLANET_RES
    k = land.margin
    to_albers = _affine_map(PLANET_CRS, NLCD_CRS, (x0 - k * 3, y1 - side - k * 3, x0 + side + k * 3, y1 + k * 3))
    corners = to_albers(np.array([x0, x0 + side, x0, x0 + side]), np.array([y1, y1, y1 - side, y1 - side]))
    pad = 60.0

    def snap(val: float, up: bool) -> float:
        f = math.ceil if up else math.floor
        return f((val - _NLCD_LATTICE) / NLCD_RES) * NLCD_RES + _NLCD_LATTICE

    xmin, xmax = snap(corners[0].min() - pad, False), snap(corners[0].max() + pad, True)
    ymin, ymax = snap(corners[1].min() - pad, False), snap(corners[1].max() + pad, True)
    width, height = round((xmax - xmin) / NLCD_RES), round((ymax - ymin) / NLCD_RES)
    m = land.lc.shape[0]
    coord = (np.arange(m) - k + 0.5) * PLANET_RES
    ax, ay = to_albers(x0 + coord[None, :], y1 - coord[:, None])
    col = np.floor((ax - xmin) / NLCD_RES).astype(np.int64)
    row = np.floor((ymax - ay) / NLCD_RES).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    bins = np.where(inside, row * width + col, -1)
    idx = np.searchsorted(np.array(CLASSES), land.lc)
    major = mode_aggregate(idx, bins, width * height, len(CLASSES)).reshape(height, width)
    codes = np.where(major >= 0, np.array(CLASSES)[np.maximum(major, 0)], NLCD_NODATA).astype(np.uint8)
    # classification errors of a real product: blob-wise confusion of similar classes
    confuse = {82: 81, 81: 82, 41: 90, 90: 41, 22: 21, 21: 22, 95: 90, 71: 81}
    blobs = smooth_noise((height, width), 2.5, rng, factor=2) > 1.7
    for a, b in confuse.items():
        codes = np.where(blobs & (codes == a) & (rng.random(codes.shape) < 0.8), b, codes).astype(np.uint8)
    grid = Grid(NLCD_CRS, NLCD_RES, (xmin, ymin, xmax, ymax))
    with rasterio.open(path, "w", **_gtiff_profile(
            count=1, dtype="uint8", nodata=NLCD_NODATA, width=width, height=height,
            crs=CRS.from_string(NLCD_CRS), transform=grid.transform)) as dst:
        cmap = {i: (0, 0, 0, 0) for i in range(256)}
        cmap.update(NLCD_COLORMAP)
        dst.write_colormap(1, cmap)  # before the pixels: it sets the palette interpretation
        dst.write(codes, 1)
        dst.set_band_description(1, "landcover")
        dst.update_tags(flag_values=" ".join(map(str, CLASSES)),
                        flag_meanings=flag_meanings(CLASS_NAMES[c] for c in CLASSES),
                        **{f"CLASS_{c}": CLASS_NAMES[c] for c in CLASSES})
    return grid


# --- MODIS LST ------------------------------------------------------------------------------------
def _modis(modis_dir: Path, truth_path: Path, land: _Landscape, n_planet: int, n: int, days: int,
           seed: int) -> tuple[Grid, list[datetime]]:
    import xarray as xr

    from tasks.cube import grid_coords, spatial_ref

    rng = _rng(seed, 3)
    r0, c0 = _MODIS_CENTRE_PX[0] - n // 2, _MODIS_CENTRE_PX[1] - n // 2
    xmin = MODIS_TILE_ORIGIN[0] + c0 * MODIS_RES
    ymax = MODIS_TILE_ORIGIN[1] - r0 * MODIS_RES
    grid = Grid(MODIS_CRS, MODIS_RES, (xmin, ymax - n * MODIS_RES, xmin + n * MODIS_RES, ymax))
    shape = (n, n)
    # 1 km land-cover fractions: synthetic river corridors and towns, the 3 m map where it lies
    corridor = np.exp(-(smooth_noise(shape, 3.0, rng, factor=1) / 0.15) ** 2)
    frac = {"forest": 0.5 * corridor, "water": 0.1 * corridor**3, "wetland": 0.07 * corridor,
            "pasture": np.clip(0.14 + 0.08 * smooth_noise(shape, 2.5, rng, factor=1), 0.02, 0.4)}
    ii, jj = np.indices(shape)
    urban = np.zeros(shape)
    for _ in range(max(1, rng.poisson(n * n / 180))):
        cy, cx = rng.uniform(0, n, 2)
        s = rng.uniform(0.5, 1.0) if rng.random() < 0.9 else rng.uniform(1.5, 2.5)
        urban += rng.uniform(0.3, 0.9) * np.exp(-((ii - cy) ** 2 + (jj - cx) ** 2) / (2 * s * s))
    frac["urban"] = np.clip(urban, 0, 0.95)
    k = land.margin
    lc = land.lc[k:k + n_planet, k:k + n_planet]
    x0, y1 = PLANET_ORIGIN
    side = n_planet * PLANET_RES
    to_sinu = _affine_map(PLANET_CRS, MODIS_CRS, (x0, y1 - side, x0 + side, y1))
    coord = (np.arange(n_planet) + 0.5) * PLANET_RES
    sx, sy = to_sinu(x0 + coord[None, :], y1 - coord[:, None])
    bins = (np.floor((ymax - sy) / MODIS_RES) * n + np.floor((sx - xmin) / MODIS_RES)).astype(np.int64)
    cover = np.bincount(bins.ravel(), minlength=n * n).reshape(shape) / (MODIS_RES / PLANET_RES) ** 2
    groups = {"forest": (41, 42, 43, 52, 90), "water": (11,), "wetland": (95,),
              "pasture": (81, 71, 21), "urban": (22, 23, 24, 31)}
    for name, codes in groups.items():
        fine: np.ndarray = np.bincount(bins.ravel(), weights=np.isin(lc, codes).ravel(), minlength=n * n)
        fine = fine.reshape(shape) / np.maximum(cover * (MODIS_RES / PLANET_RES) ** 2, 1)
        frac[name] = np.where(cover > 0, cover * fine + (1 - cover) * frac[name], frac[name])
    total = sum(frac.values())
    scale = np.where(total > 1, 1 / total, 1.0)
    frac = {key: val * scale for key, val in frac.items()}
    frac["crop"] = 1 - sum(frac.values(), np.zeros(shape))  # from 0.0s, not 0: the same sum, typed an array
    green_up = 165 + 8 * smooth_noise(shape, 2.0, rng, factor=1)
    static = 0.6 * smooth_noise(shape, 2.5, rng, factor=1) + 0.3 * rng.standard_normal(shape)
    # Regional weather: a common swing plus a few large-scale synoptic patterns (fronts, sea-breeze
    # like gradients), each with its own AR(1) daily coefficient, felt more by crops and towns than
    # by forest and water. Low rank by construction (a few spatial modes times daily coefficients),
    # with a small day-specific mesoscale residual that is not.
    damping = (frac["crop"] + frac["pasture"] + frac["urban"]) - 0.5 * (frac["forest"] + frac["wetland"]) \
        - 0.8 * frac["water"]
    response = 1.0 + 0.25 * (damping - float(damping.mean()))
    modes = np.stack([smooth_noise(shape, 3.5, rng, factor=4) for _ in range(_LST_WEATHER_MODES.size)])
    coef = np.zeros(_LST_WEATHER_MODES.size)
    # Diurnal pattern: the overpass time moves by up to ~40 min with the orbit; land covers heat at
    # different rates in the late morning (K per hour).
    heating = (frac["crop"] * 2.4 + frac["pasture"] * 2.0 + frac["urban"] * 3.0 + frac["forest"] * 1.2
               + frac["wetland"] * 0.8 + frac["water"] * 0.3)

    start = datetime(YEAR, 7, 1) if days <= 120 else datetime(YEAR, 4, 1)
    dates = [start + timedelta(days=d) for d in range(days)]
    lst = np.empty((days, n, n), np.float32)
    obs_cloud = np.empty((days, n, n), np.float32)
    anomaly_k = np.zeros((days, n, n), np.float32)
    weather, moist = 0.0, np.zeros(shape)
    for t, when in enumerate(dates):
        doy = when.timetuple().tm_yday
        season = 285.0 + 18.0 * math.sin(2 * math.pi * (doy - 105) / 365.0)
        weather = 0.7 * weather + rng.normal(0, 2.2)
        coef = 0.6 * coef + rng.normal(0, 0.8, coef.size) * _LST_WEATHER_MODES
        regional = response * (weather + np.tensordot(coef, modes, axes=1))
        mesoscale = 0.25 * smooth_noise(shape, 3.0, rng, factor=4)
        field = smooth_noise(shape, 3.0, rng, factor=2)
        cf = rng.beta(1.2, 1.8)
        thr = np.quantile(field, 1 - cf)
        obs_cloud[t] = field - thr
        moist = 0.6 * moist + np.clip(field - thr - 0.6, 0, 1.0)  # rain under thick cloud
        canopy = double_logistic(doy, green_up, 262.0, 0.09, 0.08)
        lc_term = (frac["crop"] * (4.0 - 7.0 * canopy) + frac["pasture"] * -1.0
                   + frac["forest"] * -4.0 + frac["water"] * -8.0 + frac["wetland"] * -5.0
                   + frac["urban"] * 5.0)
        scan = rng.uniform(-1, 1)
        view = -2.5 * scan**2 - 0.8 * scan * (jj - n / 2) / n
        overpass_h = 0.6 * scan + rng.normal(0, 0.1)
        lst[t] = season + regional + mesoscale + lc_term + static + view + overpass_h * heating \
            - 0.8 * np.minimum(moist, 1.5)
    # Compact thermal anomalies (fires, hot spots; irrigation or flood cold spots): a few 1 km pixels
    # (a thresholded blob, each pixel 60-100% of the event's magnitude), one to three days with the
    # magnitude decaying by 20% a day; magnitudes of a few kelvin, like the weather swings.
    for _ in range(max(2, rng.poisson(days * n * n / 4000))):
        cy, cx = rng.uniform(0, n, 2)
        s = rng.uniform(0.6, 1.4)
        mag = rng.uniform(3.0, 8.0) * (1 if rng.random() < 0.7 else -1)
        t0 = int(rng.integers(0, days))
        blob = np.exp(-((ii - cy) ** 2 + (jj - cx) ** 2) / (2 * s * s))
        blob[int(min(cy, n - 1)), int(min(cx, n - 1))] = 1.0  # at least the centre pixel
        footprint = np.where(blob >= 0.35, 0.6 + 0.4 * blob, 0.0)
        for d in range(int(rng.integers(1, 4))):
            if t0 + d < days:
                anomaly_k[t0 + d] += mag * (0.8**d) * footprint
    lst += anomaly_k
    anomaly = np.abs(anomaly_k) >= 1.0  # every injected entry is >= 3 * 0.6 * 0.8^2 = 1.15 K

    for t, when in enumerate(dates):
        cloud = obs_cloud[t] > 0
        ring = ndimage.binary_dilation(cloud, iterations=1) & ~cloud
        qc = np.zeros(shape, np.uint8)
        value = lst[t] + LST_NOISE_K * rng.standard_normal(shape).astype(np.float32)
        # Cloud-edge contamination: half the edge pixels read 0.5-4.5 K cold. The cloud mask
        # catches one (QC 2, LST not produced) with probability 1 - exp(-(bias / 1 K)^2): most
        # small biases pass, a bias over 2 K passes rarely; what passes is "other quality" (QC 1)
        # half the time, with the LST error bits set, and "good" otherwise.
        bias = rng.uniform(0.5, 4.5, shape)
        contaminated = ring & (rng.random(shape) < 0.5)
        value[contaminated] -= bias[contaminated]
        caught = contaminated & (rng.random(shape) < 1.0 - np.exp(-(bias**2)))
        qc[contaminated & ~caught & (rng.random(shape) < 0.5)] = 1
        qc[(qc == 0) & (rng.random(shape) < 0.05)] = 1
        qc = np.where(qc == 1, qc | (1 << 4) | (rng.integers(1, 3, shape) << 6).astype(np.uint8), qc)
        qc[cloud | caught] = 2
        if rng.random() < 0.05:  # a swath gap
            gap = np.abs(jj - ii * rng.uniform(-0.3, 0.3) - rng.uniform(0, n)) < rng.uniform(1, 4)
            qc[gap] = 3
        stored = np.where(qc & 2, 0, np.clip(np.round(value / 0.02), 1, 65535)).astype(np.uint16)
        stamp = f"{when.year}{when.timetuple().tm_yday:03d}"
        common = dict(width=n, height=n, crs=CRS.from_string(MODIS_CRS), transform=grid.transform)
        tags = dict(TIFFTAG_DATETIME=when.strftime("%Y:%m:%d %H:%M:%S"), RANGEBEGINNINGDATE=when.date().isoformat())
        base = modis_dir / f"MOD11A1.A{stamp}.{MODIS_TILE}.061"
        with rasterio.open(f"{base}.LST_Day_1km.tif", "w",
                           **_gtiff_profile(count=1, dtype="uint16", nodata=0, **common)) as dst:
            dst.write(stored, 1)
            dst.set_band_description(1, "LST_Day_1km")
            dst.update_tags(scale_factor="0.02", units="K", **tags)
        with rasterio.open(f"{base}.QC_Day.tif", "w",
                           **_gtiff_profile(count=1, dtype="uint8", **common)) as dst:
            dst.write(qc, 1)
            dst.set_band_description(1, "QC_Day")
            dst.update_tags(**tags)

    y, x = grid_coords(grid.transform, n, n)
    ds = xr.Dataset(
        {"lst": (("time", "y", "x"), lst, {"units": "K", "grid_mapping": "spatial_ref"}),
         "anomaly": (("time", "y", "x"), anomaly, {"grid_mapping": "spatial_ref"}),
         "anomaly_k": (("time", "y", "x"), anomaly_k, {"units": "K", "grid_mapping": "spatial_ref"})},
        coords={"time": np.array(dates, dtype="datetime64[ns]"), "y": y, "x": x,
                "spatial_ref": spatial_ref(CRS.from_string(MODIS_CRS), grid.transform)},
        attrs={"title": "fusioncube sample area: MODIS LST truth", "seed": seed},
    )
    with warnings.catch_warnings():  # consolidated v3 metadata: xr.open_zarr opens it quietly
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(truth_path, zarr_format=3, consolidated=True, mode="w")
    return grid, dates


# --- the public entry point -----------------------------------------------------------------------
def generate_sample_area(
    out_dir: str | Path,
    *,
    size: str = "demo",
    seed: int = 0,
    n_dates: int | None = None,
    progress: bool = False,
) -> SampleArea:
    """Write the sample area under ``out_dir`` and return where everything is.

    Idempotent: when ``out_dir`` already holds a finished sample area made with the same
    arguments (its ``sample_area.json``), nothing is rewritten. A finished one made with
    different arguments is never overwritten (``FileExistsError``); an unfinished one is replaced.

    Parameters
    ----------
    out_dir : str or Path
        Root folder; ``planet/``, ``modis/``, ``nlcd/`` and ``truth/`` are created under it.
    size : {"small", "demo", "bench"}
        See :data:`SIZES`.
    seed : int
        Everything is a function of the seed (and the size and ``n_dates``).
    n_dates : int, optional
        Number of Planet acquisition dates instead of the size's default; the number of MODIS
        days scales with it. The land cover does not depend on it.
    progress : bool
        Show a progress bar over the Planet dates.

    Returns
    -------
    SampleArea
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}; got size={size!r}")
    spec = SIZES[size]
    n_dates = spec.n_dates if n_dates is None else int(n_dates)
    modis_days = max(2, round(spec.modis_days * n_dates / spec.n_dates))
    root = Path(out_dir)
    params = {"size": size, "seed": seed, "n_dates": n_dates, "version": GENERATOR_VERSION}
    manifest = root / MANIFEST
    if manifest.exists():
        done = json.loads(manifest.read_text())
        if done.get("params") == params:
            log.info("sample area already in %s (%s); reusing it", root, params)
            return _from_manifest(root, done)
        raise FileExistsError(
            f"{root} already holds a sample area made with {done.get('params')}; asked for "
            f"{params}. Choose another folder or delete that one"
        )
    parts = {name: root / name for name in ("planet", "modis", "nlcd", "truth")}
    for path in parts.values():
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)

    n = spec.planet_px
    x0, y1 = PLANET_ORIGIN
    planet_grid = Grid(PLANET_CRS, PLANET_RES, (x0, y1 - n * PLANET_RES, x0 + n * PLANET_RES, y1))
    land = _landscape(n, _rng(seed, 1))
    nlcd_path = parts["nlcd"] / "nlcd_2019_land_cover_l48_sample.tif"
    nlcd_grid = _write_nlcd(nlcd_path, land, n, _rng(seed, 2))
    surface = _PlanetSurface(land, n, _rng(seed, 4))
    dates = _planet_dates(n_dates, _rng(seed, 5))
    writer = _PlanetTruthWriter(parts["truth"] / "planet_truth.zarr", planet_grid, dates,
                                surface.lc, seed)
    iterator = range(len(dates))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"sample area ({size}) Planet dates", unit="date")
    for t in iterator:
        _planet_date(t, dates[t], surface, planet_grid, parts["planet"], writer, seed)
    modis_grid, modis_dates = _modis(parts["modis"], parts["truth"] / "modis_truth.zarr", land, n,
                                     spec.modis_px, modis_days, seed)
    area = SampleArea(root=root, planet_dir=parts["planet"], modis_dir=parts["modis"],
                      nlcd_path=nlcd_path, truth_dir=parts["truth"], planet_grid=planet_grid,
                      modis_grid=modis_grid, planet_dates=tuple(dates),
                      modis_dates=tuple(modis_dates), nlcd_grid=nlcd_grid)
    share = {CLASSES[i]: round(float(v), 4) for i, v in enumerate(
        np.bincount(np.searchsorted(CLASSES, surface.lc).ravel(), minlength=15) / surface.lc.size)}
    manifest.write_text(json.dumps({
        "params": params,
        "planet_grid": asdict(planet_grid), "modis_grid": asdict(modis_grid),
        "nlcd_grid": asdict(nlcd_grid),
        "planet_dates": [d.isoformat() for d in dates],
        "modis_dates": [d.isoformat() for d in modis_dates],
        "landcover_share": share,
    }, indent=1))
    log.info("sample area %s (seed %d) written to %s: %d Planet dates, %d MODIS days",
             size, seed, root, len(dates), len(modis_dates))
    return area


def _from_manifest(root: Path, done: dict) -> SampleArea:
    def grid(d: dict) -> Grid:
        return Grid(d["crs"], d["resolution"], tuple(d["bounds"]))

    return SampleArea(
        root=root, planet_dir=root / "planet", modis_dir=root / "modis",
        nlcd_path=root / "nlcd" / "nlcd_2019_land_cover_l48_sample.tif", truth_dir=root / "truth",
        planet_grid=grid(done["planet_grid"]), modis_grid=grid(done["modis_grid"]),
        planet_dates=tuple(datetime.fromisoformat(d) for d in done["planet_dates"]),
        modis_dates=tuple(datetime.fromisoformat(d) for d in done["modis_dates"]),
        nlcd_grid=grid(done["nlcd_grid"]),
    )


class _PlanetTruthWriter:
    """Writes ``planet_truth.zarr`` one date at a time (memory bounded by one date)."""

    def __init__(self, path: Path, grid: Grid, dates: list[datetime], landcover: np.ndarray,
                 seed: int) -> None:
        import dask.array as da
        import xarray as xr

        from tasks.cube import grid_coords, spatial_ref

        self.path = path
        h, w = grid.shape
        chunk = (1, 4, min(512, h), min(512, w))
        y, x = grid_coords(grid.transform, h, w)
        gm = {"grid_mapping": "spatial_ref"}
        template = xr.Dataset(
            {"data": (("time", "band", "y", "x"), da.zeros((len(dates), 4, h, w), dtype=np.float32, chunks=chunk),
                      {"units": "1", "long_name": "clear surface reflectance", **gm}),
             "cloud": (("time", "y", "x"), da.zeros((len(dates), h, w), dtype=bool, chunks=(1, *chunk[2:])),
                       {"long_name": "true cloud or cloud shadow", **gm}),
             "landcover": (("y", "x"), landcover,
                           {"flag_values": list(CLASSES),
                            "flag_meanings": flag_meanings(CLASS_NAMES[c] for c in CLASSES),
                            **gm})},
            coords={"time": np.array(dates, dtype="datetime64[ns]"), "band": np.array(BANDS, dtype=object), "y": y,
                    "x": x, "spatial_ref": spatial_ref(CRS.from_string(grid.crs), grid.transform)},
            attrs={"title": "fusioncube sample area: Planet truth", "seed": seed},
        )
        with warnings.catch_warnings():  # region writes below leave this metadata valid
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            template.to_zarr(path, compute=False, zarr_format=3, consolidated=True, mode="w")

    def write(self, t: int, data: np.ndarray, cloud: np.ndarray) -> None:
        import xarray as xr

        ds = xr.Dataset({"data": (("time", "band", "y", "x"), data[None]),
                         "cloud": (("time", "y", "x"), cloud[None])})
        ds.to_zarr(self.path, region={"time": slice(t, t + 1), "band": slice(None),
                                      "y": slice(None), "x": slice(None)},
                   zarr_format=3, consolidated=False)


def _planet_date(t: int, when: datetime, surface: _PlanetSurface, grid: Grid, out: Path,
                 writer: _PlanetTruthWriter, seed: int) -> None:
    """Render one date: truth, clouds, one or two scenes, UDM2; write them."""
    rng = _rng(seed, 100, t)
    n = surface.n
    doy = when.timetuple().tm_yday + when.hour / 24.0
    truth = surface.render(doy, rng)
    cloud, shadow, haze, frac = _clouds(n, rng)
    writer.write(t, truth, (cloud > 0.12) | (shadow > 0.12))
    kind = "full" if t == 0 else str(rng.choice(["full", "partial", "two"], p=[0.5, 0.2, 0.3]))
    sat = str(rng.choice(_SATELLITES))
    base = _observe(truth, cloud, shadow, haze, rng)
    for k, foot in enumerate(_footprints(n, kind, rng)):
        shift = np.clip(rng.normal(0, 0.5, 2), -1.2, 1.2)
        obs = np.stack([ndimage.shift(b, shift, order=1, mode="nearest") for b in base])
        cloud_s, shadow_s, haze_s = (ndimage.shift(a, shift, order=1, mode="nearest")
                                     for a in (cloud, shadow, haze))
        obs = _add_noise(obs, rng)
        water = ndimage.shift((surface.lc == 11).astype(np.float32), shift, order=0) > 0.5
        udm = _udm2(cloud_s, shadow_s, haze_s, obs, water, foot, rng)
        stamp = when + timedelta(seconds=k)
        stem = f"PSScene_{stamp:%Y%m%d_%H%M%S}_{sat}"
        _write_scene(out, stem, obs, udm, foot, grid, stamp, sat)
    log.debug("Planet date %s: %s, cloud fraction %.2f", when.date(), kind, frac)
