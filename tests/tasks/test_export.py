"""`fusioncube export`: a cube's dates as Cloud-Optimized GeoTIFFs, window by window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from flows.cli import main
from tasks.cube import grid_coords, spatial_ref
from tasks.errors import CubeSchemaError
from tasks.export import export_cube

T, C, H, W = 3, 2, 300, 280
TRANSFORM = Affine(10.0, 0, 500000.0, 0, -10.0, 4650000.0)


def _cube(path: Path, *, crs: bool = True, time_chunk: int = 1) -> xr.Dataset:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (T, C, H, W)).astype(np.float32)
    data[1, 0, :5, :5] = np.nan  # a band missing where the date is valid
    valid = np.ones((T, H, W), bool)
    valid[0, 100:, :] = False  # a cloud over the south of the first date
    y, x = grid_coords(TRANSFORM, H, W)
    coords = {"time": np.array(["2020-01-03", "2020-02-04", "2020-03-05"], dtype="datetime64[ns]"),
              "band": np.array(["red", "nir"], dtype=object), "y": y, "x": x}
    if crs:
        coords["spatial_ref"] = spatial_ref(CRS.from_epsg(32633), TRANSFORM)
    ds = xr.Dataset({"data": (("time", "band", "y", "x"), data, {"grid_mapping": "spatial_ref"}),
                     "valid": (("time", "y", "x"), valid)}, coords=coords)
    ds.chunk({"time": time_chunk, "band": C, "y": 128, "x": 128}).to_zarr(path, zarr_format=3, consolidated=True,
                                                                         mode="w")
    return ds


def test_export_writes_one_cog_per_date_with_the_cube_values(tmp_path: Path, capsys) -> None:
    ds = _cube(tmp_path / "c.zarr")
    assert main(["export", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "tifs")]) == 0
    assert "3 Cloud-Optimized GeoTIFF(s)" in capsys.readouterr().out
    files = sorted((tmp_path / "tifs").iterdir())
    assert [f.name for f in files] == ["c_2020-01-03.tif", "c_2020-02-04.tif", "c_2020-03-05.tif"]  # no temp file left
    for t, f in enumerate(files):
        with rasterio.open(f) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.overviews(1)
            assert src.crs == CRS.from_epsg(32633) and src.transform.almost_equals(TRANSFORM)
            assert src.descriptions == ("red", "nir") and src.dtypes == ("float32", "float32")
            got = src.read()
        want = np.where(ds["valid"].values[t][None], ds["data"].values[t], np.nan)
        np.testing.assert_array_equal(got, want)  # NaN where not valid or not finite
        assert np.isnan(got).any() == (t < 2)  # the cloud of date 0, the missing band of date 1

    # a choice of dates and bands; the values under the mask when asked for
    out = export_cube(tmp_path / "c.zarr", tmp_path / "one", dates=["2020-01-03"], bands=["nir"],
                      keep_invalid=True, progress=False)
    with rasterio.open(out[0]) as src:
        assert src.count == 1 and src.descriptions == ("nir",)
        np.testing.assert_array_equal(src.read(1), ds["data"].values[0, 1])
    assert [p.name for p in export_cube(tmp_path / "c.zarr", tmp_path / "range", start="2020-02-01",
                                        progress=False)] == ["c_2020-02-04.tif", "c_2020-03-05.tif"]


def test_a_gap_filled_cube_exports_its_estimates_where_the_cube_was_not_valid(tmp_path: Path) -> None:
    """filled.zarr keeps the cube's ``valid`` and marks its estimates in ``filled``: the export of
    the product must carry them (it wrote NaN there, the gaps back), and still NaN where nothing was
    filled (a pixel never observed, without --fill-unseen)."""
    ds = _cube(tmp_path / "c.zarr")
    filled = ~ds["valid"].values
    filled[0, 290:, :] = False  # left unfilled
    ds["data"] = ds["data"].where(~filled[:, None] | ~np.isnan(ds["data"]), 0.5)
    ds["filled"] = (("time", "y", "x"), filled)
    ds.to_zarr(tmp_path / "filled.zarr", zarr_format=3, consolidated=True, mode="w")
    out = export_cube(tmp_path / "filled.zarr", tmp_path / "tifs", dates=["2020-01-03"], progress=False)
    with rasterio.open(out[0]) as src:
        got = src.read()
    want = np.where((ds["valid"].values[0] | filled[0])[None], ds["data"].values[0], np.nan)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got[:, 100:290]).all() and np.isnan(got[:, 290:]).all()


def test_export_errors_name_the_cube_and_the_reason(tmp_path: Path) -> None:
    _cube(tmp_path / "c.zarr")
    with pytest.raises(ValueError, match=r"c.zarr: no date \['2021-01-01'\] in the cube \(it holds 2020-01-03"):
        export_cube(tmp_path / "c.zarr", tmp_path / "o", dates=["2021-01-01"], progress=False)
    with pytest.raises(ValueError, match=r"no band \['swir'\]; the cube's bands are \['red', 'nir'\]"):
        export_cube(tmp_path / "c.zarr", tmp_path / "o", bands=["swir"], progress=False)
    with pytest.raises(ValueError, match=r"band\(s\) \['red'\] asked for more than once"):
        export_cube(tmp_path / "c.zarr", tmp_path / "o", bands=["red", "nir", "red"], progress=False)
    with pytest.raises(ValueError, match=r"2020-01-03 .. 2020-03-05\) is within 2021-01-01 .. "):
        export_cube(tmp_path / "c.zarr", tmp_path / "o", start="2021-01-01", progress=False)
    with pytest.raises(ValueError, match=r"--date 2020-02-30: not a date, YYYY-MM-DD \(day is out of range"):
        export_cube(tmp_path / "c.zarr", tmp_path / "o", dates=["2020-02-30"], progress=False)
    _cube(tmp_path / "nocrs.zarr", crs=False)
    with pytest.raises(CubeSchemaError, match="nocrs.zarr: the cube has no CRS"):
        export_cube(tmp_path / "nocrs.zarr", tmp_path / "o", progress=False)
    from tasks.patch import make_patches

    make_patches(tmp_path / "c.zarr", tmp_path / "p.zarr", size=32, block=1)  # not on a map grid
    with pytest.raises(CubeSchemaError, match=r"p.zarr: a patches store \(stage patch\).*export the cube they were "
                                              r"cut from \(.*c.zarr\)"):
        export_cube(tmp_path / "p.zarr", tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_dates_stored_in_one_chunk_are_read_together_in_bounded_windows(tmp_path: Path, monkeypatch) -> None:
    import tasks.export as export

    assert export._by_time_chunk(np.array([0, 2, 3, 7]), (3, 3, 3)) == [[0, 2], [3], [7]]
    _cube(tmp_path / "by_date.zarr")
    _cube(tmp_path / "one_chunk.zarr", time_chunk=T)  # as gapfill stores its dates
    reads = []
    real_isel = xr.Dataset.isel

    def counting_isel(self, *args, **kwargs):
        if "time" in kwargs:
            reads.append((np.size(kwargs["time"]), kwargs["y"].stop - kwargs["y"].start))
        return real_isel(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "isel", counting_isel)
    monkeypatch.setattr(export, "READ_BYTES", T * C * 4 * 128 * 64)  # a 128 x 128 window must be halved
    monkeypatch.setattr(export, "MAX_WINDOW", 128)
    monkeypatch.setattr(export, "MIN_WINDOW", 32)
    a = export_cube(tmp_path / "by_date.zarr", tmp_path / "a", progress=False)
    reads.clear()
    b = export_cube(tmp_path / "one_chunk.zarr", tmp_path / "b", progress=False)
    assert [p.name.split("_", 2)[-1] for p in a] == [p.name.split("_", 2)[-1] for p in b]
    for fa, fb in zip(a, b, strict=True):
        with rasterio.open(fa) as ra, rasterio.open(fb) as rb:
            np.testing.assert_array_equal(ra.read(), rb.read())
    # one chunk: every read takes the three dates at once, in windows of at most 64 rows
    assert reads and all(n == T for n, _ in reads) and max(h for _, h in reads) <= 64


def test_an_anomalies_product_exports_its_layers_as_bands(tmp_path: Path) -> None:
    """``anomalies.zarr`` (score, flag, background over time, y, x) is not a cube, but a GIS user
    wants its dates as files too: one COG per date, bands score, flag (0 / 1) and background."""
    from tasks.anomalies import detect_anomalies

    rng = np.random.default_rng(1)
    y, x = grid_coords(TRANSFORM, H, W)
    lst = 300.0 + rng.normal(0, 0.5, (6, 1, H, W)).astype(np.float32)
    lst[2, 0, 40:44, 50:54] += 8.0  # a hot spot
    valid = np.ones((6, H, W), bool)
    valid[2, :10, :10] = False  # a cloud on the exported date
    xr.Dataset({"data": (("time", "band", "y", "x"), lst, {"grid_mapping": "spatial_ref"}),
                "valid": (("time", "y", "x"), valid)},
               coords={"time": np.arange("2020-01-01", "2020-01-07", dtype="datetime64[D]").astype("datetime64[ns]"),
                       "band": np.array(["lst"], dtype=object), "y": y, "x": x,
                       "spatial_ref": spatial_ref(CRS.from_epsg(32633), TRANSFORM)}
               ).to_zarr(tmp_path / "lst.zarr", zarr_format=3, mode="w")
    detect_anomalies(tmp_path / "lst.zarr", tmp_path / "a.zarr", bits=8, tile=128)
    files = export_cube(tmp_path / "a.zarr", tmp_path / "tifs", dates=["2020-01-03"], progress=False)
    product = xr.open_zarr(tmp_path / "a.zarr").sel(time="2020-01-03")
    with rasterio.open(files[0]) as src:
        assert src.descriptions == ("score", "flag", "background") and src.crs == CRS.from_epsg(32633)
        assert src.transform.almost_equals(TRANSFORM)
        got = src.read()
    # not observed under the cloud: no data in every layer (the product's score is NaN there)
    assert np.isnan(got[:, :10, :10]).all() and np.isnan(product["score"].values[:10, :10]).all()
    seen = valid[2]
    np.testing.assert_array_equal(got[0][seen], product["score"].values[seen])
    np.testing.assert_array_equal(got[1][seen], product["flag"].values.astype(np.float32)[seen])
    assert got[1, 40:44, 50:54].all()
    np.testing.assert_array_equal(got[2][seen], product["background"].values[seen])
    # a product made before 2026-12 held score 0 where nothing was observed, and did not say so:
    # the cube it was made from (its manifest names it) tells, while it is there
    import shutil

    old = xr.open_zarr(tmp_path / "a.zarr").load()
    old["score"] = old["score"].fillna(0.0)
    old["score"].attrs.pop("unobserved", None)
    old.to_zarr(tmp_path / "old.zarr", zarr_format=3, mode="w")
    shutil.copy(tmp_path / "a.zarr.manifest.json", tmp_path / "old.zarr.manifest.json")
    (legacy,) = export_cube(tmp_path / "old.zarr", tmp_path / "tifs4", dates=["2020-01-03"], progress=False)
    with rasterio.open(legacy) as src:
        np.testing.assert_array_equal(src.read(), got)
    # the source cube gone: the product alone tells where nothing was observed
    shutil.rmtree(tmp_path / "lst.zarr")
    (again,) = export_cube(tmp_path / "a.zarr", tmp_path / "tifs2", dates=["2020-01-03"], progress=False)
    with rasterio.open(again) as src:
        np.testing.assert_array_equal(src.read(), got)
    # ... and the old product's layers are written as it holds them
    (older,) = export_cube(tmp_path / "old.zarr", tmp_path / "tifs3", dates=["2020-01-03"], progress=False)
    with rasterio.open(older) as src:
        np.testing.assert_array_equal(src.read(1), np.nan_to_num(product["score"].values))


def test_static_layers_export_beside_the_dates_class_layers_with_their_legend(tmp_path: Path, capsys) -> None:
    ds = _cube(tmp_path / "c.zarr")
    codes = np.full((H, W), 41, np.uint8)
    codes[:, :100], codes[:10, :10] = 82, 250  # crops, forest, and NLCD's no-data
    legend = {"flag_values": [41, 82], "flag_meanings": "Deciduous_Forest My_Crops",
              "flag_colors": ["#68ab5f", "#102030"], "nodata": 250, "grid_mapping": "spatial_ref"}
    dem = np.linspace(100, 400, H * W, dtype=np.float32).reshape(H, W)
    dem[0, 0] = -9999
    static = xr.Dataset({"landcover": (("y", "x"), codes, legend),
                         "elevation": (("y", "x"), dem, {"units": "m", "nodata": -9999.0})}, coords=ds.coords)
    static.drop_dims(["time", "band"]).to_zarr(tmp_path / "c.zarr", mode="a", zarr_format=3, consolidated=True)
    assert main(["export", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "tifs"), "--date", "2020-01-03"]) == 0
    assert "3 Cloud-Optimized GeoTIFF(s)" in capsys.readouterr().out
    with rasterio.open(tmp_path / "tifs" / "c_landcover.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.dtypes == ("uint8",)
        assert src.crs == CRS.from_epsg(32633) and src.transform.almost_equals(TRANSFORM)
        assert src.nodata == 250
        np.testing.assert_array_equal(src.read(1), codes)
        assert src.colormap(1)[82][:3] == (0x10, 0x20, 0x30) and src.colormap(1)[41][:3] == (0x68, 0xAB, 0x5F)
        assert src.tags()["CLASSES"] == "41=Deciduous Forest; 82=My Crops"
    with rasterio.open(tmp_path / "tifs" / "c_elevation.tif") as src:
        assert src.dtypes == ("float32",) and src.descriptions == ("elevation",) and src.tags(1)["units"] == "m"
        got = src.read(1)
    assert np.isnan(got[0, 0]) and np.array_equal(got[1:], dem[1:])
    assert main(["export", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "dates"), "--no-static"]) == 0
    assert sorted(f.name for f in (tmp_path / "dates").iterdir()) == [
        "c_2020-01-03.tif", "c_2020-02-04.tif", "c_2020-03-05.tif"]
