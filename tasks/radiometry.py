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
guessed from its date.
"""

from __future__ import annotations

import functools
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tasks.discover import archive_of
from tasks.errors import SceneError

__all__ = ["S2Radiometry", "SENTINEL2_BANDS", "sentinel2_band", "sentinel2_l2a_radiometry", "stac_item_radiometry"]

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
    folder or zip). Raises ``SceneError`` naming what is missing."""
    m = _SAFE.match(path)
    if m is None:
        item = stac_item_radiometry(path)
        if item is not None:
            return item
        raise SceneError(path, "not inside a Sentinel-2 .SAFE product and no STAC item (.json) beside it; "
                               "its processing baseline and BOA offset cannot be found, so its digital "
                               "numbers cannot be made reflectance: ingest the .SAFE folder or zip, or give "
                               "the bands' scale and offset in the catalog and drop 'radiometry'")
    root = m["root"]
    text = _metadata(root)
    if text is not None:
        return _parse(text, f"{Path(root).name}/MTD_MSIL2A.xml")
    baseline = _BASELINE.search(Path(root).name)
    if baseline is None:
        raise SceneError(path, f"{Path(root).name} has no MTD_MSIL2A.xml and no processing baseline "
                               "(_N0400_) in its name; cannot tell its BOA offset")
    offset = -1000.0 if (int(baseline[1]), int(baseline[2])) >= (4, 0) else 0.0
    return S2Radiometry(10000.0, dict.fromkeys(SENTINEL2_BANDS, offset),
                        f"processing baseline {baseline[1]}.{baseline[2]} in the product name")


@functools.lru_cache(maxsize=256)
def _metadata(root: str) -> str | None:
    """The text of ``MTD_MSIL2A.xml`` at a SAFE's root: a folder, or a member of a zip / tar."""
    archive = archive_of(root)
    if archive is None:
        f = Path(root) / "MTD_MSIL2A.xml"
        return f.read_text() if f.is_file() else None
    if not Path(archive).is_file():
        return None
    inside = root.split(f"{archive}/", 1)[1] + "/MTD_MSIL2A.xml"
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


def _parse(text: str, where: str) -> S2Radiometry:
    tree = ET.fromstring(text)
    quant = next((e.text for e in tree.iter() if e.tag.endswith("BOA_QUANTIFICATION_VALUE")), None)
    if quant is None:
        raise SceneError(where, "no BOA_QUANTIFICATION_VALUE in the product metadata")
    offsets = {}
    for e in tree.iter():
        if e.tag.endswith("BOA_ADD_OFFSET") and (band_id := e.get("band_id")) is not None:
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
