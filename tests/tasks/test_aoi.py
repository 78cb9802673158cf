"""An area of interest for a new cube: ``--bounds`` (in any CRS) or ``--aoi`` (GeoJSON, raster)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from flows.cli import main
from tasks import ingest
from tasks.aoi import aoi_bounds, bounds_in_crs

# two 30 m tiles side by side, 40 x 40 px each: west at x 600000-601200, east at 601200-602400
WEST, EAST, TOP = 600_000.0, 601_200.0, 5_000_000.0


def _tile(path: Path, x0: float, value: int) -> None:
    a = np.full((2, 40, 40), value, np.uint16)
    a[:, :, :20] += 1000  # the tile's west half is brighter: the window read shows in the values
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=2, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(x0, TOP, 30, 30), nodata=0) as ds:
        ds.write(a)


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    for d in ("20230601", "20230611"):
        _tile(tmp_path / "tiles" / f"T33UUP_{d}_west.tif", WEST, 100)
        _tile(tmp_path / "tiles" / f"T33UVP_{d}_east.tif", EAST, 200)
    _tile(tmp_path / "tiles" / "T33UVP_20230621_east.tif", EAST, 300)  # a date with the east tile only
    return tmp_path / "tiles"


def test_bounds_cut_the_cube_and_skip_the_tiles_outside(tiles: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "aoi.zarr"
    # 300 m x 300 m in the west tile's eastern half, not on its 30 m lattice: snapped outward
    box = ["600700", "4999300", "600990", "4999590"]
    assert main(["ingest", str(tiles), "--out", str(out), "--bounds", *box]) == 0
    text = capsys.readouterr().out
    assert "2 scenes ingested, 3 skipped, 0 quarantined" in text
    assert "T33UVP_20230621_east.tif: outside the cube's bounds" in text
    ds = xr.open_zarr(out)
    assert ds.sizes["time"] == 2 and (ds.sizes["y"], ds.sizes["x"]) == (11, 10)
    assert float(ds.x.min()) == 600_705.0 and float(ds.y.max()) == 4_999_595.0  # pixel centres
    np.testing.assert_array_equal(ds.data.values, 100.0)  # the west tile's eastern half only
    # the same area again: nothing new; another area: refused, the cube and its catalog kept
    catalog = out.with_name(out.name + ".catalog.yaml").read_text()
    assert main(["ingest", str(tiles), "--out", str(out), "--bounds", *box]) == 0
    assert "0 scenes ingested, 3 skipped" in capsys.readouterr().out
    assert main(["ingest", str(tiles), "--out", str(out), "--bounds", "600000", "4999000", "601000", "5000000"]) == 2
    err = capsys.readouterr().err
    assert "the cube exists on another grid than the one asked for: bounds" in err and "--out" in err
    assert out.with_name(out.name + ".catalog.yaml").read_text() == catalog
    assert xr.open_zarr(out).sizes["time"] == 2


def test_bounds_in_lon_lat_and_aoi_files(tiles: Path, tmp_path: Path, capsys) -> None:
    # the east tile's western half as lon / lat
    lon_lat = transform_bounds("EPSG:32633", "EPSG:4326", 601_230, 4_999_100, 601_770, 4_999_900)
    # without --bounds-crs degrees are refused, with the fix named
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "deg.zarr"),
                 "--bounds", *map(str, lon_lat)]) == 2
    assert "look like longitude / latitude" in capsys.readouterr().err
    assert not (tmp_path / "deg.zarr").exists()
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "ll.zarr"),
                 "--bounds", *map(str, lon_lat), "--bounds-crs", "EPSG:4326"]) == 0
    assert "3 scenes ingested, 2 skipped" in capsys.readouterr().out
    ll = xr.open_zarr(tmp_path / "ll.zarr")
    assert ll.sizes["time"] == 3 and float(ll.data.min()) >= 1200  # the east tile's bright half

    # the same area as a GeoJSON feature collection (lon / lat by RFC 7946)
    x0, y0, x1, y1 = lon_lat
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    geojson = tmp_path / "field.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "gj.zarr"), "--aoi", str(geojson)]) == 0
    capsys.readouterr()
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "gj.zarr")[["data", "valid"]], ll[["data", "valid"]])

    # a raster's extent as the area: the west tile itself
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "r.zarr"),
                 "--aoi", str(tiles / "T33UUP_20230601_west.tif")]) == 0
    assert xr.open_zarr(tmp_path / "r.zarr").sizes["x"] == 40
    capsys.readouterr()

    # a dry run says what it would skip
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "dry.zarr"), "--aoi", str(geojson), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "would skip T33UUP_20230601_west.tif: outside the cube's bounds" in text
    assert "3 new scene(s)" in text and not (tmp_path / "dry.zarr").exists()


def test_aoi_files_and_bounds_errors(tmp_path: Path) -> None:
    point = tmp_path / "p.geojson"
    point.write_text(json.dumps({"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[10, 50], [11, 49]]},
                                 "properties": {}}))
    assert aoi_bounds(point) == ((10.0, 49.0, 11.0, 50.0), "EPSG:4326")
    named = tmp_path / "utm.json"  # a 2008-style GeoJSON naming its CRS
    named.write_text(json.dumps({"type": "Polygon", "coordinates": [[[1, 2], [3, 2], [3, 4], [1, 2]]],
                                 "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}}))
    assert aoi_bounds(named) == ((1.0, 2.0, 3.0, 4.0), "EPSG:32633")
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(ValueError, match="empty.geojson: holds no geometry"):
        aoi_bounds(empty)
    shp = tmp_path / "fields.shp"
    shp.write_bytes(b"\x00\x00\x27\x0a" + bytes(96))
    with pytest.raises(ValueError, match=r"fields.shp: neither GeoJSON .* ogr2ogr -f GeoJSON"):
        aoi_bounds(shp)
    with pytest.raises(ValueError, match="no such file"):
        aoi_bounds(tmp_path / "nope.geojson")
    with pytest.raises(ValueError, match="min < max"):
        bounds_in_crs((5, 0, 1, 1), "EPSG:4326", "EPSG:32633")
    assert bounds_in_crs((1, 2, 3, 4), "EPSG:32633", "EPSG:32633") == (1, 2, 3, 4)


def test_catalog_grid_bounds_in_lon_lat(tiles: Path, tmp_path: Path) -> None:
    """A catalog's grid may give its bounds in another CRS (``bounds_crs``): the pipeline's cube is
    cut as the CLI's --bounds-crs cuts it."""
    from tasks.adhoc import build_adhoc_catalog
    from tasks.catalog import GridSpec, catalog_from_dict
    from tasks.ingest import ingest_cube

    lon_lat = transform_bounds("EPSG:32633", "EPSG:4326", 601_230, 4_999_100, 601_770, 4_999_900)
    spec = GridSpec(bounds=lon_lat, bounds_crs="EPSG:4326")  # on the first scene's grid
    assert spec.bounds_in("EPSG:32633") == bounds_in_crs(lon_lat, "EPSG:4326", "EPSG:32633")
    assert GridSpec(crs="EPSG:32633", resolution=30.0, bounds=(1, 2, 3, 4)).bounds_in("EPSG:32633") == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="unknown CRS 'EPSG:99999'"):
        GridSpec(crs="EPSG:32633", resolution=30.0, bounds=lon_lat, bounds_crs="EPSG:99999")
    assert GridSpec(crs="EPSG:4326").xy_resolution is None  # from the scenes
    with pytest.raises(ValueError, match="a grid needs a crs, a resolution or bounds"):
        GridSpec()

    raw, path = build_adhoc_catalog([str(tiles)], tmp_path / "cat.zarr")
    raw["cubes"]["cat"]["grid"] = spec.model_dump()
    report = ingest_cube(catalog_from_dict(raw, path=path), "cat")
    assert len(report.ingested) == 3 and len(report.skipped) == 2
    ds = xr.open_zarr(tmp_path / "cat.zarr")
    assert float(ds.data.min()) >= 1200 and 601_200 < float(ds.x.min()) < float(ds.x.max()) < 601_800


def test_a_crs_without_a_resolution_keeps_the_scenes_pixel_size(tiles: Path, tmp_path: Path, capsys) -> None:
    """``--crs EPSG:4326`` alone took the first file's 30 (metres) as 30 degrees: a 1 x 1 px cube.
    The pixel size is now what the scenes' 30 m pixels come out as in the new CRS."""
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "ll.zarr"), "--crs", "EPSG:4326"]) == 0
    capsys.readouterr()
    ds = xr.open_zarr(tmp_path / "ll.zarr")
    step = float(ds.x[1] - ds.x[0])
    assert 0.0002 < step < 0.0005 and ds.sizes["x"] > 80  # ~30 m at 45 N, both tiles side by side
    assert np.isfinite(ds.data.values).mean() > 0.5


def test_a_scene_declaring_an_enormous_footprint_is_quarantined_not_the_grid(tiles: Path, tmp_path: Path,
                                                                             capsys) -> None:
    """A first ingest's grid is the scenes' union: one (sparse) header declaring 200 000 x 200 000
    px of 30 m refused the whole grid, so the good scenes were not taken either."""
    with rasterio.open(tiles / "T33UUP_20230701_huge.tif", "w", driver="GTiff", width=200_000, height=200_000,
                       count=2, dtype="uint16", crs="EPSG:32633", transform=from_origin(WEST, TOP, 30, 30),
                       tiled=True, compress="deflate", BIGTIFF="YES", SPARSE_OK=True):
        pass
    out = tmp_path / "c.zarr"
    for dry in (["--dry-run"], []):
        assert main(["ingest", str(tiles), "--out", str(out), *dry]) == 0
        text = capsys.readouterr().out
        assert ("T33UUP_20230701_huge.tif: its footprint alone is 200,000 x 200,000 px at the cube's resolution, "
                "over the grid limit") in text
    assert "5 scenes ingested, 0 skipped, 1 quarantined" in text
    ds = xr.open_zarr(out)
    assert (ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]) == (3, 40, 80)


def test_grid_options_that_cannot_be_meant_are_refused_naming_the_option(tiles: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """Before anything is read or written: a pixel larger than the area (metres given to a CRS in
    degrees), a grid too large to hold a date of, an option that needs another, and the catalog's
    own checks reported by the option that set the key."""
    out = tmp_path / "c.zarr"
    cases = {
        ("--crs", "EPSG:4326", "--resolution", "10"): "is over 4 times the size of the area it covers",
        ("--resolution", "0.0001"): "over the limit of 1,073,741,824 px",
        ("--resolution", "0"): "--resolution: resolution must be positive",
        ("--bounds-crs", "EPSG:4326"): "--bounds-crs EPSG:4326 without --bounds",
        ("--date-format", "%d%m%Y"): "--date-format '%d%m%Y' without --date-pattern",
        ("--crs", "EPSG:999999"): "invalid option: --crs: unknown CRS",
        ("--chunks", "0"): "invalid option: --chunks: ",
    }
    for options, message in cases.items():
        for dry in ([], ["--dry-run"]):
            assert main(["ingest", str(tiles), "--out", str(out), *options, *dry]) == 2, options
            err = capsys.readouterr().err
            assert message in err and "cubes." not in err, (options, err)
            assert not out.exists() and not out.with_name("c.zarr.parts").exists()
    # a pixel a little larger than the area (a field's MODIS pixels) is meant: taken
    assert main(["ingest", str(tiles), "--out", str(out), "--resolution", "4000", "--dry-run"]) == 0
    assert "1 x 1 px" in capsys.readouterr().out
    main(["ingest", str(tiles), "--out", str(out), "--crs", "EPSG:4326", "--resolution", "10"])
    assert "the CRS's units are degrees (10 m is about 9e-05 degrees)" in capsys.readouterr().err


def test_cli_errors_of_the_storage_and_interrupts_are_one_line(tiles: Path, tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    """Storage that cannot be written is found before the work (one line with the path and the OS's
    reason); an interrupt says how to go on, without a traceback."""
    import errno
    import tempfile

    import flows.cli as cli

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", read_only)
        assert main(["ingest", str(tiles), "--out", str(tmp_path / "ro" / "c.zarr")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ro' / 'c.zarr'}: cannot write there: Read-only file system ({tmp_path})" in err
    assert "Traceback" not in err and not (tmp_path / "ro").exists()

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", _parser_with(cli.build_parser, "ingest", interrupted))
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "c.zarr")]) == 130
    err = capsys.readouterr().err
    assert "interrupted; nothing finished is lost: run the same command again" in err and "Traceback" not in err


def _parser_with(build, command: str, func):
    """``build`` whose ``command`` runs ``func``."""
    def patched(*args, **kwargs):
        parser = build(*args, **kwargs)
        for action in parser._subparsers._group_actions:  # argparse keeps them here
            if command in action.choices:
                action.choices[command].set_defaults(func=func)
        return parser
    return patched


def test_a_later_scene_beyond_a_grid_the_scenes_fixed_is_cut_with_a_warning(tmp_path: Path, monkeypatch) -> None:
    """The first run's scenes fix the grid; a later tile reaching beyond it loses that part, and says
    so with the share. With the area given (--bounds, kept by the catalog beside the cube when the
    next ingest leaves it out) the cut is what was asked: no warning."""
    src = tmp_path / "src"
    _tile(src / "T33UUP_20230601_west.tif", WEST, 100)
    for args in ([], ["--bounds", "600000", "4998800", "601200", "5000000"]):
        out = tmp_path / f"c{len(args)}.zarr"
        (src / "T33UVP_20230611_shifted.tif").unlink(missing_ok=True)
        assert main(["ingest", str(src), "--out", str(out), *args]) == 0
        _tile(src / "T33UVP_20230611_shifted.tif", WEST + 600, 200)  # half of it east of the grid
        logged: list[str] = []  # the log call itself: the test session's logging setup varies
        monkeypatch.setattr(ingest.log, "warning", lambda msg, *a, into=logged: into.append(msg % a))
        assert main(["ingest", str(src), "--out", str(out)]) == 0  # the catalog beside it keeps --bounds
        monkeypatch.undo()
        warned = [m for m in logged if "outside the cube's grid" in m]
        if args:
            assert not warned
        else:
            assert len(warned) == 1 and "T33UVP_20230611_shifted.tif: 50% of its footprint" in warned[0]
        ds = xr.open_zarr(out)
        assert ds.sizes["x"] == 40 and ds.sizes["time"] == 2
        assert ("bounds:" in out.with_name(out.name + ".catalog.yaml").read_text()) == bool(args)


def test_a_scene_dated_after_today_is_taken_with_a_warning(tmp_path: Path, monkeypatch) -> None:
    """A date after today is nearly always misread (a day-month swap, a processing date): ingest
    takes it, as the rule says, and says so naming the file and the rule to give."""
    _tile(tmp_path / "src" / "T33UUP_20230601_west.tif", WEST, 100)
    from datetime import date, timedelta

    ahead = date.today() + timedelta(days=400)  # within the years a file name's date may have
    _tile(tmp_path / "src" / f"T33UUP_{ahead:%Y%m%d}_west.tif", WEST, 100)
    logged: list[str] = []
    monkeypatch.setattr(ingest.log, "warning", lambda msg, *a: logged.append(msg % a))
    assert main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "c.zarr")]) == 0
    future = [m for m in logged if "after today" in m]
    assert len(future) == 1 and f"T33UUP_{ahead:%Y%m%d}_west.tif: dated {ahead}, after today" in future[0]
    assert xr.open_zarr(tmp_path / "c.zarr").sizes["time"] == 2
