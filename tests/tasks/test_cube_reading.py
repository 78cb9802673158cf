"""Reading a cube in bounded pieces: patches cut row by row equal the patches of the whole array."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_models.patching import extract_patches, patch_origins
from tasks.cube import band_stats, observed_mask, patches_by_rows


def test_patches_by_rows_reads_each_row_of_patches_once_and_matches_the_whole_array() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((3, 2, 40, 23)).astype(np.float32)
    labels = rng.integers(0, 5, (40, 23))
    origins = patch_origins(40, 23, size=8, stride=8)[::2]  # a row-major subset
    reads: list[tuple[int, int]] = []

    def read(y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        reads.append((y0, y1))
        return data[..., y0:y1, :], labels[y0:y1]

    x, y = patches_by_rows(origins, 8, read)
    np.testing.assert_array_equal(x, extract_patches(data, origins, 8))
    np.testing.assert_array_equal(y, extract_patches(labels, origins, 8))
    assert reads == [(int(r), int(r) + 8) for r in np.unique(origins[:, 0])]


def test_observed_mask_and_band_stats_ignore_what_is_not_observed() -> None:
    data = np.ones((2, 2, 3, 3), np.float32)
    data[0, 1, 0, 0] = np.nan  # one band missing: the pixel-date is not observed
    data[1, :, 2, 2] = 100.0  # a value under an invalid flag
    valid = np.ones((2, 3, 3), bool)
    valid[1, 2, 2] = False
    observed = observed_mask(data, valid)
    assert not observed[0, 0, 0] and not observed[1, 2, 2] and observed.sum() == 16
    mean, std = band_stats(data, observed)
    np.testing.assert_array_equal(mean.ravel(), [1.0, 1.0])
    np.testing.assert_array_equal(std.ravel(), [1.0, 1.0])  # zero spread -> 1


def test_a_south_up_cube_is_read_north_up_and_its_patches_match(tmp_path) -> None:
    """A cube written with ``y`` ascending (latitude-ordered tools): ``open_cube`` gives the
    north-up view with a matching GeoTransform, and the patch stage cuts the same patches as from
    the north-up cube."""
    import xarray as xr
    from affine import Affine
    from rasterio.crs import CRS

    from tasks.cube import cube_transform, grid_coords, open_cube, spatial_ref
    from tasks.patch import make_patches

    rng = np.random.default_rng(1)
    data = rng.random((3, 2, 48, 40)).astype(np.float32)
    transform = Affine(10.0, 0, 500000.0, 0, -10.0, 4650000.0)
    y, x = grid_coords(transform, 48, 40)
    north = xr.Dataset(
        {"data": (("time", "band", "y", "x"), data, {"grid_mapping": "spatial_ref"}),
         "valid": (("time", "y", "x"), np.ones((3, 48, 40), bool))},
        coords={"time": np.array(["2020-01-01", "2020-01-11", "2020-01-21"], dtype="datetime64[ns]"),
                "band": np.array(["a", "b"], dtype=object), "y": y, "x": x, "spatial_ref": spatial_ref(CRS.from_epsg(32617), transform)},
    )
    north.to_zarr(tmp_path / "north.zarr", zarr_format=3, consolidated=True)
    south = north.isel(y=slice(None, None, -1))
    south["spatial_ref"].attrs["GeoTransform"] = " ".join(
        str(v) for v in Affine(10.0, 0, 500000.0, 0, 10.0, 4650000.0 - 480).to_gdal())
    south.to_zarr(tmp_path / "south.zarr", zarr_format=3, consolidated=True)

    ds = open_cube(tmp_path / "south.zarr")
    assert cube_transform(ds) == transform
    assert ds["spatial_ref"].attrs["GeoTransform"] == " ".join(str(v) for v in transform.to_gdal())
    np.testing.assert_array_equal(ds["data"].values, data)
    for name in ("north", "south"):
        make_patches(tmp_path / f"{name}.zarr", tmp_path / f"p_{name}.zarr", size=16, block=1)
    a, b = (xr.open_zarr(tmp_path / f"p_{n}.zarr") for n in ("north", "south"))
    np.testing.assert_array_equal(a["data"].values, b["data"].values)


def _foreign_cube(path, *, zarr_format: int) -> np.ndarray:
    """A cube as rioxarray users write it: ``write_crs`` (so ``spatial_ref`` is stored as a data
    variable), band numbers instead of names, ``valid`` as 0/1 bytes, float64 data."""
    import pandas as pd
    import rioxarray  # noqa: F401 - registers .rio
    import xarray as xr

    rng = np.random.default_rng(3)
    data = rng.random((4, 3, 40, 40))
    valid = (rng.random((4, 40, 40)) > 0.2).astype(np.uint8)
    ds = xr.Dataset(
        {"data": (("time", "band", "y", "x"), np.where(valid[:, None] > 0, data, np.nan)),
         "valid": (("time", "y", "x"), valid)},
        coords={"time": pd.date_range("2022-05-01", periods=4, freq="8D"), "band": [1, 2, 3],
                "y": 8600000.0 - 10 * (np.arange(40) + 0.5), "x": 500000.0 + 10 * (np.arange(40) + 0.5)},
    ).rio.write_crs("EPSG:32722")
    ds.to_zarr(path, zarr_format=zarr_format, mode="w")
    return data


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_cube_written_by_rioxarray_is_read_the_schema_way_and_stages_write_from_it(tmp_path, zarr_format) -> None:
    """Before: the patch store's decoding stopped on the scalar ``spatial_ref`` data variable
    (IndexError), ``--band 2`` was a KeyError on integer band labels, and every stage failed to
    write from a Zarr v2 cube ("Expected a BytesBytesCodec", the v2 compressor carried over)."""
    import xarray as xr

    from tasks.anomalies import detect_anomalies
    from tasks.cube import cube_crs, open_cube
    from tasks.patch import make_patches, unpatch

    cube = tmp_path / "cube.zarr"
    data = _foreign_cube(cube, zarr_format=zarr_format)
    raw = xr.open_zarr(cube)
    assert "spatial_ref" in raw.data_vars and raw["band"].dtype.kind == "i"  # what the fix is about

    ds = open_cube(cube)
    assert "spatial_ref" in ds.coords and "spatial_ref" not in ds.data_vars
    assert list(ds["band"].values) == ["1", "2", "3"]
    assert ds["valid"].dtype == bool and cube_crs(ds).to_epsg() == 32722
    if zarr_format == 2:
        assert not any("compressor" in v.encoding or "compressors" in v.encoding for v in ds.variables.values())

    make_patches(cube, tmp_path / "p.zarr", size=20, block=1)
    back = unpatch(tmp_path / "p.zarr", tmp_path / "back.zarr")
    np.testing.assert_allclose(back["data"].values, np.where(ds["valid"].values[:, None], data, np.nan), rtol=1e-6)
    assert set(back.data_vars) == {"data", "valid"}

    manifest = detect_anomalies(cube, tmp_path / "an.zarr", bits=8, band="2", tile=40)
    assert manifest.params["band"] == "2"
    from rasterio.crs import CRS

    assert CRS.from_wkt(xr.open_zarr(tmp_path / "an.zarr")["spatial_ref"].attrs["crs_wkt"]).to_epsg() == 32722


def test_fixed_length_band_names_are_written_as_v3_strings(tmp_path) -> None:
    """xarray writes a list of str as fixed-length unicode (``<U3``), a type with no Zarr v3 spec:
    the stages used to copy it into every store they wrote (zarr's UnstableSpecificationWarning)."""
    import warnings

    import pandas as pd
    import xarray as xr
    import zarr

    from tasks.cube import _read_cube
    from tasks.patch import make_patches

    rng = np.random.default_rng(0)
    ds = xr.Dataset({"data": (("time", "band", "y", "x"), rng.random((3, 2, 8, 8), dtype=np.float32)),
                     "valid": (("time", "y", "x"), np.ones((3, 8, 8), bool))},
                    coords={"time": pd.date_range("2024-01-01", periods=3), "band": ["red", "nir"],
                            "y": 100.0 - np.arange(8), "x": np.arange(8.0)})
    ds.to_zarr(tmp_path / "cube.zarr", zarr_format=2, mode="w")
    cube, notes = _read_cube(tmp_path / "cube.zarr", "auto")
    assert cube["band"].dtype == object and list(cube["band"].values) == ["red", "nir"]
    assert not any("band labels" in n for n in notes)  # nothing for the user to know
    with warnings.catch_warnings():
        warnings.simplefilter("error", zarr.errors.UnstableSpecificationWarning)
        make_patches(tmp_path / "cube.zarr", tmp_path / "p.zarr", size=4, block=1)
    assert "String" in type(zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["band"].dtype).__name__


def test_layouts_of_other_tools_are_read_as_the_schema(tmp_path) -> None:
    """What other tools write, read as a cube, each with a note: lat / lon dimensions, ``data``
    under another name and in another order, and odc-stac's one variable per band over
    (time, latitude, longitude) in digital numbers with a ``nodata`` value. Patching a cube
    stored without ``valid`` in one window once lost its reads in dask (pydata/xarray#11329)."""
    import pandas as pd
    import xarray as xr

    from tasks.cube import _read_cube
    from tasks.errors import CubeSchemaError
    from tasks.patch import make_patches

    rng = np.random.default_rng(0)
    t, lat, lon = pd.date_range("2022-01-01", periods=3), 45.0 - 0.01 * np.arange(6), 10.0 + 0.01 * np.arange(8)
    values = rng.random((3, 2, 6, 8)).astype(np.float32)
    coords = {"time": t, "band": ["red", "nir"], "lat": lat, "lon": lon}

    def read(name: str, ds: xr.Dataset) -> tuple[xr.Dataset, list[str]]:
        ds.to_zarr(tmp_path / name, mode="w")
        return _read_cube(tmp_path / name, "auto")

    cube, notes = read("latlon.zarr", xr.Dataset({"data": (("time", "band", "lat", "lon"), values)}, coords=coords))
    np.testing.assert_array_equal(cube["data"].values, values)
    np.testing.assert_array_equal(cube["y"].values, lat)
    assert "dimensions ['lat', 'lon'] read as ['y', 'x']" in notes

    cube, notes = read("named.zarr", xr.Dataset(
        {"reflectance": (("band", "time", "lat", "lon"), values.transpose(1, 0, 2, 3))}, coords=coords))
    np.testing.assert_array_equal(cube["data"].values, values)
    assert "variable 'reflectance' read as 'data'" in notes
    assert "'data' stored as ('band', 'time', 'y', 'x'): read as ('time', 'band', 'y', 'x')" in notes

    dn = (values * 1e4).astype(np.int16)
    dn[1, :, 2, 3] = -9999  # no data on the second date
    odc = xr.Dataset({b: (("time", "latitude", "longitude"), dn[:, i], {"nodata": -9999}) for i, b in
                      enumerate(["red", "nir"])}, coords={"time": t, "latitude": lat, "longitude": lon})
    cube, notes = read("odc.zarr", odc)
    assert list(cube["band"].values) == ["nir", "red"] and cube["data"].dtype == np.float32  # the store's order
    np.testing.assert_array_equal(cube["data"].sel(band=["red", "nir"]).values[0], dn[0])
    assert np.isnan(cube["data"].values[1, :, 2, 3]).all() and not cube["valid"].values[1, 2, 3]
    assert cube["valid"].values.sum() == cube["valid"].size - 1
    assert "variables ['nir', 'red'] (time, y, x) read as the bands of 'data'" in notes
    make_patches(tmp_path / "odc.zarr", tmp_path / "p.zarr", size=6, block=1)  # one window: the whole cube
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "p.zarr")["data"].values[0, 0, 1], dn[0, 0, :, :6])

    xr.Dataset({"data": (("time", "band", "row", "col"), values)}, coords={"time": t}).to_zarr(tmp_path / "rc.zarr")
    with pytest.raises(CubeSchemaError, match=r"'data' must have dims \('time', 'band', 'y', 'x'\)"):
        _read_cube(tmp_path / "rc.zarr", "auto")


def test_unobserved_reason_names_what_emptied_the_cube() -> None:
    import xarray as xr

    from tasks.cube import unobserved_reason

    data = np.ones((2, 3, 4, 4))
    data[:, 1] = np.nan
    valid = np.ones((2, 4, 4), bool)
    assert "band(s) ['1']" in unobserved_reason(data, valid)
    assert "['green']" in unobserved_reason(data, valid, ["blue", "green", "red"])
    lazy = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={"band": ["b", "g", "r"]})
    assert "['g']" in unobserved_reason(lazy, xr.DataArray(valid, dims=("time", "y", "x")))
    assert "false on every pixel" in unobserved_reason(np.ones((2, 3, 4, 4)), ~valid)
    apart = np.full((2, 2, 4, 4), np.nan)
    apart[0, 0], apart[1, 1] = 1.0, 1.0
    assert "observed apart" in unobserved_reason(apart, valid[:, :, :])


def test_dates_out_of_order_are_read_sorted_and_bad_grids_refused(tmp_path) -> None:
    import pandas as pd
    import pytest
    import xarray as xr
    from affine import Affine
    from rasterio.crs import CRS

    from tasks.cube import grid_coords, open_cube, spatial_ref
    from tasks.errors import CubeSchemaError
    from tasks.patch import make_patches

    transform = Affine(10.0, 0, 500000.0, 0, -10.0, 4650000.0)
    y, x = grid_coords(transform, 32, 32)
    times = pd.to_datetime(["2020-03-01", "2020-01-01", "2020-02-01"])
    data = np.stack([np.full((1, 32, 32), float(t.month), np.float32) for t in times])
    ds = xr.Dataset({"data": (("time", "band", "y", "x"), data)},
                    coords={"time": times, "band": ["ndvi"], "y": y, "x": x,
                            "spatial_ref": spatial_ref(CRS.from_epsg(32617), transform)})
    ds.to_zarr(tmp_path / "shuffled.zarr", zarr_format=3)
    cube = open_cube(tmp_path / "shuffled.zarr")
    assert list(cube["data"].values[:, 0, 0, 0]) == [1.0, 2.0, 3.0]  # each date keeps its slice
    make_patches(tmp_path / "shuffled.zarr", tmp_path / "p.zarr", size=16, block=1)
    assert list(xr.open_zarr(tmp_path / "p.zarr")["data"].values[0, :, 0, 0, 0]) == [1.0, 2.0, 3.0]

    ds.assign_coords(time=pd.to_datetime(["2020-01-01", "2020-01-01", "2020-02-01"])).to_zarr(tmp_path / "twice.zarr")
    with pytest.raises(CubeSchemaError, match=r"duplicate dates \['2020-01-01"):
        open_cube(tmp_path / "twice.zarr")
    ds.assign_coords(x=np.r_[x[:16], x[16:] + 5.0]).to_zarr(tmp_path / "gap.zarr")
    with pytest.raises(CubeSchemaError, match="'x' is not evenly spaced"):
        open_cube(tmp_path / "gap.zarr")
    ds.isel(x=slice(None, None, -1)).to_zarr(tmp_path / "east_west.zarr")
    with pytest.raises(CubeSchemaError, match="'x' decreases"):
        open_cube(tmp_path / "east_west.zarr")


def test_fusioncube_info_says_what_a_cube_holds_and_what_is_normalised(tmp_path, capsys) -> None:
    from flows.cli import main

    _foreign_cube(tmp_path / "v2.zarr", zarr_format=2)
    assert main(["info", str(tmp_path / "v2.zarr")]) == 0
    out = capsys.readouterr().out
    assert "dates: 4, 2022-05-01 .. 2022-05-25, median step 8 days" in out
    assert "bands: 3: 1, 2, 3" in out and "grid: EPSG:32722 (WGS 84 / UTM zone 22S), pixel 10 x 10, 40 x 40 px" in out
    assert "note: Zarr v2 store" in out and "note: band labels [1, 2, 3] read as names" in out
    assert "note: 'valid' stored as uint8: read as bool" in out
    assert main(["info", str(tmp_path / "v2.zarr"), "--png", str(tmp_path / "look.png")]) == 0
    assert (tmp_path / "look.png").stat().st_size > 0 and "quick-look:" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    assert "missing.zarr: no such cube" in capsys.readouterr().err


def test_stage_products_given_as_a_cube_are_named_with_what_to_give_instead(tmp_path) -> None:
    """A patches store, a class map or a compressed store passed where a cube is read got a generic
    schema message ("transpose it", "no variable 'data'", "No group found")."""
    import xarray as xr
    from affine import Affine
    from rasterio.crs import CRS

    from tasks.cube import grid_coords, open_cube, spatial_ref
    from tasks.errors import CubeSchemaError
    from tasks.patch import make_patches

    transform = Affine(10.0, 0, 500000.0, 0, -10.0, 4650000.0)
    y, x = grid_coords(transform, 32, 32)
    cube = xr.Dataset(
        {"data": (("time", "band", "y", "x"), np.ones((2, 1, 32, 32), np.float32), {"grid_mapping": "spatial_ref"}),
         "valid": (("time", "y", "x"), np.ones((2, 32, 32), bool))},
        coords={"time": np.array(["2020-01-01", "2020-01-11"], dtype="datetime64[ns]"),
                "band": np.array(["a"], dtype=object), "y": y, "x": x,
                "spatial_ref": spatial_ref(CRS.from_epsg(32617), transform)},
    )
    cube.to_zarr(tmp_path / "cube.zarr", zarr_format=3, consolidated=True)
    make_patches(tmp_path / "cube.zarr", tmp_path / "patches.zarr", size=16, block=1)
    with pytest.raises(CubeSchemaError, match=r"patches\.zarr: a patches store .* the cube they were cut from \(.*cube\.zarr\)"):
        open_cube(tmp_path / "patches.zarr")
    xr.Dataset({"classes": (("y", "x"), np.zeros((32, 32), np.uint8))}, coords={"y": y, "x": x}).to_zarr(
        tmp_path / "classes.zarr", zarr_format=3)
    with pytest.raises(CubeSchemaError, match=r"classes\.zarr: a class map \('classes\(y, x\)'"):
        open_cube(tmp_path / "classes.zarr")
    (tmp_path / "out" / "compressed").mkdir(parents=True)
    (tmp_path / "out" / "compressed" / "cores.bin").write_bytes(b"\0")
    with pytest.raises(CubeSchemaError, match=r"a compressed store .* stage decompress --store .*compressed"):
        open_cube(tmp_path / "out" / "compressed")


def test_row_blocks_give_each_block_the_patches_that_reach_into_it() -> None:
    import numpy as np

    from tasks.cube import row_blocks

    origins = np.array([[0, 0], [4, 0], [8, 0], [12, 0]])  # patches of 8 rows at stride 4, 20 rows
    blocks = row_blocks(origins, 8, 20, 10)
    assert [(a, b) for a, b, _ in blocks] == [(0, 10), (10, 20)]
    assert blocks[0][2][:, 0].tolist() == [0, 4, 8] and blocks[1][2][:, 0].tolist() == [4, 8, 12]


def test_the_grid_is_the_stored_geotransform_when_the_coordinates_agree_with_it() -> None:
    """MODIS sinusoidal pixels (231.65635826385406 m) rebuilt from coordinate differences came out
    4e-10 m non-square in exported GeoTIFFs (QA round 6): the stored GeoTransform is exact. A
    slice of the cube keeps its parent's attribute, which then no longer agrees: the coordinates
    decide."""
    import xarray as xr
    from affine import Affine
    from rasterio.crs import CRS

    from tasks.cube import cube_transform, grid_coords, spatial_ref

    t = Affine(231.65635826385406, 0.0, -6073798.062, 0.0, -231.65635826385406, -1278279.776)
    y, x = grid_coords(t, 147, 255)
    ds = xr.Dataset({"data": (("time", "band", "y", "x"), np.zeros((1, 1, 147, 255), np.float32),
                              {"grid_mapping": "spatial_ref"})},
                    coords={"y": y, "x": x, "spatial_ref": spatial_ref(CRS.from_epsg(4326), t)})
    assert cube_transform(ds) == t
    part = cube_transform(ds.isel(y=slice(10, 20), x=slice(5, 30)))
    assert part.almost_equals(t * Affine.translation(5, 10), precision=1e-6) and part.c != t.c


def test_flag_meanings_are_cf_words_one_per_class() -> None:
    """QA9: 'Barren_Land_(Rock_Sand_Clay)' reached every class map; CF allows letters, digits and
    _ - . + @ in a flag meaning, and readers split on the spaces between them."""
    import re

    from tasks.catalog import NLCD_CLASSES
    from tasks.cube import flag_meanings

    words = flag_meanings(NLCD_CLASSES.values()).split(" ")
    assert len(words) == len(NLCD_CLASSES) and "Barren_Land_Rock_Sand_Clay" in words
    assert all(re.fullmatch(r"[A-Za-z0-9_.+@-]+", w) for w in words)
    assert flag_meanings(["Soy/Corn", " two  words ", "(x)", "Forêt"]) == "Soy_Corn two_words x Foret"
    # one distinct word a class (QA9 recheck): repeats numbered, a name with nothing left named by its place
    assert flag_meanings(["A/B", "A B", "森林", ""]) == "A_B A_B_2 class_3 class_4"
    from tasks.quicklook import class_names

    # the official NLCD name is shown, not the word spelled back
    attrs = {"flag_values": [31, 7], "flag_meanings": flag_meanings([NLCD_CLASSES[31], "my/own class"])}
    assert class_names((31, 7), attrs) == {31: "Barren Land (Rock/Sand/Clay)", 7: "my own class"}


def test_cube_dataset_makes_a_cube_the_stages_read_from_arrays(tmp_path) -> None:
    import numpy as np
    from affine import Affine

    from tasks.cube import cube_dataset, open_cube

    data = np.ones((2, 3, 4, 5), np.float32)
    data[1, 0, 0, 0] = np.nan  # one band missing: that pixel-date not valid by default
    lc = np.full((4, 5), 41, np.uint8)
    ds = cube_dataset(data, times=["2020-01-01", "2020-02-01"], bands=["b", "g", "r"], crs="EPSG:32633",
                      transform=Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0), units="1",
                      layers={"landcover": (lc, {"flag_values": [41]})})
    assert not ds["valid"].values[1, 0, 0] and ds["valid"].values.sum() == 2 * 20 - 1
    ds.to_zarr(tmp_path / "c.zarr", zarr_format=3, consolidated=True)
    back = open_cube(tmp_path / "c.zarr")
    assert list(back["band"].values) == ["b", "g", "r"] and back["landcover"].attrs["flag_values"] == [41]
    assert back["x"].values[0] == 500005.0 and back["data"].attrs["units"] == "1"
    with pytest.raises(ValueError, match=r"data is 2 dates x 3 bands; got 1 times and 3 bands"):
        cube_dataset(data, times=["2020-01-01"], bands=["b", "g", "r"], crs=4326, transform=Affine.identity())
    with pytest.raises(ValueError, match=r"layer 'lc' must be \(y, x\) = \(4, 5\); got \(5, 4\)"):
        cube_dataset(data, times=["2020-01-01", "2020-02-01"], bands=["b", "g", "r"], crs=4326,
                     transform=Affine.identity(), layers={"lc": lc.T})


def test_a_subset_cube_is_read_with_its_own_geotransform(tmp_path, caplog) -> None:
    """A user's slice of a cube, written out, keeps its parent's GeoTransform (an origin 5 px west,
    10 px north): read, it carries the one its coordinates give, which every product copies."""
    import logging

    from affine import Affine

    from tasks.cube import cube_dataset, open_cube

    t = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)
    cube = cube_dataset(np.ones((2, 1, 40, 50), np.float32), times=["2020-01-01", "2020-01-02"], bands=["b"],
                        transform=t, crs="EPSG:32633")
    cube.to_zarr(tmp_path / "whole.zarr", zarr_format=3, consolidated=True)
    cube.isel(y=slice(10, 30), x=slice(5, 45)).to_zarr(tmp_path / "part.zarr", zarr_format=3, consolidated=True)
    with caplog.at_level(logging.INFO, logger="tasks.cube"):
        whole = open_cube(tmp_path / "whole.zarr")
        assert not caplog.records
        part = open_cube(tmp_path / "part.zarr")
    assert whole["spatial_ref"].attrs["GeoTransform"] == cube["spatial_ref"].attrs["GeoTransform"]
    stored = Affine.from_gdal(*map(float, part["spatial_ref"].attrs["GeoTransform"].split()))
    assert stored.almost_equals(t * Affine.translation(5, 10), precision=1e-6)
    assert "GeoTransform did not match" in caplog.text


def test_float32_coordinates_are_read_as_the_regular_grid_they_round(tmp_path) -> None:
    """x / y written as float32 (some exporters do) round MODIS sinusoidal centres by up to 0.5 m,
    so their steps look uneven: every stage refused the cube and advised regridding."""
    from affine import Affine

    from tasks.cube import cube_dataset, cube_transform, open_cube

    t = Affine(231.65635826385406, 0.0, -6073798.0573, 0.0, -231.65635826385406, -1278279.7849)
    cube = cube_dataset(np.ones((1, 1, 30, 40), np.float32), times=["2020-01-01"], bands=["ndvi"], transform=t,
                        crs="+proj=sinu +R=6371007.181 +units=m +no_defs")
    low = cube.assign_coords(x=cube["x"].astype(np.float32), y=cube["y"].astype(np.float32))
    low.to_zarr(tmp_path / "f32.zarr", zarr_format=3, consolidated=True)
    ds = open_cube(tmp_path / "f32.zarr")
    assert ds["x"].dtype == np.float64 and cube_transform(ds) == t
    np.testing.assert_array_equal(ds["x"].values, cube["x"].values)
    # without the stored transform: the straight line the rounded values fit
    del low["spatial_ref"].attrs["GeoTransform"]
    low.to_zarr(tmp_path / "bare.zarr", zarr_format=3, consolidated=True)
    assert cube_transform(open_cube(tmp_path / "bare.zarr")).almost_equals(t, precision=0.01)  # within 1 cm
