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
