"""Real-world scene layouts beyond one north-up multi-band file per scene: products stored one
file per band (Landsat, Sentinel-2, HLS), file-declared scale / offset, alpha and mask bands,
south-up (bottom-up) rasters, and files georeferenced by ground control points only."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from tasks.adhoc import BAND_TOKEN, adhoc_catalog, build_adhoc_catalog, detect_band_files
from tasks.catalog import SourceSpec, load_catalog
from tasks.discover import band_file_groups


def _band(path: Path, value: int, *, size: int, res: float, scale: float | None = None,
          offset: float | None = None, hole: int = 0) -> None:
    a = np.full((size, size), value, np.uint16)
    a[:hole, :hole] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(600000, 5000000, res, res), nodata=0) as ds:
        ds.write(a, 1)
        if scale is not None:
            ds.scales, ds.offsets = (scale,), (offset,)


def _spec(pattern: str = BAND_TOKEN, files: tuple[str, ...] = ("B02", "B03")) -> SourceSpec:
    return SourceSpec(glob=["*"], band_files=pattern,
                      bands=[{"name": f, "index": 1, "file": f} for f in files])


def test_band_file_groups_make_scenes_and_name_what_is_wrong() -> None:
    names = [
        "T33UUP_20190801T101031_B02_10m.tif", "T33UUP_20190801T101031_B03_20m.tif",  # one scene
        "T33UUP_20190811T101031_B02_10m.tif",                                        # lacks B03
        "T33UUP_20190821T101031_B02_10m.tif", "T33UUP_20190821T101031_B03_20m.tif",
        "T33UUP_20190821T101031_B03_60m.tif",                                        # B03 twice
        "T33UUP_20190801T101031_SCL_20m.tif",                                        # not a band file
        "T33UUP_20190801T101031_B04_10m.tif",                                        # not wanted
    ]
    copies = ["/d/T33UUP_20190901T101031_B02_10m.tif", "/d/T33UUP_20190901T101031_B03_10m.tif",
              "/e/T33UUP_20190901T101031_B02_10m.tif"]  # one scene's band copied into another folder
    scenes, failed = band_file_groups([f"/d/{n}" for n in names] + copies, _spec())
    assert scenes == [("/d/T33UUP_20190801T101031_B02_10m.tif", "/d/T33UUP_20190801T101031_B03_20m.tif")]
    reasons = {Path(p).name: r for p, r in failed}
    assert "lacks the file(s) of band(s) ['B03']" in reasons["T33UUP_20190811T101031_B02_10m.tif"]
    assert "two files for band 'B03'" in reasons["T33UUP_20190821T101031_B02_10m.tif"]
    assert "not a band file" in reasons["T33UUP_20190801T101031_SCL_20m.tif"]
    assert "'B04' is not one of the source's bands" in reasons["T33UUP_20190801T101031_B04_10m.tif"]
    # the same name twice: the message says where each is
    assert ("two files for band 'B02' and no one finest among them: ['/d/T33UUP_20190901T101031_B02_10m.tif', "
            "'/e/T33UUP_20190901T101031_B02_10m.tif']") in reasons["T33UUP_20190901T101031_B02_10m.tif"]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["LC08_L2SP_044034_20190801_20200827_02_T1_SR_B2.TIF", "LC08_L2SP_044034_20190801_20200827_02_T1_SR_B10.TIF",
          "LC08_L2SP_044034_20190801_20200827_02_T1_SR_B4.TIF"], ["SR_B2", "SR_B4", "SR_B10"]),
        (["HLS.S30.T33UUP.2019213T101031.v2.0.B8A.tif", "HLS.S30.T33UUP.2019213T101031.v2.0.B04.tif"], ["B04", "B8A"]),
        (["scene_2020-01-01_band1.tif", "scene_2020-01-01_band2.tif"], ["band1", "band2"]),
        (["PSScene_20190612_163402_1012_3B_AnalyticMS_SR.tif", "PSScene_20190613_163402_1012_3B_AnalyticMS_SR.tif"], None),
        (["S2_20190612T163402_B04.tif", "S2_20190622T163402_B04.tif"], None),  # one band a date: not band files
    ],
)
def test_detect_band_files(names: list[str], expected: list[str] | None) -> None:
    assert detect_band_files(names) == expected


def test_catalog_band_files_rules() -> None:
    with pytest.raises(ValueError, match=r"needs a named group \(\?P<band>"):
        _spec(pattern=r"_B\d+")
    with pytest.raises(ValueError, match="no band_files pattern"):
        SourceSpec(glob=["*"], bands=[{"name": "b", "index": 1, "file": "B02"}])
    with pytest.raises(ValueError, match=r"every band needs a `file`; \['b'\]"):
        SourceSpec(glob=["*"], band_files=BAND_TOKEN, bands=[{"name": "b", "index": 1}])


def test_cli_ingests_sentinel2_and_landsat_style_band_files(tmp_path: Path, capsys) -> None:
    """Sentinel-2-like 10 m bands with a 20 m band (resampled onto the 10 m grid) and Landsat-like
    bands whose files declare scale and offset (applied): one cube band per band file. A scene
    missing a band is quarantined and taken on the next run once its file arrives."""
    from flows.cli import main

    for d in ("20190801T101031", "20190811T101031"):
        for b, v in (("B02", 1000), ("B03", 2000), ("B04", 3000)):
            _band(tmp_path / "s2" / f"T33UUP_{d}_{b}_10m.tif", v, size=16, res=10, hole=4)
        _band(tmp_path / "s2" / f"T33UUP_{d}_B8A_20m.tif", 4000, size=8, res=20)
    assert main(["ingest", str(tmp_path / "s2" / "*.tif"), "--out", str(tmp_path / "s2.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "s2.zarr")
    assert list(ds.band.values) == ["B02", "B03", "B04", "B8A"] and ds.sizes["y"] == ds.sizes["x"] == 16
    np.testing.assert_allclose(ds.data.isel(time=1).sel(band="B8A").values, 4000)
    np.testing.assert_allclose(ds.data.isel(time=0).sel(band="B03").values[4:, 4:], 2000)
    assert not ds.valid.isel(time=0).values[:4, :4].any() and ds.valid.isel(time=0).values[4:, 4:].all()
    # --dry-run shows what it finds and writes nothing
    assert main(["ingest", str(tmp_path / "s2" / "*.tif"), "--out", str(tmp_path / "dry.zarr"), "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "band B8A: file 'B8A', nodata 0" in shown and "2 new scene(s) on 2 date(s)" in shown
    assert "grid (the first scene's): EPSG:32633 (WGS 84 / UTM zone 33N), 10 x 10, 16 x 16 px" in shown
    assert not list(tmp_path.glob("dry*"))
    # the folder itself is an input too: its raster files, sub-folders included
    assert main(["ingest", str(tmp_path / "s2"), "--out", str(tmp_path / "s2dir.zarr")]) == 0
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "s2dir.zarr")["data"], ds["data"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no rasters here")
    with pytest.raises(FileNotFoundError, match="notes: a folder with no raster file"):
        adhoc_catalog([str(tmp_path / "notes")], tmp_path / "x.zarr")

    # Landsat Collection 2 Level-2: recognised by name, QA_PIXEL is the mask and the C2 scaling
    # applies to bands whose files declare no scale of their own (SR_B3's 1e-4 wins here)
    ls = tmp_path / "ls"
    stem = "LC08_L2SP_044034_{}_20200827_02_T1_{}.TIF"
    for d in ("20190801", "20190817"):
        _band(ls / stem.format(d, "SR_B2"), 10000, size=8, res=30)
        if d == "20190801":
            _band(ls / stem.format(d, "SR_B3"), 20000, size=8, res=30, scale=1e-4, offset=0.0)
        _qa_pixel(ls / stem.format(d, "QA_PIXEL"), cloudy_rows=1)
    assert main(["ingest", str(ls / "*.TIF"), "--out", str(tmp_path / "ls.zarr")]) == 0
    out = capsys.readouterr().out
    assert f"quarantined {stem.format('20190817', 'SR_B2')}: scene lacks the file(s) of band(s) ['SR_B3']" in out
    assert "QA_PIXEL" not in out  # a mask, not a scene
    ds = xr.open_zarr(tmp_path / "ls.zarr")
    assert list(ds.band.values) == ["SR_B2", "SR_B3"] and ds.sizes["time"] == 1
    np.testing.assert_allclose(ds.data.isel(time=0, y=-1).mean("x").values, [0.075, 2.0], rtol=1e-5)
    assert not ds.valid.values[0, 0].any() and ds.valid.values[0, 1:].all()
    _band(ls / stem.format("20190817", "SR_B3"), 20000, size=8, res=30)
    assert main(["ingest", str(ls / "*.TIF"), "--out", str(tmp_path / "ls.zarr")]) == 0
    assert xr.open_zarr(tmp_path / "ls.zarr").sizes["time"] == 2

    # Landsat into the Sentinel-2 cube: refused before anything is written, its catalog kept
    catalog = (tmp_path / "s2.zarr.catalog.yaml").read_text()
    assert main(["ingest", str(ls / "*.TIF"), "--out", str(tmp_path / "s2.zarr")]) == 2
    assert "the cube holds bands ['B02', 'B03', 'B04', 'B8A']; these scenes give ['SR_B2', 'SR_B3']" in capsys.readouterr().err
    assert (tmp_path / "s2.zarr.catalog.yaml").read_text() == catalog
    assert xr.open_zarr(tmp_path / "s2.zarr").sizes["time"] == 2


def test_cli_ingests_a_sentinel2_safe_folder(tmp_path: Path, capsys) -> None:
    """A Sentinel-2 L2A SAFE as downloaded: bands in R10m / R20m / R60m, most of them in two or
    three of those, the SCL mask in R20m only, and AOT / WVP / TCI products beside them. Before,
    every scene was quarantined ("two files for band 'B02'") and the ancillary files were reported
    as bad scenes; now each band comes from its finest file and the mask from R20m."""
    from flows.cli import main

    layout = {"R10m": ("B02", "B03", "AOT", "TCI"), "R20m": ("B02", "B03", "B05", "SCL", "AOT", "WVP"),
              "R60m": ("B02", "B03", "B05", "SCL", "AOT")}
    # the same surface seen before processing baseline 04.00 (offset 0; its baseline only in the
    # SAFE's name) and after it (BOA_ADD_OFFSET -1000, from MTD_MSIL2A.xml: B05's -999 shows that
    # the file's value is the one used)
    mtd = ("<n1:Level-2A_User_Product xmlns:n1='x'><General_Info><Product_Image_Characteristics>"
           "<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit='none'>10000</BOA_QUANTIFICATION_VALUE>"
           "</QUANTIFICATION_VALUES_LIST><BOA_ADD_OFFSET_VALUES_LIST>"
           + "".join(f"<BOA_ADD_OFFSET band_id='{i}'>{-999 if i == 4 else -1000}</BOA_ADD_OFFSET>" for i in range(13))
           + "</BOA_ADD_OFFSET_VALUES_LIST></Product_Image_Characteristics></General_Info></n1:Level-2A_User_Product>")
    for d, baseline, add in (("20210612T100559", "N0300", 0), ("20230622T100559", "N0509", 1000)):
        safe = tmp_path / f"S2A_MSIL2A_{d}_{baseline}_R022_T33UUP_{d}.SAFE"
        img = safe / "GRANULE" / f"L2A_T33UUP_{d}" / "IMG_DATA"
        for folder, names in layout.items():
            res = int(folder[1:3])
            for b in names:
                value = {"B02": 1000, "B03": 2000, "B05": 3000}.get(b, 7) + res  # which file was read
                _band(img / folder / f"T33UUP_{d}_{b}_{res}m.jp2", value + add - (add > 0 and b == "B05"), size=120 // res, res=res)
        if add:
            (safe / "MTD_MSIL2A.xml").write_text(mtd)
        if add:  # clouds (SCL 9) over the western half
            scl = np.full((6, 6), 4, np.uint16)
            scl[:, :3] = 9
            with rasterio.open(img / "R20m" / f"T33UUP_{d}_SCL_20m.jp2", "r+") as ds:
                ds.write(scl, 1)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "s2.zarr")]) == 0
    out = capsys.readouterr().out
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in out
    ds = xr.open_zarr(tmp_path / "s2.zarr")
    assert list(ds.band.values) == ["B02", "B03", "B05"] and ds.sizes["y"] == ds.sizes["x"] == 12  # 10 m grid
    # reflectance, the same on both dates: (DN + offset) / 10000 with each scene's own offset
    np.testing.assert_allclose(ds.data.mean(("y", "x")).values, [[0.101, 0.201, 0.302]] * 2, rtol=1e-5)
    # clouds over the western half, and the 10 m column at its rim whose resampled 20 m B05 takes
    # part of a cloudy pixel
    assert ds.valid.values[0].all() and not ds.valid.values[1, :, :7].any() and ds.valid.values[1, :, 7:].all()
    # an area of interest keeps the finest band's 10 m grid (the first file by name is a 60 m band)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "aoi.zarr"),
                 "--bounds", "600030", "4999940", "600090", "5000000"]) == 0
    capsys.readouterr()
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "aoi.zarr")[["data", "valid"]],
                            ds[["data", "valid"]].isel(y=slice(0, 6), x=slice(3, 9)))

    # as Copernicus delivers it: each SAFE zipped, read in place through /vsizip/ (the same cube)
    import shutil

    zips = tmp_path / "zips"
    for safe in sorted(tmp_path.glob("*.SAFE")):
        shutil.make_archive(str(zips / safe.name), "zip", root_dir=tmp_path, base_dir=safe.name)
    assert main(["ingest", str(zips), "--out", str(tmp_path / "zipped.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "zipped.zarr")[["data", "valid"]], ds[["data", "valid"]])
    assert main(["ingest", str(zips), "--out", str(tmp_path / "zipped.zarr")]) == 0  # nothing new: stamps
    assert "0 scenes ingested" in capsys.readouterr().out
    # a zip unpacked beside itself (the usual download then unzip): the unpacked SAFE is read,
    # its zip is not read a second time (before: every band twice, every scene quarantined)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for z in zips.glob("*.zip"):
        shutil.copy(z, downloads)
        shutil.unpack_archive(z, downloads)
    assert main(["ingest", str(downloads), "--out", str(tmp_path / "beside.zarr")]) == 0
    out = capsys.readouterr().out
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in out
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "beside.zarr")[["data", "valid"]], ds[["data", "valid"]])
    (zips / "S2B_MSIL2A_20230701T100559_N0509_R022_T33UUP_20230701T100559.SAFE.zip").write_text("cut short")
    assert main(["ingest", str(zips), "--out", str(tmp_path / "zipped.zarr")]) == 0
    assert "20230701T100559.SAFE.zip: cannot be read as an archive (File is not a zip file)" in capsys.readouterr().out


def test_cli_ingests_landsat_tar_bundles_in_place(tmp_path: Path, capsys) -> None:
    """USGS delivers Landsat Collection 2 scenes as .tar bundles (bands, QA_PIXEL, QA_RADSAT,
    ST_QA, MTL): read through /vsitar/ without unpacking, QA_PIXEL as the mask, the other QA
    layers not taken for scenes."""
    import tarfile

    from flows.cli import main

    work = tmp_path / "unpacked"
    for d in ("20190801", "20190817"):
        stem = f"LC08_L2SP_044034_{d}_20200827_02_T1"
        for b, v in (("SR_B2", 10000), ("SR_B3", 20000), ("QA_RADSAT", 0), ("ST_QA", 300)):
            _band(work / f"{stem}_{b}.TIF", v, size=8, res=30)
        _qa_pixel(work / f"{stem}_QA_PIXEL.TIF", cloudy_rows=2)
        (work / f"{stem}_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n")
        (tmp_path / "bundles").mkdir(exist_ok=True)
        with tarfile.open(tmp_path / "bundles" / f"{stem}.tar", "w") as tar:
            for f in sorted(work.glob(f"{stem}_*")):
                tar.add(f, arcname=f.name)
    assert main(["ingest", str(tmp_path / "bundles"), "--out", str(tmp_path / "ls.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "ls.zarr")
    assert list(ds.band.values) == ["SR_B2", "SR_B3"] and ds.sizes["time"] == 2
    np.testing.assert_allclose(ds.data.isel(time=0, y=-1).mean("x").values, [0.075, 0.35], rtol=1e-5)
    assert not ds.valid.values[:, :2].any() and ds.valid.values[:, 2:].all()
    # one bundle also unpacked beside the bundles: its files are read once, unpacked
    with tarfile.open(next((tmp_path / "bundles").glob("*.tar"))) as tar:
        tar.extractall(tmp_path / "bundles", filter="data")
    assert main(["ingest", str(tmp_path / "bundles"), "--out", str(tmp_path / "ls2.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "ls2.zarr")[["data", "valid"]], ds[["data", "valid"]])


def test_cli_ingests_stac_item_folders_of_band_cogs(tmp_path: Path, capsys) -> None:
    """A STAC download (Earth Search Sentinel-2 L2A): one folder per item, COGs named by band
    alone (``B02.tif``), the date in the folder's name only, SCL beside the bands. Before, every
    file was quarantined for want of a date, and with a date the bands of all items would have
    been one scene ("two files for band 'B02'")."""
    from flows.cli import main

    for d in ("20230612", "20230622"):
        item = tmp_path / f"S2B_33UUP_{d}_0_L2A"
        for b, res in (("B02", 10), ("B03", 10), ("B8A", 20), ("SCL", 20), ("AOT", 20), ("TCI", 10)):
            _band(item / f"{b}.tif", {"B02": 1100, "B03": 1200, "B8A": 1500}.get(b, 4) + int(d[-2:]), size=120 // res, res=res)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "s2.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "s2.zarr")
    assert [str(t)[:10] for t in ds.time.values] == ["2023-06-12", "2023-06-22"]
    assert list(ds.band.values) == ["B02", "B03", "B8A"] and ds.sizes["x"] == 12
    np.testing.assert_allclose(ds.data.mean(("y", "x")).values, [[1112, 1212, 1512], [1122, 1222, 1522]])
    assert "SCL.tif" in (tmp_path / "s2.zarr.catalog.yaml").read_text()  # the mask


def test_cli_masks_sentinel2_l2a_band_files_kept_as_geotiff(tmp_path: Path, capsys) -> None:
    """Sentinel-2 L2A band files converted to GeoTIFF under their SAFE names, ``_SCL_20m.tif``
    beside them. Before, only ``.jp2`` was recognised: the SCL files were quarantined as "not a band
    file" and the cube kept cloud (SCL 9) and no-data (SCL 0) pixels as observed."""
    from flows.cli import main

    for d, add in (("20200105", 0), ("20200115", 10)):
        stem = tmp_path / f"T33SVB_{d}T100031"
        for b, res in (("B02", 10), ("B03", 10), ("B8A", 20)):
            _band(Path(f"{stem}_{b}_{res}m.tif"), {"B02": 1100, "B03": 1200, "B8A": 1500}[b] + add, size=120 // res, res=res)
        _band(Path(f"{stem}_SCL_20m.tif"), 4, size=6, res=20)  # vegetation
        with rasterio.open(f"{stem}_SCL_20m.tif", "r+") as ds:
            scl = ds.read(1)
            scl[:2, :3] = 9 if add else 0  # a cloud, or no data, over the top left 40 x 60 m
            ds.write(scl, 1)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "s2.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "s2.zarr")
    assert list(ds.band.values) == ["B02", "B03", "B8A"] and ds.sizes["x"] == 12
    want = np.ones((2, 12, 12), bool)
    want[:, :5, :7] = False  # the flagged 4 x 6 px, and the rim whose resampled 20 m B8A takes part of them
    np.testing.assert_array_equal(ds.valid.values, want)
    assert "_SCL_20m" in (tmp_path / "s2.zarr.catalog.yaml").read_text()  # the mask


def test_sentinel2_l2a_digital_number_0_is_no_data_though_the_files_declare_none(tmp_path: Path) -> None:
    """L2A JPEG 2000s declare no nodata; their product metadata says DN 0 is NODATA. A 0 used to
    become reflectance (0.0, or -0.1 after baseline 04.00) in ``data`` while ``valid`` was false."""
    stem = tmp_path / "T33SVB_20200105T100031"
    for b in ("B02", "B03"):
        with rasterio.open(f"{stem}_{b}_10m.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="uint16",
                           crs="EPSG:32633", transform=from_origin(600000, 5000000, 10, 10)) as ds:
            a = np.full((4, 4), 1100, np.uint16)
            a[0, 0] = 0  # outside the swath
            ds.write(a, 1)
    _band(Path(f"{stem}_SCL_20m.tif"), 4, size=2, res=20)
    raw, _ = build_adhoc_catalog([str(tmp_path)], tmp_path / "s2.zarr")
    assert all(b["nodata"] == 0.0 for b in raw["sources"]["scenes"]["bands"])


def test_a_file_quarantined_for_its_date_is_taken_once_a_date_rule_is_given(tmp_path: Path, capsys) -> None:
    """The quarantine message says "give one: --date-pattern ..."; doing so used to change nothing,
    the file stayed "quarantined before" until touched. A changed ingest rule now tries the
    quarantined files again; with the rule unchanged they are not re-read."""
    from flows.cli import main

    _band(tmp_path / "in" / "field_2020-01-05.tif", 100, size=4, res=10)
    _band(tmp_path / "in" / "field_15-03-2020.tif", 200, size=4, res=10)  # no date the default rules read
    out = str(tmp_path / "f.zarr")
    assert main(["ingest", str(tmp_path / "in"), "--out", out]) == 0
    assert "1 scenes ingested, 0 skipped, 1 quarantined" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "in"), "--out", out]) == 0
    assert "0 scenes ingested, 1 skipped, 0 quarantined" in capsys.readouterr().out  # quarantined before
    rule = ["--date-pattern", r"_(?P<date>\d{2}-\d{2}-\d{4})\.tif", "--date-format", "%d-%m-%Y"]
    assert main(["ingest", str(tmp_path / "in"), "--out", out, *rule]) == 0
    assert "1 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(out)
    assert [str(t)[:10] for t in ds.time.values] == ["2020-01-05", "2020-03-15"]
    assert float(ds.data.isel(time=1).mean()) == 200.0


def test_a_band_with_no_value_is_named_and_bands_can_be_chosen(tmp_path: Path, capsys) -> None:
    """A band that is nodata everywhere (an unused band of an export) left no pixel valid, as a
    pixel is valid only where every band is observed; the cube read "0 % observed" and every stage
    refused it without saying why. Ingest now names the band, and --bands leaves it out."""
    from flows.cli import main

    for d in ("2020-01-05", "2020-01-15"):
        a = np.full((3, 4, 4), 500, np.uint16)
        a[2] = 0  # band 3: nodata everywhere
        (tmp_path / "in").mkdir(exist_ok=True)
        with rasterio.open(tmp_path / "in" / f"s_{d}.tif", "w", driver="GTiff", width=4, height=4, count=3,
                           dtype="uint16", crs="EPSG:32633", transform=from_origin(600000, 5000000, 10, 10),
                           nodata=0) as ds:
            ds.write(a)
    from tasks.adhoc import _warn_empty_bands, describe_bands

    first = str(tmp_path / "in" / "s_2020-01-05.tif")
    assert _warn_empty_bands(first, describe_bands(first)) == ["band3"]  # named in the ingest's warning
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "all.zarr")]) == 0
    assert not xr.open_zarr(tmp_path / "all.zarr").valid.values.any()
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "two.zarr"), "--bands", "band2,band1"]) == 0
    ds = xr.open_zarr(tmp_path / "two.zarr")
    assert list(ds.band.values) == ["band2", "band1"] and ds.valid.values.all()
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "x.zarr"), "--bands", "band1,red"]) == 2
    assert "--bands band1,red: no band ['red'] in s_2020-01-05.tif; its bands are ['band1', 'band2', 'band3']" in (
        capsys.readouterr().err)
    assert not (tmp_path / "x.zarr").exists()


def test_an_ingest_that_takes_no_scene_says_no_cube_was_written(tmp_path: Path, capsys) -> None:
    """Every scene outside --bounds: it printed "cube X: 0 time steps" of a cube it never wrote."""
    from flows.cli import main

    _band(tmp_path / "in" / "f_2020-01-05.tif", 100, size=4, res=10)
    out = tmp_path / "f.zarr"
    assert main(["ingest", str(tmp_path / "in"), "--out", str(out), "--bounds", "100000", "100000", "100500",
                 "100500"]) == 1  # no cube: a failure for a script
    text = capsys.readouterr().out
    assert f"no cube written at {out}: no scene was taken (0 scenes ingested, 1 skipped" in text
    assert "skipped f_2020-01-05.tif: outside the cube's bounds" in text and not out.exists()
    assert "fusioncube run" not in text and "run the command again with what the reasons above ask for" in text


def test_date_in_folders() -> None:
    from tasks.discover import date_in_folders

    assert str(date_in_folders("/data/S2B_33UUP_20230612_0_L2A/B02.tif"))[:10] == "2023-06-12"
    assert str(date_in_folders("/data/2021-07-04/tile_3/scene.tif"))[:10] == "2021-07-04"
    assert date_in_folders("/data/tiles/scene.tif") is None
    # a day of year only as MODIS writes it: seven bare digits in a folder are an order number
    assert date_in_folders("/data/order_2024001/scene.tif") is None
    assert str(date_in_folders("/data/MOD09GA.A2019182.h12v10/sur_refl_b01.tif"))[:10] == "2019-07-01"
    assert str(date_in_folders("https://host/cogs/S2A_T33UUP_20230612T100559_L2A/B04.tif?sig=1"))[:10] == "2023-06-12"


def _qa_pixel(path: Path, *, cloudy_rows: int) -> None:
    qa = np.full((8, 8), 21824, np.uint16)  # clear
    qa[:cloudy_rows] = 22280  # cloud (bit 3) + dilated cloud (bit 1)
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(600000, 5000000, 30, 30)) as ds:
        ds.write(qa, 1)


def _mtl(path: Path, *, sun: float, bands: dict[str, tuple[float, float]], thermal: dict[str, tuple[float, float]]) -> None:
    """A Collection 2 Level-1 MTL.txt with the keys the radiometry reads (and others around them)."""
    lines = ["GROUP = LANDSAT_METADATA_FILE", "  GROUP = IMAGE_ATTRIBUTES", '    SPACECRAFT_ID = "LANDSAT_8"',
             "    SUN_AZIMUTH = 132.1", f"    SUN_ELEVATION = {sun}", "  END_GROUP = IMAGE_ATTRIBUTES",
             "  GROUP = LEVEL1_RADIOMETRIC_RESCALING"]
    for b, (m, a) in thermal.items():
        lines += [f"    RADIANCE_MULT_BAND_{b} = {m:.4E}", f"    RADIANCE_ADD_BAND_{b} = {a:.5f}"]
    for b, (m, a) in bands.items():
        lines += [f"    RADIANCE_MULT_BAND_{b} = 1.2E-02", f"    RADIANCE_ADD_BAND_{b} = -60.0",
                  f"    REFLECTANCE_MULT_BAND_{b} = {m:.4E}", f"    REFLECTANCE_ADD_BAND_{b} = {a:.6f}"]
    lines += ["  END_GROUP = LEVEL1_RADIOMETRIC_RESCALING", "END_GROUP = LANDSAT_METADATA_FILE", "END"]
    path.write_text("\n".join(lines) + "\n")


def test_cli_ingests_a_landsat_level1_bundle_as_toa_reflectance(tmp_path: Path, capsys) -> None:
    """A Landsat Collection 2 Level-1 scene (bands B1..B11 as digital numbers, QA_PIXEL, MTL):
    QA_PIXEL is the mask, each scene's reflective bands become top-of-atmosphere reflectance with
    its own sun elevation from its MTL, thermal bands radiance; the 15 m panchromatic band and the
    angle layers are not taken. Without an MTL nothing is converted, and the log says why."""
    from flows.cli import main

    ls = tmp_path / "l1"
    suns = {"20190801": 60.0, "20200115": 25.0}  # summer and winter: the same DN, other reflectance
    for d, sun in suns.items():
        stem = f"LC08_L1TP_044034_{d}_20200827_02_T1"
        for b, v in (("B2", 10000), ("B3", 12000), ("B10", 30000), ("SAA", 5000)):
            _band(ls / f"{stem}_{b}.TIF", v, size=8, res=30)
        _band(ls / f"{stem}_B8.TIF", 9000, size=16, res=15)
        _qa_pixel(ls / f"{stem}_QA_PIXEL.TIF", cloudy_rows=1)
        _mtl(ls / f"{stem}_MTL.txt", sun=sun, bands={"2": (2e-5, -0.1), "3": (2e-5, -0.1), "8": (2e-5, -0.1)},
             thermal={"10": (3.342e-4, 0.1)})
    assert main(["ingest", str(ls), "--out", str(tmp_path / "l1.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "l1.zarr")
    assert list(ds.band.values) == ["B2", "B3", "B10"] and ds.sizes["y"] == ds.sizes["x"] == 8  # 30 m, no pan
    for t, sun in enumerate(suns.values()):
        sine = np.sin(np.radians(sun))
        np.testing.assert_allclose(ds.data.isel(time=t, y=-1).mean("x").values,
                                   [(2e-5 * 10000 - 0.1) / sine, (2e-5 * 12000 - 0.1) / sine, 3.342e-4 * 30000 + 0.1],
                                   rtol=1e-5)
    assert not ds.valid.values[:, 0].any() and ds.valid.values[:, 1:].all()
    catalog = yaml.safe_load((tmp_path / "l1.zarr.catalog.yaml").read_text())["sources"]["scenes"]
    assert catalog["radiometry"] == "landsat_c2_l1" and "scale" not in catalog["bands"][0]
    assert main(["ingest", str(ls), "--out", str(tmp_path / "dry.zarr"), "--dry-run"]) == 0
    assert "units: per scene, from each scene's product metadata (landsat_c2_l1)" in capsys.readouterr().out

    (ls / "LC08_L1TP_044034_20200115_20200827_02_T1_MTL.txt").unlink()
    logger, seen = logging.getLogger("tasks.adhoc"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)  # the CLI above let Prefect configure logging: caplog sees nothing
    try:
        assert "radiometry" not in build_adhoc_catalog([str(ls)], tmp_path / "dn.zarr")[0]["sources"]["scenes"]
    finally:
        logger.removeHandler(handler)
    assert any("no such MTL file beside the band files" in m and "keeps its digital numbers" in m for m in seen)
    assert main(["ingest", str(ls), "--out", str(tmp_path / "dn.zarr")]) == 0
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "dn.zarr").data.isel(time=0, y=-1).mean("x").values,
                               [10000, 12000, 30000])


def test_landsat_level1_etm_beside_oli_is_matched_by_wavelength_with_each_scenes_mtl(tmp_path: Path, capsys) -> None:
    """Level-1 Landsat 7 ETM+ beside Landsat 8 OLI: ETM+ B3 / B4 are red / NIR, OLI B4 / B5. Each
    date's red and nir08 come from its own sensor's files, in top-of-atmosphere reflectance with its
    own MTL's gains and sun elevation (looked up by band file, not by the common name)."""
    from flows.cli import main

    ls = tmp_path / "l1"
    scenes = (("LC08_L1TP_044034_20190801_20200827_02_T1", 60.0, {"B4": 10000, "B5": 20000}, ("4", "5")),
              ("LE07_L1TP_044034_20190809_20200827_02_T1", 30.0, {"B3": 11000, "B4": 21000}, ("3", "4")))
    for stem, sun, values, (red, nir) in scenes:
        for b, v in values.items():
            _band(ls / f"{stem}_{b}.TIF", v, size=8, res=30)
        _qa_pixel(ls / f"{stem}_QA_PIXEL.TIF", cloudy_rows=1)
        _mtl(ls / f"{stem}_MTL.txt", sun=sun, bands={red: (2e-5, -0.1), nir: (3e-5, -0.1)}, thermal={})
    assert main(["ingest", str(ls), "--out", str(tmp_path / "l1.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "l1.zarr")
    assert list(ds.band.values) == ["red", "nir08"]
    for t, (_, sun, values, _) in enumerate(scenes):
        red_dn, nir_dn = values.values()
        sine = np.sin(np.radians(sun))
        np.testing.assert_allclose(ds.data.isel(time=t, y=-1, x=0).values,
                                   [(2e-5 * red_dn - 0.1) / sine, (3e-5 * nir_dn - 0.1) / sine], rtol=1e-5)
    catalog = yaml.safe_load((tmp_path / "l1.zarr.catalog.yaml").read_text())["sources"]
    assert {k: v["radiometry"] for k, v in catalog.items()} == {"scenes_oli": "landsat_c2_l1",
                                                                "scenes_etm": "landsat_c2_l1"}


def test_landsat_level1_radiometry_reads_the_mtl_in_a_bundle_and_names_what_is_wrong(tmp_path: Path) -> None:
    """Landsat 7's two thermal gains (B6_VCID_1 / 2) are bands of their own; the MTL is read inside
    the scene's .tar; a scene whose MTL lacks the sun elevation, or has the sun below the horizon,
    is refused with the reason."""
    import tarfile

    from tasks.errors import SceneError
    from tasks.radiometry import landsat_band, landsat_c2_l1_radiometry

    assert [landsat_band(n) for n in ("LE07_L1TP_1_B6_VCID_1.TIF", "LC09_L1TP_2_B11.TIF", "B4", "x_SR_QA.TIF")] == [
        "6_VCID_1", "11", "4", None]
    stem = "LE07_L1TP_044034_20010801_20200917_02_T1"
    _mtl(tmp_path / f"{stem}_MTL.txt", sun=50.0, bands={"3": (1.2e-3, -0.005)},
         thermal={"6_VCID_1": (6.7e-2, -0.067), "6_VCID_2": (3.7e-2, 3.16)})
    with tarfile.open(tmp_path / f"{stem}.tar", "w") as tar:
        tar.add(tmp_path / f"{stem}_MTL.txt", arcname=f"{stem}_MTL.txt")
    radiometry = landsat_c2_l1_radiometry(f"/vsitar/{tmp_path}/{stem}.tar/{stem}_B6_VCID_2.TIF")
    assert radiometry.scale_offset("6_VCID_2") == (3.7e-2, 3.16)
    np.testing.assert_allclose(radiometry.scale_offset("3"), np.array([1.2e-3, -0.005]) / np.sin(np.radians(50)))
    with pytest.raises(SceneError, match="no rescaling for band 9"):
        radiometry.scale_offset("9")
    (tmp_path / f"{stem}_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n    SUN_ELEVATION = -3.5\n")
    with pytest.raises(SceneError, match="SUN_ELEVATION -3.5 degrees: the sun is not above the horizon"):
        landsat_c2_l1_radiometry(str(tmp_path / f"{stem}_B3.TIF"))


def test_cli_ingest_recognises_a_planet_order(tmp_path: Path, capsys) -> None:
    """A PlanetScope order folder (surface reflectance + UDM2 beside it): the UDM2 files are the
    mask, not scenes, and the SR digital numbers are scaled by 1e-4. The order's radiance files
    are not surface reflectance: skipped, not reported as bad scenes."""
    from flows.cli import main

    t = from_origin(600000, 5000000, 3, 3)
    for d in ("20190612_163402_1012", "20190614_163502_1013"):
        with rasterio.open(tmp_path / f"{d}_3B_AnalyticMS_SR_8b_clip.tif", "w", driver="GTiff", width=8, height=8,
                           count=2, dtype="uint16", crs="EPSG:32615", transform=t, nodata=0) as ds:
            ds.write(np.full((2, 8, 8), [[[500]], [[3000]]], np.uint16))
        udm = np.zeros((8, 8, 8), np.uint8)
        udm[0] = 1
        udm[0, :, :2] = 0  # not clear
        with rasterio.open(tmp_path / f"{d}_3B_udm2_clip.tif", "w", driver="GTiff", width=8, height=8, count=8,
                           dtype="uint8", crs="EPSG:32615", transform=t) as ds:
            ds.write(udm)
        # the order's radiance product beside it: not surface reflectance, not to be mixed in
        with rasterio.open(tmp_path / f"{d}_3B_AnalyticMS_8b_clip.tif", "w", driver="GTiff", width=8, height=8,
                           count=2, dtype="uint16", crs="EPSG:32615", transform=t, nodata=0) as ds:
            ds.write(np.full((2, 8, 8), 9999, np.uint16))
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "order.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "order.zarr")
    assert ds.sizes["time"] == 2 and ds.sizes["band"] == 2
    np.testing.assert_allclose(ds.data.isel(time=0, x=-1, y=0).values, [0.05, 0.3], rtol=1e-6)
    assert not ds.valid.values[:, :, :2].any() and ds.valid.values[:, :, 2:].all()


def test_cli_ingest_takes_alpha_and_mask_bands_as_the_valid_mask(tmp_path: Path) -> None:
    """An RGBA GeoTIFF's alpha band and a GDAL mask band (as JPEG-compressed COGs carry) mark the
    pixels they hide not valid; the alpha band is no cube band, and RGB bands get colour names."""
    from flows.cli import main

    t = from_origin(600000, 5000000, 10, 10)
    rgb = np.full((3, 16, 16), 100, np.uint8)
    alpha = np.full((16, 16), 255, np.uint8)
    alpha[:4, :4] = 0
    for d in ("2020-01-01", "2020-02-01"):
        with rasterio.open(tmp_path / f"rgba_{d}.tif", "w", driver="GTiff", width=16, height=16, count=4,
                           dtype="uint8", crs="EPSG:32633", transform=t, photometric="RGB", alpha="YES") as ds:
            ds.write(rgb, [1, 2, 3])
            ds.write(alpha, 4)
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        with rasterio.open(tmp_path / f"masked_{d}.tif", "w", driver="GTiff", width=16, height=16, count=3,
                           dtype="uint8", crs="EPSG:32633", transform=t) as ds:
            ds.write(rgb)
            ds.write_mask(alpha)
    for kind in ("rgba", "masked"):  # GDAL writes 3-band uint8 as RGB: colour names both times
        assert main(["ingest", str(tmp_path / f"{kind}_*.tif"), "--out", str(tmp_path / f"{kind}.zarr")]) == 0
        ds = xr.open_zarr(tmp_path / f"{kind}.zarr")
        assert list(ds.band.values) == ["red", "green", "blue"]
        valid = ds.valid.values
        assert not valid[:, :4, :4].any() and valid.sum() == 2 * (256 - 16), kind


def test_catalog_landsat_band_files_with_qa_pixel_mask(tmp_path: Path) -> None:
    """The commented Landsat example of data_catalog.yaml: band files, scale / offset from the
    catalog, QA_PIXEL bits as the mask sidecar of the scene's first band file."""
    import yaml

    from tasks.catalog import catalog_from_dict
    from tasks.ingest import ingest_cube

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "data_catalog.yaml").read_text()
    block = text[text.index("  # landsat:"):text.index("\ncubes:")]
    source = yaml.safe_load("\n".join(line.replace("  # ", "  ", 1) for line in block.splitlines()))["landsat"]
    source["glob"] = str(tmp_path / "LC0[89]_L2SP_*_SR_B[2-5].TIF")
    stem = "LC08_L2SP_044034_20190801_20200827_02_T1_{}.TIF"
    for b, v in (("SR_B2", 10000), ("SR_B3", 12000), ("SR_B4", 14000), ("SR_B5", 20000)):
        _band(tmp_path / stem.format(b), v, size=8, res=30)
    qa = np.full((8, 8), 21824, np.uint16)  # clear
    qa[:2, :] = 22280  # cloud (bit 3) + dilated cloud (bit 1)
    with rasterio.open(tmp_path / stem.format("QA_PIXEL"), "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="uint16", crs="EPSG:32633", transform=from_origin(600000, 5000000, 30, 30)) as ds:
        ds.write(qa, 1)
    cat = catalog_from_dict({
        "sources": {"landsat": source},
        "cubes": {"landsat": {"sources": ["landsat"], "path": str(tmp_path / "l.zarr")}},
        "storage": {"root": str(tmp_path)},
    }, path=tmp_path / "c.yaml")
    report = ingest_cube(cat, "landsat")
    assert not report.quarantined
    ds = xr.open_zarr(tmp_path / "l.zarr")
    assert list(ds.band.values) == ["blue", "green", "red", "nir"]
    np.testing.assert_allclose(ds.data.isel(time=0).mean(["y", "x"]).values, [0.075, 0.13, 0.185, 0.35], rtol=1e-4)
    assert not ds.valid.values[0, :2].any() and ds.valid.values[0, 2:].all()


def test_cli_ingests_a_south_up_raster_the_right_way_up(tmp_path: Path) -> None:
    """A GeoTIFF with a positive y pixel size (rows bottom-up, as NetCDF-derived files often are):
    the cube is north-up and its first row is the file's last."""
    from rasterio.transform import Affine

    from flows.cli import main

    a = np.arange(16 * 16, dtype=np.float32).reshape(1, 16, 16)
    with rasterio.open(tmp_path / "up_2020-01-01.tif", "w", driver="GTiff", width=16, height=16, count=1,
                       dtype="float32", crs="EPSG:32633", transform=Affine(10, 0, 600000, 0, 10, 5000000)) as ds:
        ds.write(a)
    assert main(["ingest", str(tmp_path / "up_2020-01-01.tif"), "--out", str(tmp_path / "up.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "up.zarr")
    assert float(ds.y[0]) == 5000155.0 and float(ds.y[-1]) == 5000005.0
    np.testing.assert_array_equal(ds.data.values[0, 0], a[0, ::-1])
    assert ds.valid.values.all()


def test_cli_ingest_of_a_gcp_only_raster_says_how_to_warp_it(tmp_path: Path, capfd) -> None:
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    from flows.cli import main

    path = tmp_path / "s1_2020-01-01.tif"
    gcps = [GroundControlPoint(r, c, 600000 + 10 * c, 5000000 - 10 * r) for r in (0, 16) for c in (0, 16)]
    with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=1, dtype="float32") as ds:
        ds.write(np.ones((1, 16, 16), np.float32))
        ds.gcps = (gcps, CRS.from_epsg(32633))
    assert main(["ingest", str(path), "--out", str(tmp_path / "g.zarr")]) == 2
    err = capfd.readouterr().err
    assert f"{path}: is georeferenced by 4 ground control points only" in err
    assert "gdalwarp -t_srs EPSG:32633" in err


def test_cli_ingests_a_cf_netcdf_on_lon_lat_axes_without_a_grid_mapping(tmp_path: Path) -> None:
    """A NetCDF as xarray writes it by default: latitude ascending, lon / lat axes in degrees,
    no grid mapping. It is WGS 84 lon / lat; the cube is north-up, one band per variable, one date
    per time step, NaN not valid."""
    import pandas as pd

    from flows.cli import main

    lat = np.arange(-12.0, -11.0, 0.1) + 0.05
    lon = np.arange(-56.0, -55.2, 0.1) + 0.05
    a = np.random.default_rng(0).random((3, lat.size, lon.size)).astype("float32")
    a[0, 0, 0] = np.nan  # the south-west corner of the first date
    nc = xr.Dataset({"ndvi": (("time", "lat", "lon"), a), "evi": (("time", "lat", "lon"), a / 2)},
                    coords={"time": pd.date_range("2020-01-01", periods=3, freq="8D"), "lat": lat, "lon": lon})
    nc.lat.attrs.update(units="degrees_north", standard_name="latitude")
    nc.lon.attrs.update(units="degrees_east", standard_name="longitude")
    nc.to_netcdf(tmp_path / "vi.nc")
    assert main(["ingest", str(tmp_path / "vi.nc"), "--out", str(tmp_path / "vi.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "vi.zarr")
    assert list(ds.band.values) == ["ndvi", "evi"] and ds.sizes["time"] == 3
    assert "WGS 84" in ds.spatial_ref.attrs["crs_wkt"]
    np.testing.assert_allclose(ds.y.values, lat[::-1]) and np.testing.assert_allclose(ds.x.values, lon)
    np.testing.assert_array_equal(ds.data.values[:, 0], a[:, ::-1])
    assert not ds.valid.values[0, -1, 0] and ds.valid.values.sum() == 3 * a[0].size - 1


def _lon_lat_netcdf(path: Path, data: dict[str, tuple[tuple[str, ...], np.ndarray]], **coords) -> None:
    lat, lon = np.arange(-12.0, -11.0, 0.1) + 0.05, np.arange(-56.0, -55.2, 0.1) + 0.05
    nc = xr.Dataset(data, coords={"lat": lat, "lon": lon, **coords})
    nc.lat.attrs.update(units="degrees_north", standard_name="latitude")
    nc.lon.attrs.update(units="degrees_east", standard_name="longitude")
    nc.to_netcdf(path)


def test_cli_ingests_a_one_variable_netcdf_time_series_one_date_per_step(tmp_path: Path) -> None:
    """One variable with a time dimension (an ERA5 / CHIRPS-style download): GDAL shows its time
    steps as bands. They are dates, not bands: one band named after the variable, each step on
    its date, values exact; the cube's x / y say they are longitude / latitude in degrees."""
    import pandas as pd

    from flows.cli import main

    a = (280 + 10 * np.random.default_rng(1).random((4, 10, 8))).astype("float32")
    a[2, 3:5, 2:6] = np.nan  # a cloud on the third date
    times = pd.date_range("2021-07-01", periods=4, freq="5D")
    _lon_lat_netcdf(tmp_path / "lst_series.nc", {"lst": (("time", "lat", "lon"), a)}, time=times)
    assert main(["ingest", str(tmp_path / "lst_series.nc"), "--out", str(tmp_path / "lst.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "lst.zarr")
    assert list(ds.band.values) == ["lst"]
    np.testing.assert_array_equal(ds.time.values, times.values)
    np.testing.assert_array_equal(ds.data.values[:, 0], a[:, ::-1])
    assert ds.valid.values.sum() == a.size - 8 and not ds.valid.values[2].all()
    assert ds.x.attrs["units"] == "degrees_east" and ds.y.attrs["standard_name"] == "latitude"


def test_a_sub_daily_netcdf_series_gives_each_date_its_first_step_and_says_so(tmp_path: Path, capsys) -> None:
    """Hourly steps (ERA5) are not tiles of one date: the date's slice is the first step, exact,
    not a mosaic of the hours, and each later step is reported as skipped with the way out."""
    import pandas as pd

    from flows.cli import main

    a = (270 + 20 * np.random.default_rng(2).random((6, 10, 8))).astype("float32")
    times = pd.date_range("2022-07-01", periods=6, freq="8h")  # 3 steps on the 1st, 3 on the 2nd
    _lon_lat_netcdf(tmp_path / "t2m.nc", {"t2m": (("time", "lat", "lon"), a)}, time=times)
    assert main(["ingest", str(tmp_path / "t2m.nc"), "--out", str(tmp_path / "t2m.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "t2m.zarr")
    np.testing.assert_array_equal(ds.time.values, times.values[[0, 3]])
    np.testing.assert_array_equal(ds.data.values[:, 0], a[[0, 3], ::-1])
    out = capsys.readouterr().out
    assert out.count("another time step of t2m.nc on this date") == 4 and "(08:00)" in out
    assert "resample sub-daily data to daily first" in out


def test_the_ingest_report_lists_the_first_skipped_and_quarantined_scenes_and_counts_the_rest(capsys) -> None:
    """A year of hourly steps skips thousands: the command prints the first REPORT_ROWS of each."""
    from flows.cli import REPORT_ROWS, _print_report

    skipped = [{"scene": f"era5.nc#t{i}", "reason": "another time step"} for i in range(REPORT_ROWS + 7)]
    _print_report({"path": "c.zarr", "time_steps": 1, "dates_added": ["2022-07-01"], "ingested": [{}],
                   "skipped": skipped, "quarantined": [{"scene": "bad.tif", "reason": "no CRS"}]})
    out = capsys.readouterr().out
    assert out.count("  skipped era5.nc#t") == REPORT_ROWS and "  ... and 7 more skipped" in out
    assert "  quarantined bad.tif: no CRS" in out and "more quarantined" not in out


def test_a_netcdf_variable_with_time_and_another_dimension_is_refused_by_name(tmp_path: Path, capfd) -> None:
    """Time x level: GDAL's bands mix the two, so which band is which date is not a guess to make."""
    import pandas as pd

    from flows.cli import main

    a = np.ones((2, 3, 10, 8), np.float32)
    _lon_lat_netcdf(tmp_path / "t_2021-07-01.nc", {"t": (("time", "level", "lat", "lon"), a)},
                    time=pd.date_range("2021-07-01", periods=2), level=[1000.0, 850.0, 500.0])
    assert main(["ingest", str(tmp_path / "t_2021-07-01.nc"), "--out", str(tmp_path / "t.zarr")]) == 2
    err = capfd.readouterr().err
    assert "t_2021-07-01.nc: a NetCDF variable with dimensions ['time', 'level'] beyond y / x" in err
    assert "select one 'level' first" in err and not (tmp_path / "t.zarr").exists()
    # (lat, lon, time): GDAL would read lon x time as the raster
    _lon_lat_netcdf(tmp_path / "v.nc", {"v": (("lat", "lon", "time"), np.ones((10, 8, 2), np.float32))},
                    time=pd.date_range("2021-07-01", periods=2))
    assert main(["ingest", str(tmp_path / "v.nc"), "--out", str(tmp_path / "v.zarr")]) == 2
    assert "v.nc: its variable's dimension 'lat' is not among its last two" in capfd.readouterr().err


def test_cli_ingest_takes_appeears_style_layer_files_as_bands(tmp_path: Path) -> None:
    """Layers stored one file each, named without a band token (NASA AppEEARS): one band per layer,
    not a mosaic of LST with its QC layer; the QC layer, recognised beside LST, is its mask
    (bits 0-1 = 2 or 3: not produced). Tiles of one date on other footprints stay tiles."""
    from rasterio.transform import from_origin

    from flows.cli import main
    from tasks.adhoc import detect_layer_files

    sinu = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
    for doy in (182, 183):
        for layer, v in (("LST_Day_1km", 15000), ("Emis_31", 200), ("QC_Day", 0)):
            with rasterio.open(tmp_path / f"MOD11A1.061_{layer}_doy2019{doy}_aid0001.tif", "w", driver="GTiff",
                               width=6, height=6, count=1, dtype="uint16", crs=sinu,
                               transform=from_origin(-6000000, 4000000, 926.6, 926.6)) as ds:
                a = np.full((1, 6, 6), v, np.uint16)
                if layer == "QC_Day":
                    a[0, 0] = 2  # LST not produced (cloud)
                    a[0, 1] = 0b01000001  # other quality, emissivity error flag set: still produced
                ds.write(a)
    pattern = detect_layer_files(sorted(str(p) for p in tmp_path.glob("*.tif")))
    assert pattern == r"(?<=MOD11A1\.061_)(?P<band>LST_Day_1km|Emis_31|QC_Day)(?=_doy)"
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "lst.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "lst.zarr")
    assert list(ds.band.values) == ["Emis_31", "LST_Day_1km"] and ds.sizes["time"] == 2
    assert not ds.valid.values[:, 0].any() and ds.valid.values[:, 1:].all()
    # the files declare no scale: LST in kelvin by MOD11's user guide (0.02), emissivity as it is
    np.testing.assert_allclose(ds.data.isel(time=1, y=-1).mean("x").values, [200.0, 300.0], rtol=1e-6)

    tiles = tmp_path / "tiles"
    for col, tile in ((0, "h10v05"), (6, "h11v05")):  # one date, two footprints
        _band(tiles / f"MOD11A1.A2019182.{tile}.tif", 1, size=6, res=10)
        with rasterio.open(tiles / f"MOD11A1.A2019182.{tile}.tif", "r+") as ds:
            ds.transform = from_origin(600000 + 60 * col, 5000000, 10, 10)
    assert detect_layer_files(sorted(str(p) for p in tiles.glob("*.tif"))) is None
    # one scene processed twice (same footprint, baseline and processing date in the name): no layers
    for d, pb in (("20190801T101031", "N0213_R022_T33UUP_20190801T121931"),
                  ("20190801T101031", "N0500_R022_T33UUP_20230101T000000"),
                  ("20190811T101031", "N0213_R022_T33UUP_20190811T121931")):
        _band(tmp_path / "twice" / f"S2A_MSIL2A_{d}_{pb}.tif", 1, size=6, res=10)
    assert detect_layer_files(sorted(str(p) for p in (tmp_path / "twice").glob("*.tif"))) is None


def _layer(path: Path, raw: np.ndarray, *, dtype: str = "int16", scale: float | None = None) -> None:
    sinu = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=raw.shape[1], height=raw.shape[0], count=1, dtype=dtype,
                       crs=sinu, transform=from_origin(-6000000, -1300000, 231.66, 231.66)) as ds:
        ds.write(raw.astype(dtype), 1)
        if scale is not None:
            ds.scales = (scale,)


def test_modis_viirs_layers_that_declare_no_units_get_their_user_guides(tmp_path: Path) -> None:
    """MODIS / VIIRS land layers cut from the HDF (AppEEARS exports, sits' JPEG 2000, Earth Engine
    downloads) keep raw integers and declare no scale or fill: the cube holds NDVI, EVI and kelvin,
    with the fill and values outside the valid range not observed. A quality layer, a file of
    floats, a declared scale and a file of another product are left as they are."""
    from tasks.adhoc import known_layer
    from tasks.ingest import ingest_cube

    raw = np.array([[-3000, -2500, 0, 5000], [8000, 10000, 10001, 2000]])
    reliability = np.array([[0, 0, 1, 3], [0, 2, 0, 1]])  # 3 cloudy, 2 snow: not clear
    for doy in ("2019177", "2019193"):
        for layer in ("NDVI", "EVI", "pixel_reliability"):
            _layer(tmp_path / "vi" / f"MOD13Q1.061__250m_16_days_{layer}_doy{doy}_aid0001.tif",
                   raw if layer != "pixel_reliability" else reliability)
    ingest_cube(load_catalog(adhoc_catalog([str(tmp_path / "vi")], tmp_path / "vi.zarr")), "vi")
    ds = xr.open_zarr(tmp_path / "vi.zarr")
    assert list(ds.band.values) == ["EVI", "NDVI"]  # the reliability layer is their mask
    ok = (raw >= -2000) & (raw <= 10000)
    clear = ok & (reliability <= 1)
    np.testing.assert_array_equal(ds.valid.values[0], clear)  # the fill, 10001, cloud and snow: not observed
    for b in ("NDVI", "EVI"):
        np.testing.assert_allclose(ds.data.sel(band=b).values[0][clear], raw[clear] * 1e-4, rtol=1e-6)

    # one band per file named by the layer: the band takes the layer's name
    _layer(tmp_path / "sits" / "TERRA_MODIS_012010_EVI_2013-09-14.tif", raw)
    raw_, path = build_adhoc_catalog([str(tmp_path / "sits")], tmp_path / "evi.zarr")
    band = raw_["sources"]["scenes"]["bands"][0]
    assert band == {"name": "EVI", "index": 1, "scale": 1e-4, "valid_min": -0.2, "valid_max": 1.0, "nodata": -3000.0}
    # --scale alone: the valid range stays on the same raw values (-2000 .. 10000), in the new units
    band = build_adhoc_catalog([str(tmp_path / "sits")], tmp_path / "evi.zarr",
                               units={"scale": 1e-3})[0]["sources"]["scenes"]["bands"][0]
    assert band["scale"] == 1e-3 and (band["valid_min"], band["valid_max"]) == pytest.approx((-2.0, 10.0))
    for name, kwargs in (("MOD13Q1_NDVI_2019-06-26.tif", {"dtype": "float32"}),  # physical already
                         ("MOD13Q1_NDVI_2019-06-26.tif", {"scale": 1e-3}),  # the file's word
                         ("S2_NDVI_2019-06-26.tif", {})):  # not a MODIS / VIIRS file
        folder = tmp_path / f"case{len(list(tmp_path.glob('case*')))}"
        _layer(folder / name, raw / (1e4 if kwargs.get("dtype") else 1), **kwargs)
        band = build_adhoc_catalog([str(folder)], folder / "c.zarr")[0]["sources"]["scenes"]["bands"][0]
        assert band.get("scale") == kwargs.get("scale") and "valid_min" not in band, (name, band)
        assert band["name"] == ("band1" if name.startswith("S2") else "NDVI")
    assert known_layer("MYD11A2.A2019185.h12v10.061.LST_Night_1km.tif", "LST_Night_1km").scale == 0.02
    assert known_layer("MOD09GA.061_sur_refl_b01_1_doy2019182.tif", "sur_refl_b01_1").scale == 1e-4
    assert known_layer("MOD09A1.061_sur_refl_qc_500m_doy2019177.tif", "sur_refl_qc_500m") is None  # its QA layer
    assert known_layer("VNP13A1.002_500m_16_days_EVI2_doy2019177.tif", "500m_16_days_EVI2").name.startswith("MODIS")
    assert known_layer("LANDSAT_NDVI_2019.tif", "LANDSAT_NDVI_2019.tif") is None


@pytest.mark.parametrize(
    ("bands", "rgb"),
    [
        (["blue", "green", "red", "nir"], ["red", "green", "blue"]),
        (["B02", "B03", "B04", "B8A"], ["B04", "B03", "B02"]),
        (["SR_B2", "SR_B3", "SR_B4", "SR_B5"], ["SR_B4", "SR_B3", "SR_B2"]),
        (["sur_refl_b01", "sur_refl_b02", "sur_refl_b03", "sur_refl_b04"], ["sur_refl_b01", "sur_refl_b04", "sur_refl_b03"]),
        (["ndvi", "evi"], None),
    ],
)
def test_quick_looks_find_true_colour_bands_by_product_names(bands: list[str], rgb: list[str] | None) -> None:
    from tasks.quicklook import rgb_bands

    assert rgb_bands(bands) == rgb


def test_cli_ingests_a_file_whose_bands_are_dates(tmp_path: Path) -> None:
    """A time series stacked into one GeoTIFF (Earth Engine's toBands() export: band descriptions
    20190117_NDVI, 20190117_EVI, ...): one cube date per date, one band per variable. Before, the
    file was one scene without a date (quarantined), or with --date one date of six 'bands'."""
    from flows.cli import main

    dates = ["20190117", "20190101", "20190202"]  # not in order in the file
    descriptions = [f"{d}_{v}" for d in dates for v in ("NDVI", "EVI")]
    with rasterio.open(tmp_path / "stack.tif", "w", driver="GTiff", width=6, height=6, count=6, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(-55.5, -11.8, 0.01, 0.01), nodata=-9999) as ds:
        for i, desc in enumerate(descriptions):
            value = int(desc[6:8]) + (0.5 if desc.endswith("EVI") else 0.0)  # day of month (+0.5 for EVI)
            a = np.full((6, 6), value, np.float32)
            a[0, 0] = -9999
            ds.write(a, i + 1)
            ds.set_band_description(i + 1, desc)
    assert main(["ingest", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "ts.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "ts.zarr")
    assert list(ds.band.values) == ["NDVI", "EVI"]
    assert [str(t)[:10] for t in ds.time.values] == ["2019-01-01", "2019-01-17", "2019-02-02"]
    np.testing.assert_allclose(ds.data.isel(y=-1, x=-1).values, [[1, 1.5], [17, 17.5], [2, 2.5]])
    assert not ds.valid.values[:, 0, 0].any() and ds.valid.values[:, 1:, :].all()


def test_date_stack_layouts() -> None:
    from tasks.discover import date_stack, stack_variables

    stack = date_stack(("NDVI_2019-02-01", "NDVI_2019-01-01"))
    assert [(str(d)[:10], b) for d, b in stack] == [("2019-01-01", [2]), ("2019-02-01", [1])]
    assert stack_variables(("NDVI_2019-02-01", "NDVI_2019-01-01")) == ["NDVI"]
    assert date_stack(("red", "green", "blue")) is None  # ordinary bands
    assert date_stack(("20190101_NDVI", "20190101_EVI", "20190117_NDVI")) is None  # a date lacks EVI
    assert date_stack(("20190101_NDVI", "20190101_NDVI")) is None  # one date only, twice
    assert date_stack((None, "20190101")) is None


def test_cli_ingests_sentinel1_rtc_layers_with_a_granule_code(tmp_path: Path) -> None:
    """ASF's Sentinel-1 RTC products: one file per layer (VV, VH, a uint8 layover/shadow map
    without nodata), and a granule code besides the date that differs between dates. Before, the
    layers of a date were mosaicked into one band as if they were tiles, silently."""
    from flows.cli import main

    for d, granule in (("20230612T100559", "1A2B"), ("20230624T100600", "3C4D")):
        folder = tmp_path / f"S1A_IW_{d}_DVP_RTC30_G_gpuned_{granule}"
        for layer, value, dtype, nodata in (("VV", 0.2, "float32", 0.0), ("VH", 0.05, "float32", 0.0),
                                            ("ls_map", 1, "uint8", None)):
            folder.mkdir(exist_ok=True)
            with rasterio.open(folder / f"{folder.name}_{layer}.tif", "w", driver="GTiff", width=6, height=6, count=1,
                               dtype=dtype, crs="EPSG:32633", transform=from_origin(399960, 5800020, 30, 30),
                               nodata=nodata) as ds:
                ds.write(np.full((1, 6, 6), value, dtype))
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "s1.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "s1.zarr")
    assert list(ds.band.values) == ["VH", "VV", "ls_map"] and ds.sizes["time"] == 2
    np.testing.assert_allclose(ds.data.mean(("y", "x")).values, [[0.05, 0.2, 1.0]] * 2, rtol=1e-6)


def _hls(folder: Path, sensor: str, doy: str, bands: dict[str, tuple[int, float]]) -> None:
    """One HLS v2 granule: int16 band COGs declaring their scale_factor, an Fmask (bit 1 cloud)."""
    for b, (v, scale) in {**bands, "Fmask": (0, 0.0)}.items():
        dtype = "uint8" if b == "Fmask" else "int16"
        with rasterio.open(folder / f"HLS.{sensor}.T33UUP.{doy}.v2.0.{b}.tif", "w", driver="GTiff", width=8, height=8,
                           count=1, dtype=dtype, crs="EPSG:32633", transform=from_origin(399960, 5800020, 30, 30),
                           nodata=255 if b == "Fmask" else -9999) as ds:
            a = np.full((1, 8, 8), v, dtype)
            if b == "Fmask":
                a[0, :2] = 2  # cloud
            ds.write(a)
            if scale:
                ds.update_tags(1, scale_factor=str(scale), add_offset="0.0")


def test_cli_ingests_hls_with_fmask_and_scale_factor_metadata(tmp_path: Path, capsys) -> None:
    """NASA HLS v2: band COGs declaring their scale as scale_factor metadata (not a GDAL band
    scale), Fmask beside them (bit 1 cloud), angle layers (SAA) in the same folder."""
    from flows.cli import main

    for doy in ("2023163T100559", "2023168T100601"):
        _hls(tmp_path, "S30", doy, {"B02": (1100, 1e-4), "B8A": (2500, 1e-4), "SAA": (1500, 0.0)})
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "hls.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "hls.zarr")
    assert list(ds.band.values) == ["B02", "B8A"] and [str(t)[:10] for t in ds.time.values] == ["2023-06-12", "2023-06-17"]
    np.testing.assert_allclose(ds.data.isel(time=0, y=-1).mean("x").values, [0.11, 0.25], rtol=1e-6)
    assert not ds.valid.values[:, :2].any() and ds.valid.values[:, 2:].all()


def test_cli_ingests_hls_s30_and_l30_together_with_bands_matched_by_wavelength(tmp_path: Path, capsys) -> None:
    """HLS S30 beside L30 (what HLS is for): the same band file names are other wavelengths (S30
    B05 is red edge, L30 B05 near infrared; S30 B10 cirrus at 1e-4, L30 B10 thermal at 0.01). The
    cube takes the bands both have, named by wavelength, each sensor's files read with their own
    band and scale; the bands only one has are passed over, not quarantined."""
    from flows.cli import main

    s30 = {"B04": (1000, 1e-4), "B05": (1500, 1e-4), "B8A": (2500, 1e-4), "B10": (40, 1e-4), "B11": (3000, 1e-4)}
    l30 = {"B04": (1100, 1e-4), "B05": (2600, 1e-4), "B06": (3100, 1e-4), "B09": (50, 1e-4), "B10": (29000, 0.01)}
    _hls(tmp_path, "S30", "2023163T100559", s30)
    _hls(tmp_path, "L30", "2023170T095812", l30)
    logger, seen = logging.getLogger("tasks.adhoc"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)  # the CLI lets Prefect configure logging: caplog may see nothing
    try:
        assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "hls.zarr")]) == 0
    finally:
        logger.removeHandler(handler)
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    assert any("nir08 = HLS S30 B8A / HLS L30 B05" in m and "HLS S30 (Sentinel-2): B05" in m for m in seen), seen
    ds = xr.open_zarr(tmp_path / "hls.zarr")
    assert list(ds.band.values) == ["red", "nir08", "swir16", "cirrus"]
    np.testing.assert_allclose(ds.data.isel(y=-1).mean("x").values,
                               [[0.10, 0.25, 0.30, 0.004], [0.11, 0.26, 0.31, 0.005]], rtol=1e-6)
    assert not ds.valid.values[:, :2].any() and ds.valid.values[:, 2:].all()
    catalog = yaml.safe_load((tmp_path / "hls.zarr.catalog.yaml").read_text())
    assert catalog["cubes"]["hls"]["sources"] == ["scenes_s30", "scenes_l30"]
    assert catalog["sources"]["scenes_l30"]["unused_band_files"] == ["B10"]
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "dry.zarr"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "  source scenes_l30: " in text and "    band nir08: file 'B05', scale 0.0001" in text
    # a glob of the user's holding both sensors cannot be split by sensor: refused, saying why
    assert main(["ingest", str(tmp_path / "HLS.*.tif"), "--out", str(tmp_path / "g.zarr")]) == 2
    assert "number their bands differently" in capsys.readouterr().err


def test_cli_ingests_landsat_7_beside_landsat_8_by_wavelength(tmp_path: Path, capsys) -> None:
    """Collection 2 Level-2 of Landsat 7 ETM+ beside Landsat 8 OLI: ETM+ SR_B4 is near infrared,
    OLI SR_B4 red. Each date's red is the red of its sensor, and --bands takes the common names."""
    from flows.cli import main

    for stem, values in (("LC08_L2SP_044034_20230612_20230614_02_T1", {"SR_B4": 9000, "SR_B5": 20000}),
                         ("LE07_L2SP_044034_20230620_20230716_02_T1", {"SR_B3": 9500, "SR_B4": 21000})):
        folder = tmp_path / stem
        for b, v in values.items():
            _band(folder / f"{stem}_{b}.TIF", v, size=8, res=30)
        _band(folder / f"{stem}_QA_PIXEL.TIF", 1, size=8, res=30)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "l.zarr"), "--bands", "nir08,red"]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "l.zarr")
    assert list(ds.band.values) == ["nir08", "red"]
    np.testing.assert_allclose(ds.data.isel(y=-1, x=-1).values,
                               [[20000 * 2.75e-5 - 0.2, 9000 * 2.75e-5 - 0.2],
                                [21000 * 2.75e-5 - 0.2, 9500 * 2.75e-5 - 0.2]], rtol=1e-5)


def test_cli_ingests_a_sentinel2_l1c_safe_as_toa_reflectance_with_its_cloud_mask(tmp_path: Path, capsys) -> None:
    """A Sentinel-2 Level-1C SAFE: band files in GRANULE/*/IMG_DATA (no resolution in their names),
    the 60 m MSK_CLASSI_B00.jp2 in QI_DATA as the mask (band 1 opaque cloud and band 2 cirrus are
    not clear, band 3 snow is), digital numbers 0 as no data, and top-of-atmosphere reflectance
    (DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE from MTD_MSIL1C.xml. The TCI is not a band."""
    from flows.cli import main

    mtd = ("<n1:Level-1C_User_Product xmlns:n1='x'><General_Info><Product_Image_Characteristics>"
           "<QUANTIFICATION_VALUE unit='none'>10000</QUANTIFICATION_VALUE><Radiometric_Offset_List>"
           + "".join(f"<RADIO_ADD_OFFSET band_id='{i}'>-1000</RADIO_ADD_OFFSET>" for i in range(13))
           + "</Radiometric_Offset_List></Product_Image_Characteristics></General_Info></n1:Level-1C_User_Product>")
    for d in ("20230612T100559", "20230622T100559"):
        safe = tmp_path / f"S2B_MSIL1C_{d}_N0509_R022_T33UUP_{d}.SAFE"
        granule = safe / "GRANULE" / f"L1C_T33UUP_A032000_{d}"
        for b, res, v in (("B02", 10, 2000), ("B03", 10, 3000), ("B11", 20, 4000), ("TCI", 10, 9)):
            _band(granule / "IMG_DATA" / f"T33UUP_{d}_{b}.jp2", v, size=120 // res, res=res)
        with rasterio.open(granule / "IMG_DATA" / f"T33UUP_{d}_B02.jp2", "r+") as ds:
            a = ds.read(1)
            a[-1, -1] = 0  # outside the swath
            ds.write(a, 1)
        classi = np.zeros((3, 2, 2), np.uint8)
        classi[0, 0, 0] = 1  # opaque cloud over the north-west 60 m pixel
        classi[1, 1, 0] = 1  # cirrus over the south-west one
        classi[2, 0, 1] = 1  # snow: observed
        (granule / "QI_DATA").mkdir()
        with rasterio.open(granule / "QI_DATA" / "MSK_CLASSI_B00.jp2", "w", driver="GTiff", width=2, height=2,
                           count=3, dtype="uint8", crs="EPSG:32633", transform=from_origin(600000, 5000000, 60, 60)) as ds:
            ds.write(classi)
        (safe / "MTD_MSIL1C.xml").write_text(mtd)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "l1c.zarr")]) == 0
    assert "2 scenes ingested, 0 skipped, 0 quarantined" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "l1c.zarr")
    assert list(ds.band.values) == ["B02", "B03", "B11"] and ds.sizes["y"] == ds.sizes["x"] == 12  # 10 m
    valid = ds.valid.values
    # cloud and cirrus over the western 60 m pixels, and the 10 m column at their rim whose
    # resampled 20 m B11 takes part of a flagged pixel
    assert not valid[:, :, :7].any() and valid[:, :6, 7:].all()
    np.testing.assert_allclose(ds.data.isel(time=0, y=slice(0, 6), x=slice(6, 12)).mean(("y", "x")).values,
                               [0.1, 0.2, 0.3], rtol=1e-6)
    assert np.isnan(ds.data.values[0, 0, -1, -1]) and not np.isnan(ds.data.values[0, 1, -1, -1])


def test_sentinel2_radiometry_sources_and_refusals(tmp_path: Path) -> None:
    from tasks.errors import SceneError
    from tasks.radiometry import sentinel2_band, sentinel2_l2a_radiometry

    assert [sentinel2_band(n) for n in ("B2", "B02_10m", "T33UUP_20230612T100559_B8A_20m", "SR_B5", "SCL")] == [
        "B02", "B02", "B8A", "B05", None]
    old = sentinel2_l2a_radiometry("/d/S2B_MSIL2A_20200101T100000_N0213_R1_T33UUP_20200101T120000.SAFE/G/B02.jp2")
    assert old.scale_offset("B02") == (1e-4, 0.0) and "baseline 02.13" in old.source
    new = sentinel2_l2a_radiometry("/vsizip//d/x.zip/S2B_MSIL2A_20230101T100000_N0509_R1_T33UUP_20230101T1.SAFE/B02.jp2")
    assert new.scale_offset("B02") == (1e-4, -0.1)
    with pytest.raises(SceneError, match="not inside a Sentinel-2 .SAFE product"):
        sentinel2_l2a_radiometry(str(tmp_path / "T33UUP_20230612T100559_B02_10m.jp2"))
    with pytest.raises(SceneError, match="no MTD_MSIL2A.xml and no processing baseline"):
        sentinel2_l2a_radiometry(str(tmp_path / "renamed.SAFE" / "B02.jp2"))
    # Level-1C: its own metadata file and offset, the same baseline rule
    from tasks.radiometry import sentinel2_l1c_radiometry

    l1c = sentinel2_l1c_radiometry("/d/S2A_MSIL1C_20230101T100000_N0509_R1_T33UUP_20230101T1.SAFE/G/I/B04.jp2")
    assert l1c.scale_offset("B04") == (1e-4, -0.1)
    with pytest.raises(SceneError, match="no MTD_MSIL1C.xml and no processing baseline .* radiometric offset"):
        sentinel2_l1c_radiometry(str(tmp_path / "renamed.SAFE" / "B02.jp2"))


def test_cli_ingest_layer_adds_a_class_map_to_a_new_or_existing_cube(tmp_path: Path, capsys) -> None:
    """`--layer landcover=FILE` puts a class map on the cube's grid (by majority), for the classify
    and labels stages: into a new cube with it, or into a cube made before (written under a
    temporary name and renamed in). A bad spec is one clear line."""
    from flows.cli import main
    from tasks.classify import label_scheme

    for d in ("20190801", "20190811"):
        _band(tmp_path / "scenes" / f"scene_{d}.tif", 1000, size=8, res=30)
    classes = np.full((4, 4), 10, np.uint8)
    classes[:, 2:] = 40
    with rasterio.open(tmp_path / "worldcover.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(600000, 5000000, 60, 60), nodata=0) as ds:
        ds.write(classes, 1)
    layer = f"landcover={tmp_path / 'worldcover.tif'}"
    assert main(["ingest", str(tmp_path / "scenes"), "--out", str(tmp_path / "new.zarr"), "--layer", layer]) == 0
    assert main(["ingest", str(tmp_path / "scenes"), "--out", str(tmp_path / "old.zarr")]) == 0
    assert "landcover" not in xr.open_zarr(tmp_path / "old.zarr")
    assert main(["ingest", str(tmp_path / "scenes"), "--out", str(tmp_path / "old.zarr"), "--layer", layer]) == 0
    assert "layer landcover added" in capsys.readouterr().out
    new, old = xr.open_zarr(tmp_path / "new.zarr"), xr.open_zarr(tmp_path / "old.zarr")
    np.testing.assert_array_equal(new["landcover"].values, np.kron(classes, np.ones((2, 2), np.uint8)))
    np.testing.assert_array_equal(old["landcover"].values, new["landcover"].values)
    assert not [p.name for p in (tmp_path / "old.zarr").iterdir() if p.name.startswith(".tmp")]
    assert label_scheme(old["landcover"]).classes == (10, 40)
    assert main(["ingest", str(tmp_path / "scenes"), "--out", str(tmp_path / "x.zarr"), "--layer", "landcover"]) == 2
    assert "expected NAME=FILE" in capsys.readouterr().err


def test_cli_ingest_reads_each_file_with_its_own_nodata(tmp_path: Path) -> None:
    """Files of one collection declaring different nodata (-9999 in one, 0 in the next): each
    file's own is used. Before, the first file's was written into the catalog for every file, and
    the second file's 0 fill was ingested as observed reflectance 0."""
    from flows.cli import main

    for d, nodata in (("20200101", -9999), ("20200111", 0)):
        a = np.full((1, 6, 6), 0.4, np.float32)
        a[0, :2] = nodata
        with rasterio.open(tmp_path / f"s_{d}.tif", "w", driver="GTiff", width=6, height=6, count=1, dtype="float32",
                           crs="EPSG:32633", transform=from_origin(600000, 5000000, 10, 10), nodata=nodata) as ds:
            ds.write(a)
    assert main(["ingest", str(tmp_path / "*.tif"), "--out", str(tmp_path / "c.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "c.zarr")
    assert not ds.valid.values[:, :2].any() and ds.valid.values[:, 2:].all()
    assert np.isnan(ds.data.values[:, 0, :2]).all()


def test_cli_ingest_quarantines_a_file_of_another_type_when_a_scale_applies(tmp_path: Path, capsys) -> None:
    """A Planet order scaled by 1e-4 with a scene already in reflectance (float32) among its 16-bit
    digital numbers: the float file is another product, quarantined with the reason. Before, its
    0.05 reflectance was scaled to 5e-6."""
    from flows.cli import main

    t = from_origin(600000, 5000000, 3, 3)
    for d, dtype, value in (("20190612_163402_1012", "uint16", 500), ("20190614_163502_1013", "float32", 0.05)):
        with rasterio.open(tmp_path / f"{d}_3B_AnalyticMS_SR_clip.tif", "w", driver="GTiff", width=8, height=8,
                           count=2, dtype=dtype, crs="EPSG:32615", transform=t, nodata=0) as ds:
            ds.write(np.full((2, 8, 8), value, dtype))
        udm = np.zeros((8, 8, 8), np.uint8)
        udm[0] = 1
        with rasterio.open(tmp_path / f"{d}_3B_udm2_clip.tif", "w", driver="GTiff", width=8, height=8, count=8,
                           dtype="uint8", crs="EPSG:32615", transform=t) as ds:
            ds.write(udm)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "c.zarr")]) == 0
    assert "20190614_163502_1013_3B_AnalyticMS_SR_clip.tif: failed validation: dtype float32, expected uint16" in capsys.readouterr().out
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "c.zarr").data.values, 0.05, rtol=1e-6)


def test_cli_ingest_refuses_a_file_with_its_bands_in_another_order(tmp_path: Path, capsys) -> None:
    """Bands named by the first file's descriptions (blue, green, red): a later file described
    red, green, blue is refused with the reason. Before, its red was ingested as blue, silently.
    Files whose descriptions repeat (names band1..) are not checked."""
    from flows.cli import main

    for d, order in (("20200101", ["blue", "green", "red"]), ("20200111", ["red", "green", "blue"])):
        with rasterio.open(tmp_path / f"x_{d}.tif", "w", driver="GTiff", width=4, height=4, count=3, dtype="float32",
                           crs="EPSG:32633", transform=from_origin(600000, 5000000, 10, 10)) as ds:
            for i, name in enumerate(order):
                ds.write(np.full((4, 4), {"blue": 0.1, "green": 0.2, "red": 0.3}[name], np.float32), i + 1)
                ds.set_band_description(i + 1, name)
    assert main(["ingest", str(tmp_path / "*.tif"), "--out", str(tmp_path / "c.zarr")]) == 0
    assert ("x_20200111.tif: its band 1 is described 'red', the source's band 1 is 'blue'; 'blue' is its band 3"
            in capsys.readouterr().out)
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "c.zarr").data.isel(time=0, y=0, x=0).values, [0.1, 0.2, 0.3])
    for f in tmp_path.glob("x_*.tif"):
        with rasterio.open(f, "r+") as ds:
            for i in (1, 2, 3):
                ds.set_band_description(i, "same")
    assert main(["ingest", str(tmp_path / "*.tif"), "--out", str(tmp_path / "same.zarr")]) == 0
    assert xr.open_zarr(tmp_path / "same.zarr").sizes["time"] == 2


def test_cli_ingest_reads_reflectance_from_the_stac_items_beside_the_cogs(tmp_path: Path) -> None:
    """A STAC download with each item's JSON beside its COGs: reflectance per scene from the
    item, the assets' raster:bands first (B02 of the 2023 item: DN * 1e-4 - 0.1), else the
    processing baseline (its B03: offset -1000; the 2021 item's: 0), else Earth Search's
    boa_offset_applied (offset already in the values). The same surface gives the same values."""
    import json

    from flows.cli import main

    items = {"20210612": ({"s2:processing_baseline": "03.00"}, {}, 0),
             "20230622": ({"s2:processing_baseline": "05.09"},
                          {"blue": {"href": "./B02.tif", "raster:bands": [{"scale": 0.0001, "offset": -0.1}]}}, 1000),
             "20230702": ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}, {}, 0)}
    for d, (props, assets, add) in items.items():
        item = tmp_path / f"S2B_33UUP_{d}_0_L2A"
        for b, value in (("B02", 1100), ("B03", 1200), ("SCL", 4)):
            _band(item / f"{b}.tif", value + (add if b != "SCL" else 0), size=6, res=10)
        (item / f"S2B_33UUP_{d}_0_L2A.json").write_text(json.dumps(
            {"type": "Feature", "id": item.name, "properties": props, "assets": assets}))
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "s2.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "s2.zarr")
    np.testing.assert_allclose(ds.data.mean(("y", "x")).values, [[0.11, 0.12]] * 3, rtol=1e-5)
    assert "radiometry: sentinel2_l2a" in (tmp_path / "s2.zarr.catalog.yaml").read_text()


def test_a_class_map_with_a_colour_table_is_warped_by_majority(tmp_path: Path) -> None:
    """An NLCD-like land-cover GeoTIFF (uint8 codes with a colour table) ingested as scenes onto
    another grid: the cube holds its class codes, never a bilinear blend of them (12.8 between
    water 11 and developed 21 is no class)."""
    from tasks.ingest import ingest_cube

    codes = np.random.default_rng(0).choice([11, 21, 41, 82], size=(60, 60)).astype(np.uint8)
    with rasterio.open(tmp_path / "nlcd_2019.tif", "w", driver="GTiff", width=60, height=60, count=1, dtype="uint8",
                       crs="EPSG:5070", transform=from_origin(1500000, 2000000, 30, 30), nodata=250) as ds:
        ds.write(codes, 1)
        ds.write_colormap(1, {11: (70, 107, 159, 255), 21: (222, 197, 197, 255), 41: (104, 171, 95, 255),
                              82: (170, 112, 40, 255)})
    catalog = adhoc_catalog([str(tmp_path / "nlcd_2019.tif")], tmp_path / "lc.zarr", resolution=45.0,
                            date={"default": "2019-01-01"})
    ingest_cube(load_catalog(catalog), "lc")
    values = xr.open_zarr(tmp_path / "lc.zarr")["data"].values
    assert set(np.unique(values)) <= {11.0, 21.0, 41.0, 82.0} and values.shape[-1] in (40, 41)  # 45 m pixels


def test_a_folder_of_ehdr_bil_rasters_is_found(tmp_path: Path) -> None:
    """Formats GDAL reads beyond GeoTIFF / JPEG 2000 / NetCDF / HDF are found in a folder by their
    suffix too (ESRI .bil with its .hdr; GRIB and SRTM .hgt likewise), their sidecars left alone."""
    (tmp_path / "in").mkdir()
    for day in ("2020-01-01", "2020-02-01"):
        with rasterio.open(tmp_path / "in" / f"dem_{day}.bil", "w", driver="EHdr", width=10, height=10, count=1,
                           dtype="int16", crs="EPSG:4326", transform=from_origin(10, 50, 0.01, 0.01),
                           nodata=-9999) as ds:
            ds.write(np.full((1, 10, 10), 100, np.int16))
    raw, _ = build_adhoc_catalog([str(tmp_path / "in")], tmp_path / "c.zarr")
    assert raw["sources"]["scenes"]["glob"] == [str(tmp_path / "in" / "**" / "*.bil")]


def test_appeears_lst_day_and_night_alone_are_scaled_to_kelvin(tmp_path: Path, capsys) -> None:
    """QA11 masks: an AppEEARS MOD11A1 export of LST_Day_1km and LST_Night_1km only named its bands
    `Day` / `Night` and took no 0.02 K scale (the layer was looked for in the token alone)."""
    from flows.cli import main

    for layer, value in (("LST_Day_1km", 15000), ("LST_Night_1km", 14000), ("QC_Day", 0), ("QC_Night", 0)):
        with rasterio.open(tmp_path / f"MOD11A1.061_{layer}_doy2019182_aid0001.tif", "w", driver="GTiff", width=4,
                           height=4, count=1, dtype="uint16" if "LST" in layer else "uint8", crs="EPSG:32633",
                           transform=from_origin(600000, 5000000, 1000, 1000), nodata=0 if "LST" in layer else None) as ds:
            ds.write(np.full((1, 4, 4), value, ds.dtypes[0]))
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "lst.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "lst.zarr")
    np.testing.assert_allclose(ds.data.isel(time=0).mean(("y", "x")).values, [300.0, 280.0], rtol=1e-6)


def _uint16(path: Path, a: np.ndarray, **profile) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=a.shape[1], height=a.shape[0], count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(600000, 5000000, 30, 30), **profile) as ds:
        ds.write(a, 1)


def test_landsat_fill_and_values_out_of_the_products_range_are_not_observed(tmp_path: Path, capsys, logged) -> None:
    """QA11 masks: with band files that declare no nodata (clipped, re-saved), Landsat's fill (QA_PIXEL
    bit 0, DN 0) came out valid at -0.2 reflectance, and DN 65000 at 1.59; USGS's valid range is
    7273-43636. An append to a cube made before keeps the rules it was built with, saying so."""
    import yaml

    from flows.cli import main
    from tasks.checkpoint import read_manifest, write_manifest

    stem = "LC08_L2SP_044034_{}_20200827_02_T1_{}.TIF"
    sr = np.full((4, 4), 10000, np.uint16)
    sr[0, 0], sr[0, 1] = 0, 65000
    qa = np.full((4, 4), 21824, np.uint16)
    qa[0, 0] = 1  # fill
    scenes, new = tmp_path / "scenes", tmp_path / "later"
    for d, folder in (("20190801", scenes), ("20190817", new)):
        folder.mkdir()
        _uint16(folder / stem.format(d, "SR_B2"), sr)
        _uint16(folder / stem.format(d, "SR_B3"), sr)
        _uint16(folder / stem.format(d, "QA_PIXEL"), qa)
    assert main(["ingest", str(scenes), "--out", str(tmp_path / "ls.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "ls.zarr")
    valid = ds.valid.values[0]
    assert not valid[0, 0] and not valid[0, 1] and valid[1:].all()
    np.testing.assert_allclose(ds.data.values[0, :, 1:, :], 10000 * 2.75e-5 - 0.2, rtol=1e-5)

    # as a fusioncube before 2026-12-08 left it: no valid range, fill not masked, no rules recorded
    catalog = tmp_path / "ls.zarr.catalog.yaml"
    raw = yaml.safe_load(catalog.read_text())
    source = next(iter(raw["sources"].values()))
    source["mask"]["invalid_bits"] = [1, 2, 3, 4]
    for band in source["bands"]:
        band.pop("valid_min"), band.pop("valid_max")
    catalog.write_text(yaml.safe_dump(raw, sort_keys=False))
    m = read_manifest(tmp_path / "ls.zarr")
    write_manifest(tmp_path / "ls.zarr", dataclasses.replace(
        m, outputs={k: v for k, v in m.outputs.items() if k != "value_rules"}, environment={}))
    for f in new.iterdir():
        f.rename(scenes / f.name)
    capsys.readouterr()
    with logged("tasks.adhoc") as messages:
        assert main(["ingest", str(scenes), "--out", str(tmp_path / "ls.zarr")]) == 0
    assert any("ls.zarr keeps the rules it was built with; a new cube of these files would take band SR_B2: "
               "valid_min" in m for m in messages)
    assert "2 time steps (1 new)" in capsys.readouterr().out
    kept = next(iter(yaml.safe_load(catalog.read_text())["sources"].values()))
    assert kept["mask"]["invalid_bits"] == [1, 2, 3, 4] and "valid_min" not in kept["bands"][0]
    assert xr.open_zarr(tmp_path / "ls.zarr").valid.values[1, 0, 1]  # read as the cube's first date was
    assert main(["info", str(tmp_path / "ls.zarr")]) == 0
    assert "  made with: fusioncube " in capsys.readouterr().out  # an ingested cube's provenance too (QA11 recheck)


def test_hls_as_appeears_exports_it_takes_its_fmask(tmp_path: Path) -> None:
    """QA11 masks: AppEEARS' HLS export (HLSS30.020_B04_doy..._aid0001.tif beside its Fmask layer)
    quarantined the Fmask as "not a band file" and kept every cloud valid."""
    from flows.cli import main

    refl = np.full((4, 4), 1500, np.int16)
    fmask = np.zeros((4, 4), np.uint8)
    fmask[0, 0], fmask[0, 1], fmask[0, 2], fmask[0, 3] = 2, 4, 8, 32  # cloud, adjacent, shadow; water kept
    for name, a in (("B04", refl), ("B8A", refl), ("Fmask", fmask)):
        with rasterio.open(tmp_path / f"HLSS30.020_{name}_doy2023182_aid0001.tif", "w", driver="GTiff", width=4, height=4,
                           count=1, dtype=a.dtype, crs="EPSG:32633", transform=from_origin(600000, 5000000, 30, 30),
                           nodata=-9999 if a.dtype == np.int16 else None) as ds:
            ds.write(a, 1)
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "hls.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "hls.zarr").isel(time=0)
    assert list(ds.band.values) == ["B04", "B8A"]
    assert ds.valid.values[0].tolist() == [False, False, False, True] and ds.valid.values[1:].all()
    np.testing.assert_allclose(ds.data.values[:, 1:], 0.15, rtol=1e-6)


def test_quality_layers_of_a_product_are_not_taken_as_bands(tmp_path: Path, capsys) -> None:
    """QA11 masks: a MOD13Q1 export's VI_Quality bit field became a band, averaged on a coarser grid
    into codes that mean nothing. It is passed over; --bands still takes it."""
    from flows.cli import main

    for layer, value in (("NDVI", 5000), ("EVI", 3000), ("VI_Quality", 2116), ("pixel_reliability", 0)):
        with rasterio.open(tmp_path / f"MOD13Q1.061__250m_16_days_{layer}_doy2019177_aid0001.tif", "w",
                           driver="GTiff", width=4, height=4, count=1, dtype="int16", crs="EPSG:32633",
                           transform=from_origin(600000, 5000000, 250, 250)) as ds:
            ds.write(np.full((1, 4, 4), value, np.int16))
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "vi.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "vi.zarr")
    assert list(ds.band.values) == ["EVI", "NDVI"] and "quarantined" not in capsys.readouterr().out.replace(
        "0 quarantined", "")
    np.testing.assert_allclose(ds.data.isel(time=0).mean(("y", "x")).values, [0.3, 0.5], rtol=1e-6)
    # a cube that has the layer (made with --bands, or before): later dates keep it
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "q.zarr"), "--bands", "EVI,NDVI,VI_Quality"]) == 0
    for f in list(tmp_path.glob("*doy2019177*")):
        f.with_name(f.name.replace("doy2019177", "doy2019193")).write_bytes(f.read_bytes())
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "q.zarr")]) == 0
    q = xr.open_zarr(tmp_path / "q.zarr")
    assert q.sizes["time"] == 2 and list(q.band.values) == ["EVI", "NDVI", "VI_Quality"]
