from __future__ import annotations

from datetime import datetime

import pytest

from tasks.discover import parse_date_from_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PSScene_20190612_163402_1012_3B_AnalyticMS_SR.tif", datetime(2019, 6, 12, 16, 34, 2)),
        ("S2_20190612T163402_B04.tif", datetime(2019, 6, 12, 16, 34, 2)),
        ("scene_2019-06-12T16:34:02.tif", datetime(2019, 6, 12, 16, 34, 2)),
        ("scene_2019-06-12_16-34-02.tif".replace("-34-02", "3402"), datetime(2019, 6, 12, 16, 34, 2)),
        ("TERRA_MODIS_012010_NDVI_2013-09-14.jp2", datetime(2013, 9, 14)),
        ("LC08_20200115_B4.tif", datetime(2020, 1, 15)),
        ("MOD11A1.A2019182.h10v05.061.LST_Day_1km.tif", datetime(2019, 7, 1)),
        ("MOD13Q1.A2020366.tif", datetime(2020, 12, 31)),
        ("scene_2021366.tif", None),  # QA11: day 366 of a year of 365 was 1 January after it
        ("aerial_19450601_20200101.tif", datetime(1945, 6, 1)),  # QA11: an air photo, not its scan date
        ("no_date_here.tif", None),
        ("bad_20191345.tif", None),
    ],
)
def test_parse_date_from_name(name: str, expected: datetime | None) -> None:
    assert parse_date_from_name(name) == expected


def test_date_from_tiff_metadata_when_the_name_has_none(tmp_path) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from tasks.catalog import SourceSpec
    from tasks.discover import scene_refs_for_file

    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", height=4, width=4, count=1, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(0, 4, 1, 1)) as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))
        dst.update_tags(TIFFTAG_DATETIME="2021:03:04 05:06:07")
    spec = SourceSpec(glob=["*.tif"], bands=[{"name": "b", "index": 1}])
    (ref,) = scene_refs_for_file(str(path), "s", spec)
    assert ref.date == datetime(2021, 3, 4, 5, 6, 7)
    nodate = tmp_path / "other.tif"
    with rasterio.open(nodate, "w", driver="GTiff", height=4, width=4, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))
    with pytest.raises(Exception, match="no acquisition date"):
        scene_refs_for_file(str(nodate), "s", spec)


def test_date_default_and_pattern_for_undated_names(tmp_path, real_fixtures) -> None:
    """A scene with no date anywhere takes ``date.default``; ``date.pattern``/``format`` read
    another naming convention; ``fusioncube ingest --date`` builds a one-date cube of the real
    Albers COG (its name and tags carry no date)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from flows.cli import main
    from tasks.catalog import SourceSpec
    from tasks.cube import open_cube
    from tasks.discover import scene_refs_for_file

    path = tmp_path / "dem_v3.tif"
    with rasterio.open(path, "w", driver="GTiff", height=4, width=4, count=1, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(0, 4, 1, 1)) as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))
    spec = SourceSpec(glob=["*.tif"], bands=[{"name": "b", "index": 1}], date={"default": "2020-06-01"})
    (ref,) = scene_refs_for_file(str(path), "s", spec)
    assert ref.date == datetime(2020, 6, 1)
    named = tmp_path / "tile_07.03.2021.tif"
    path.rename(named)
    spec = SourceSpec(glob=["*.tif"], bands=[{"name": "b", "index": 1}],
                      date={"pattern": r"_(?P<date>\d\d\.\d\d\.\d{4})", "format": "%d.%m.%Y"})
    (ref,) = scene_refs_for_file(str(named), "s", spec)
    assert ref.date == datetime(2021, 3, 7)
    cog = real_fixtures / "albers_cog_rioxarray" / "cog.tif"
    assert main(["ingest", str(cog), "--out", str(tmp_path / "nodate.zarr")]) == 1  # quarantined
    assert main(["ingest", str(cog), "--out", str(tmp_path / "cog.zarr"), "--date", "2020-06-01"]) == 0
    ds = open_cube(tmp_path / "cog.zarr")
    assert ds.sizes["time"] == 1 and str(ds["time"].values[0])[:10] == "2020-06-01"


def test_cli_ingest_of_an_ungeoreferenced_image_is_one_line_naming_it(tmp_path, capfd) -> None:
    """A PNG with no georeferencing: exit 2 and one line that names the file and the reason; no
    traceback from the failed Prefect task on the terminal, no rasterio warning, no cube written."""
    import numpy as np
    from PIL import Image

    from flows.cli import main

    photo = tmp_path / "photo_2020-01-01.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    assert main(["ingest", str(photo), "--out", str(tmp_path / "p.zarr")]) == 2
    err = capfd.readouterr().err
    assert f"{photo}: no CRS (not georeferenced)" in err and err.count("fusioncube: error:") == 1
    assert "Traceback" not in err and "NotGeoreferencedWarning" not in err
    assert not (tmp_path / "p.zarr").exists()


def test_cli_ingest_of_hdf4_says_why_and_how_out(tmp_path, capfd) -> None:
    """rasterio's wheels have no HDF4 driver: a MODIS .hdf gets a reason and a way out, not
    only GDAL's 'not recognized as being in a supported file format'."""
    from flows.cli import main

    hdf = tmp_path / "MOD11A1.A2019182.h10v05.061.hdf"
    hdf.write_bytes(b"\x0e\x03\x13\x01" + bytes(range(256)) * 8)
    assert main(["ingest", str(hdf), "--out", str(tmp_path / "h.zarr")]) == 2
    err = capfd.readouterr().err
    assert f"{hdf.name}: is HDF4 (MODIS / VIIRS .hdf)" in err and "gdal_translate" in err


def test_glob_roots_name_each_folder_once(tmp_path) -> None:
    """A folder given as a source gets one glob per kind of file it holds: its refusal message
    named the folder once per glob."""
    from tasks.discover import glob_roots

    sub = tmp_path / "b"
    sub.mkdir()
    roots = glob_roots([f"{tmp_path}/*.tif", f"{tmp_path}/*.zip", f"{tmp_path}/**/*.jp2", f"{sub}/*.tif"])
    assert roots == [tmp_path.resolve(), sub.resolve()]


@pytest.mark.parametrize(("value", "expected"), [
    ("2019-06-07T10:30:00+00:00", datetime(2019, 6, 7, 10, 30)),
    ("2019-06-07T23:30:00-05:00", datetime(2019, 6, 8, 4, 30)),  # offsets applied: UTC
    ("2019-06-01 02:00:00 +06:00", datetime(2019, 5, 31, 20)),
    ("2019-06-01T10:00:00Z", datetime(2019, 6, 1, 10)), ("2019-06-01 10:00:00 UTC", datetime(2019, 6, 1, 10)),
    ("2019:06:01 15:30:45", datetime(2019, 6, 1, 15, 30, 45)), ("2019-06-07T23:30", datetime(2019, 6, 7, 23, 30)),
    ("1900-01-01 00:00:00.0", datetime(1900, 1, 1)), ("1800-01-01 00:00:0.0", datetime(1800, 1, 1)),
    ("2019-06-01T00:00:00.123456789", datetime(2019, 6, 1, 0, 0, 0, 123456)), ("20190601", datetime(2019, 6, 1)),
    ("soon", None),
])
def test_tag_and_unit_dates_are_read_with_their_offsets(value: str, expected: datetime | None) -> None:
    from tasks.discover import _parse_meta_value

    assert _parse_meta_value(value) == expected


def _tif(path, **tags) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", height=4, width=4, count=1, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(0, 4, 1, 1)) as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))
        dst.update_tags(**tags)


def test_an_acquisition_tag_wins_over_the_files_own_date_and_a_bad_one_is_named(tmp_path, logged) -> None:
    """QA11: ACQUISITIONDATETIME with an offset was not read, so TIFFTAG_DATETIME (when the file was
    written) dated two scenes ten days apart as one, silently."""
    from tasks.catalog import SourceSpec
    from tasks.discover import scene_refs_for_file
    from tasks.errors import SceneError

    spec = SourceSpec(glob=["*.tif"], bands=[{"name": "b", "index": 1}])
    _tif(tmp_path / "a.tif", ACQUISITIONDATETIME="2019-06-07T10:30:00+02:00", TIFFTAG_DATETIME="2024:01:05 10:00:00")
    assert scene_refs_for_file(str(tmp_path / "a.tif"), "s", spec)[0].date == datetime(2019, 6, 7, 8, 30)
    _tif(tmp_path / "b.tif", ACQUISITIONDATETIME="last Tuesday", TIFFTAG_DATETIME="2024:01:05 10:00:00")
    with pytest.raises(SceneError, match="its tag ACQUISITIONDATETIME='last Tuesday' is no date"):
        scene_refs_for_file(str(tmp_path / "b.tif"), "s", spec)
    _tif(tmp_path / "d.tif", PROCESSING_DATETIME="2024-01-05T10:00:00")  # not when it was acquired
    with pytest.raises(SceneError, match="no acquisition date"):
        scene_refs_for_file(str(tmp_path / "d.tif"), "s", spec)
    _tif(tmp_path / "c.tif", TIFFTAG_DATETIME="2024:01:05 10:00:00")
    with logged("tasks.discover") as messages:
        assert scene_refs_for_file(str(tmp_path / "c.tif"), "s", spec)[0].date == datetime(2024, 1, 5, 10)
    assert any("dated by its TIFFTAG_DATETIME (2024:01:05 10:00:00), the time the file was made" in m for m in messages)


def test_a_date_pattern_that_misses_or_reads_no_date_says_so(tmp_path) -> None:
    """QA11: a pattern that did not match a name fell back to the file's own date unsaid; one whose
    group matched an unreadable date asked for the pattern the user had given."""
    from tasks.catalog import SourceSpec
    from tasks.discover import scene_refs_for_file
    from tasks.errors import SceneError

    spec = SourceSpec(glob=["*.tif"], bands=[{"name": "b", "index": 1}], date={"pattern": r"_(?P<date>\d{8})_"})
    _tif(tmp_path / "other_20190620.tif", TIFFTAG_DATETIME="2024:01:05 10:00:00")
    with pytest.raises(SceneError, match="does not match its name"):
        scene_refs_for_file(str(tmp_path / "other_20190620.tif"), "s", spec)
    _tif(tmp_path / "tile_01062019_a.tif")
    with pytest.raises(SceneError, match=r"matched '01062019', which is no date .* --date-format"):
        scene_refs_for_file(str(tmp_path / "tile_01062019_a.tif"), "s", spec)


@pytest.mark.parametrize(("units", "calendar", "values", "expected"), [
    ("days since 2019-01-01", "noleap", "{0,31,59,424,789}",
     ["2019-01-01", "2019-02-01", "2019-03-01", "2020-03-01", "2021-03-01"]),
    ("days since 2019-01-01", "standard", "{0,424}", ["2019-01-01", "2020-02-29"]),
    ("hours since 1900-01-01 00:00:00.0", "gregorian", "{1043136,1043160}", ["2019-01-01", "2019-01-02"]),
    ("hours since 1800-01-01 00:00:0.0", "", "{1920600}", ["2019-02-07"]),
    ("days since 2019-06-01 02:00:00 +06:00", "", "{0}", ["2019-05-31T20"]),
])
def test_netcdf_time_axes_in_their_calendars_and_units(units, calendar, values, expected) -> None:
    """QA11: noleap / 360_day calendars were counted as Gregorian, and units such as ``hours since
    1900-01-01 00:00:00.0`` (ERA5) or with an offset were refused or misread."""
    import numpy as np

    from tasks.discover import _netcdf_times

    tags = {"NETCDF_DIM_EXTRA": "{time}", "time#units": units, "time#calendar": calendar,
            "NETCDF_DIM_time_VALUES": values}
    got = [np.datetime64(t).astype(f"datetime64[{'h' if 'T' in expected[0] else 'D'}]") for t in _netcdf_times(tags)]
    assert [str(t) for t in got] == expected


@pytest.mark.parametrize(("units", "calendar", "message"), [
    ("days since 2019-01-01", "360_day", "counts in the '360_day' calendar"),
    ("months since 2019-01-01", "", "in 'months since 2019-01-01', which fusioncube does not read"),
])
def test_netcdf_time_axes_fusioncube_cannot_place_are_refused_saying_so(units, calendar, message) -> None:
    from tasks.discover import _netcdf_times
    from tasks.errors import SceneError

    tags = {"NETCDF_DIM_EXTRA": "{time}", "time#units": units, "time#calendar": calendar,
            "NETCDF_DIM_time_VALUES": "{0,30}"}
    with pytest.raises(SceneError, match=message):
        _netcdf_times(tags, "x.nc")


def test_a_one_step_netcdf_takes_its_time_axis_before_its_name(tmp_path) -> None:
    """QA11: ``tas_day_20190101-20191231.nc`` holding 2019-06-01 was dated by its name."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    from tasks.catalog import SourceSpec
    from tasks.discover import scene_refs_for_file

    lat, lon = np.arange(-12.0, -11.0, 0.25) + 0.125, np.arange(-56.0, -55.0, 0.25) + 0.125
    nc = xr.Dataset({"tas": (("time", "lat", "lon"), np.ones((1, lat.size, lon.size), "float32"))},
                    coords={"time": pd.DatetimeIndex(["2019-06-01"]), "lat": lat, "lon": lon})
    nc.lat.attrs.update(units="degrees_north")
    nc.lon.attrs.update(units="degrees_east")
    path = tmp_path / "tas_day_20190101-20191231.nc"
    nc.to_netcdf(path)
    spec = SourceSpec(glob=["*.nc"], bands=[{"name": "tas", "index": 1}])
    (ref,) = scene_refs_for_file(str(path), "s", spec)
    assert ref.date == datetime(2019, 6, 1)


def test_scenes_of_one_date_hours_apart_are_said_to_share_a_slice(tmp_path, logged) -> None:
    """QA11: four 6-hourly files of one day became one slice without a word."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from flows.cli import main

    (tmp_path / "h").mkdir()
    for hour in ("00", "06", "12", "18"):
        with rasterio.open(tmp_path / "h" / f"LST_2019-06-01T{hour}0000.tif", "w", driver="GTiff", height=4, width=4,
                           count=1, dtype="float32", crs="EPSG:32633", transform=from_origin(0, 40, 10, 10)) as dst:
            dst.write(np.full((1, 4, 4), 280 + int(hour), np.float32))
    with logged("tasks.ingest") as messages:
        assert main(["ingest", str(tmp_path / "h"), "--out", str(tmp_path / "h.zarr")]) == 0
    assert any("2019-06-01: 4 scenes acquired from 00:00 to 18:00 UTC (18.0 h apart) go into one slice" in m
               for m in messages)
