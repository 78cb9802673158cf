"""Per-scene radiometry read from a product's own metadata, where one scale and offset per band
cannot describe a whole archive.

Sentinel-2 Level-2A: surface reflectance is ``(DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE``.
Since processing baseline 04.00 (scenes from 25 January 2022, and every scene of the reprocessed
collection) ``BOA_ADD_OFFSET`` is -1000; before it, 0. A cube that kept digital numbers across that
date would hold a step of 0.1 in reflectance that no surface made. Both values are in the
product's ``MTD_MSIL2A.xml`` at the root of its ``.SAFE`` (ESA, "Sentinel-2 Products Specification
Document", S2-PDGS-TAS-DI-PSD, issue 15, 2021; "Sentinel-2: Processing Baseline 04.00",
https://sentinels.copernicus.eu/web/sentinel/-/copernicus-sentinel-2-major-products-upgrade-upcoming).
Without the file (a band file copied out of its SAFE, a stripped zip), the baseline in the SAFE's
name (``_N0400_``) gives them; without either, the scene is refused with the reason rather than
guessed from its date. Level-1C is the same with top-of-atmosphere reflectance,
``(DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE`` from ``MTD_MSIL1C.xml``.

Landsat Collection 2 Level-1: see :func:`landsat_c2_l1_radiometry`.
"""

from __future__ import annotations

import functools
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.discover import archive_of, file_stamp, is_remote
from tasks.errors import SceneError

__all__ = ["LandsatRadiometry", "S2Radiometry", "SENTINEL2_BANDS", "landsat_band", "landsat_c2_l1_radiometry",
           "scene_radiometry", "sentinel2_band", "sentinel2_l1c_radiometry", "sentinel2_l2a_radiometry",
           "stac_item_radiometry"]

#: ``band_id`` of the metadata's ``Spectral_Information`` -> band name
SENTINEL2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_SAFE = re.compile(r"^(?P<root>.*?[^/]*\.SAFE)(?:/|$)")
_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")
_BAND = re.compile(r"(?:^|[_.\-])B(\d{1,2}|8A)(?=$|[_.\-])", re.IGNORECASE)


@dataclass(frozen=True)
class S2Radiometry:
    """``reflectance = (DN + offsets[band]) / quantification``; ``source`` says where from."""

    quantification: float
    offsets: dict[str, float]
    source: str
    #: (scale, offset) per band as a STAC item's ``raster:bands`` declare them; they win
    declared: dict[str, tuple[float, float]] = field(default_factory=dict)

    def scale_offset(self, band: str) -> tuple[float, float]:
        """(scale, offset) of ``reflectance = DN * scale + offset`` for a band name (``B02``)."""
        if band in self.declared:
            return self.declared[band]
        q = self.quantification
        return 1.0 / q, self.offsets.get(band, 0.0) / q


def sentinel2_band(name: str) -> str | None:
    """``B02`` for ``B2``, ``B02``, ``B02_10m``, ``SR_B2``...; None when no band is named."""
    m = _BAND.search(name)
    if m is None:
        return None
    token = m[1].upper()
    return "B8A" if token == "8A" else f"B{int(token):02d}"


def sentinel2_l2a_radiometry(path: str) -> S2Radiometry:
    """The radiometry of the Sentinel-2 L2A product holding ``path`` (a band file in a ``.SAFE``
    folder or zip, or beside a STAC item). Raises ``SceneError`` naming what is missing."""
    return _sentinel2_radiometry(path, "L2A")


def sentinel2_l1c_radiometry(path: str) -> S2Radiometry:
    """The radiometry of the Sentinel-2 L1C product holding ``path``: top-of-atmosphere
    reflectance ``(DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE`` from its ``MTD_MSIL1C.xml``
    (the offset is -1000 since processing baseline 04.00, as for L2A). Raises ``SceneError``."""
    return _sentinel2_radiometry(path, "L1C")


#: per level: metadata file, quantification and offset tags, what the offset is called
_S2_LEVELS = {"L2A": ("MTD_MSIL2A.xml", "BOA_QUANTIFICATION_VALUE", "BOA_ADD_OFFSET", "BOA offset"),
              "L1C": ("MTD_MSIL1C.xml", "QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET", "radiometric offset")}


def _sentinel2_radiometry(path: str, level: str) -> S2Radiometry:
    mtd, _, _, offset_name = _S2_LEVELS[level]
    m = _SAFE.match(path)
    if m is None:
        item = stac_item_radiometry(path) if level == "L2A" else None
        if item is not None:
            return item
        raise SceneError(path, f"not inside a Sentinel-2 .SAFE product{' and no STAC item (.json) beside it' if level == 'L2A' else ''}; "
                               f"its processing baseline and {offset_name} cannot be found, so its digital "
                               "numbers cannot be made reflectance: ingest the .SAFE folder or zip, or give "
                               "the bands' scale and offset in the catalog and drop 'radiometry'")
    root = m["root"]
    text = _metadata(root, mtd)
    if text is not None:
        return _parse(text, f"{Path(root).name}/{mtd}", level)
    baseline = _BASELINE.search(Path(root).name)
    if baseline is None:
        raise SceneError(path, f"{Path(root).name} has no {mtd} and no processing baseline "
                               f"(_N0400_) in its name; cannot tell its {offset_name}")
    offset = -1000.0 if (int(baseline[1]), int(baseline[2])) >= (4, 0) else 0.0
    return S2Radiometry(10000.0, dict.fromkeys(SENTINEL2_BANDS, offset),
                        f"processing baseline {baseline[1]}.{baseline[2]} in the product name")


@functools.lru_cache(maxsize=256)
def _metadata(root: str, name: str = "MTD_MSIL2A.xml") -> str | None:
    """The text of the metadata file ``name`` at a SAFE's root: a folder, or a member of a zip / tar."""
    return _text(f"{root}/{name}")


def _text(path: str) -> str | None:
    """The text of a local file, or of a member of a local zip / tar (a ``/vsizip/`` or
    ``/vsitar/`` path); None when there is no such file."""
    archive = archive_of(path)
    if archive is None:
        f = Path(path)
        return f.read_text() if "://" not in path and f.is_file() else None
    if not Path(archive).is_file():
        return None
    inside = path.split(f"{archive}/", 1)[1]
    if archive.lower().endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(archive) as z:
            return z.read(inside).decode() if inside in z.namelist() else None
    import tarfile

    with tarfile.open(archive) as t:
        try:
            member = t.extractfile(inside)
        except KeyError:
            return None
        return member.read().decode() if member is not None else None


def _parse(text: str, where: str, level: str = "L2A") -> S2Radiometry:
    _, quant_tag, offset_tag, _ = _S2_LEVELS[level]
    tree = ET.fromstring(text)

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    quant = next((e.text for e in tree.iter() if local(e.tag) == quant_tag), None)
    if quant is None:
        raise SceneError(where, f"no {quant_tag} in the product metadata")
    offsets = {}
    for e in tree.iter():
        if local(e.tag) == offset_tag and (band_id := e.get("band_id")) is not None:
            offsets[SENTINEL2_BANDS[int(band_id)]] = float(e.text or 0)
    return S2Radiometry(float(quant), offsets, where)


def stac_item_radiometry(path: str) -> S2Radiometry | None:
    """The radiometry a STAC item beside a band COG declares (a STAC download's item folder holds
    ``B02.tif``, ... and the item's ``.json``), most specific first: the assets' ``raster:bands``
    scale and offset; Earth Search's ``earthsearch:boa_offset_applied`` (true: the offset is
    already in the values); the ``s2:processing_baseline``. None without such an item."""
    if archive_of(path) is not None or "://" in path:
        return None
    return _item_radiometry(str(Path(path).parent))


@functools.lru_cache(maxsize=256)
def _item_radiometry(folder: str) -> S2Radiometry | None:
    for candidate in sorted(Path(folder).glob("*.json"))[:20]:
        try:
            item = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(item, dict) or item.get("type") != "Feature":
            continue
        props = item.get("properties") or {}
        declared = {}
        for asset in (item.get("assets") or {}).values():
            bands = asset.get("raster:bands") or [{}]
            name = sentinel2_band(Path(str(asset.get("href", ""))).name.split("?")[0])
            if name and ("scale" in bands[0] or "offset" in bands[0]):
                declared[name] = (float(bands[0].get("scale", 1.0)), float(bands[0].get("offset", 0.0)))
        if props.get("earthsearch:boa_offset_applied") is True:
            return S2Radiometry(10000.0, {}, f"{candidate.name}: BOA offset already applied", declared)
        baseline = str(props.get("s2:processing_baseline") or "")
        if declared or re.fullmatch(r"\d{2}\.\d{2}", baseline):
            offset = -1000.0 if baseline and (int(baseline[:2]), int(baseline[3:])) >= (4, 0) else 0.0
            return S2Radiometry(10000.0, dict.fromkeys(SENTINEL2_BANDS, offset),
                                f"{candidate.name}: processing baseline {baseline or '?'}", declared)
    return None


# -- Landsat Collection 2 Level-1 ---------------------------------------------------------------
#
# Level-1 products hold calibrated digital numbers. The scene's MTL file gives, per band, the
# rescaling to top-of-atmosphere reflectance, rho' = M_rho * Q + A_rho, which still needs the sun
# elevation: rho = rho' / sin(theta_SE) (USGS, "Using the USGS Landsat Level-1 Data Product",
# https://www.usgs.gov/landsat-missions/using-usgs-landsat-level-1-data-product; the keys
# REFLECTANCE_MULT_BAND_n, REFLECTANCE_ADD_BAND_n and SUN_ELEVATION of the Collection 2 MTL). The
# sun elevation differs by scene and season, so one scale per band cannot describe an archive.
# Thermal bands have no reflectance rescaling: they are radiance, L = M_L * Q + A_L
# (W / (m^2 sr um); brightness temperature is not linear in Q).

_LANDSAT_BAND = re.compile(r"(?:^|_)B(\d{1,2}(?:_VCID_\d)?)(?=\.TIF$|$)", re.IGNORECASE)
_MTL_KEY = re.compile(r"^\s*(\w+)\s*=\s*\"?([^\"\n]*?)\"?\s*$", re.MULTILINE)


@dataclass(frozen=True)
class LandsatRadiometry:
    """Per band (``"4"``, ``"6_VCID_1"``) the MTL's rescaling and the scene's sun elevation."""

    reflectance: dict[str, tuple[float, float]]  # band -> (M_rho, A_rho)
    radiance: dict[str, tuple[float, float]]  # band -> (M_L, A_L)
    sun_elevation: float  # degrees
    source: str

    def scale_offset(self, band: str) -> tuple[float, float]:
        """(scale, offset) of ``value = DN * scale + offset``: TOA reflectance corrected for the
        sun elevation, or radiance for a band without reflectance rescaling (thermal)."""
        if band in self.reflectance:
            mult, add = self.reflectance[band]
            sine = math.sin(math.radians(self.sun_elevation))
            return mult / sine, add / sine
        if band in self.radiance:
            return self.radiance[band]
        raise SceneError(self.source, f"the MTL has no rescaling for band {band}")


def landsat_band(name: str) -> str | None:
    """``4`` for ``B4`` or ``LC08_..._B4.TIF``, ``6_VCID_1`` for ``B6_VCID_1``; None otherwise."""
    m = _LANDSAT_BAND.search(name)
    return m[1].upper() if m else None


def landsat_c2_l1_radiometry(path: str) -> LandsatRadiometry:
    """The radiometry of the Landsat Collection 2 Level-1 scene holding the band file ``path``,
    from the ``_MTL.txt`` beside it (a folder, or the scene's .tar bundle). Raises ``SceneError``
    naming what is missing: without it the scene's digital numbers cannot be made reflectance."""
    name = Path(path.split("?", 1)[0]).name
    stem = re.sub(r"_B\d{1,2}(?:_VCID_\d)?\.TIF$", "", name, flags=re.IGNORECASE)
    if stem == name:
        raise SceneError(path, "not a Landsat band file (..._B<n>.TIF); its MTL cannot be found")
    mtl = f"{path.rsplit('/', 1)[0]}/{stem}_MTL.txt" if "/" in path else f"{stem}_MTL.txt"
    return _landsat_mtl(mtl, _stamp(mtl))


def _stamp(path: str) -> tuple[int, int] | None:
    """:func:`tasks.discover.file_stamp` of a local file or archive member (the cache key of its
    parse, so an edited file is read again); None when there is no such local file."""
    if archive_of(path) is None and is_remote(path):
        return None  # remote metadata is not fetched (a member of a local archive is read)
    try:
        stamp = file_stamp(path)
    except OSError:
        return None
    return stamp["size"], stamp["mtime_ns"]


@functools.lru_cache(maxsize=256)
def _landsat_mtl(mtl: str, stamp: tuple[int, int] | None) -> LandsatRadiometry:
    """The radiometry in the MTL file ``mtl`` (cached per ``stamp``: an edited file is read again)."""
    text = _text(mtl) if stamp is not None else None
    if text is None:
        raise SceneError(mtl, "no such MTL file beside the band files; the scene's reflectance rescaling and "
                              "sun elevation are in it (ingest the whole Level-1 bundle, or give the bands' "
                              "scale and offset in the catalog and drop 'radiometry')")
    values = dict(_MTL_KEY.findall(text))
    try:
        sun = float(values["SUN_ELEVATION"])
    except (KeyError, ValueError):
        raise SceneError(mtl, "no SUN_ELEVATION in the MTL") from None
    if not 0.0 < sun <= 90.0:
        raise SceneError(mtl, f"SUN_ELEVATION {sun:g} degrees: the sun is not above the horizon, "
                              "so there is no reflectance to compute")

    def pairs(kind: str) -> dict[str, tuple[float, float]]:
        found = {}
        for key, mult in values.items():
            m = re.fullmatch(rf"{kind}_MULT_BAND_(\w+)", key)
            if m and f"{kind}_ADD_BAND_{m[1]}" in values:
                found[m[1].upper()] = (float(mult), float(values[f"{kind}_ADD_BAND_{m[1]}"]))
        return found

    reflectance, radiance = pairs("REFLECTANCE"), pairs("RADIANCE")
    if not reflectance and not radiance:
        raise SceneError(mtl, "no REFLECTANCE_ / RADIANCE_MULT_BAND_n keys: not a Level-1 MTL")
    return LandsatRadiometry(reflectance, radiance, sun, Path(mtl).name)


#: catalog ``radiometry`` kind -> (the product's radiometry of a scene file, the band a band name
#: or file token is, what such a band is called)
_KINDS: dict[str, tuple[Callable[[str], S2Radiometry | LandsatRadiometry], Callable[[str], str | None], str]] = {
    "sentinel2_l2a": (sentinel2_l2a_radiometry, sentinel2_band, "Sentinel-2 band (B01..B12, B8A)"),
    "sentinel2_l1c": (sentinel2_l1c_radiometry, sentinel2_band, "Sentinel-2 band (B01..B12, B8A)"),
    "landsat_c2_l1": (landsat_c2_l1_radiometry, landsat_band, "Landsat band (B1..B11, B6_VCID_1)"),
}


def scene_radiometry(kind: str, path: str) -> Callable[[str], tuple[float, float]]:
    """For the scene file ``path``, read once, the (scale, offset) of each of its bands (by name
    or file token) from the product's own metadata, for the catalog's ``radiometry`` ``kind``.
    Raises ``SceneError`` when the metadata cannot be found, or (when called) a band is not one
    of the product's."""
    if kind not in _KINDS:
        raise ValueError(f"radiometry {kind!r} is not one of {', '.join(_KINDS)}")
    load, band_of, what = _KINDS[kind]
    product = load(path)

    def scale_offset(band: str) -> tuple[float, float]:
        name = band_of(band)
        if name is None:
            raise SceneError(path, f"band {band!r} names no {what}; radiometry {kind} needs one")
        return product.scale_offset(name)

    return scale_offset
