from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from tasks.catalog import MaskRule
from tasks.warp import Grid, _lattice_offset, _paste, mask_to_clear

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_mask_rules(dtype) -> None:
    m = np.arange(8, dtype=dtype)[None, :]
    assert mask_to_clear(m, MaskRule(clear_values=[1])).astype(int).tolist() == [[0, 1, 0, 0, 0, 0, 0, 0]]
    # MODIS QC: bits 0-1 == 2 or 3 -> not produced
    qc = mask_to_clear(m, MaskRule(invalid_values=[2, 3], bit_mask=3))
    assert qc.astype(int).tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]]
    assert mask_to_clear(m, MaskRule(invalid_bits=[2])).astype(int).tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_mask_rule_needs_a_rule() -> None:
    with pytest.raises(ValueError, match="clear_values, invalid_bits or invalid_values"):
        MaskRule()


def test_grid_snaps_outward_to_the_lattice() -> None:
    g = Grid.from_bounds("EPSG:32615", (10.5, 20.2, 40.1, 50.0), (3.0, 3.0))
    assert g.bounds == (9.0, 18.0, 42.0, 51.0) and (g.width, g.height) == (11, 11)
    anchored = Grid.from_bounds("EPSG:32615", (10.5, 20.2, 40.1, 50.0), (3.0, 3.0), anchor=(10.5, 50.0))
    assert anchored.transform.c == 10.5 and anchored.transform.f == 50.0
    with pytest.raises(ValueError, match="no pixel"):
        Grid.from_bounds("EPSG:32615", (0, 0, 0, 0), (3.0, 3.0))


def test_lattice_offset_and_paste_clip_at_the_edges() -> None:
    grid = Grid(CRS.from_epsg(32615), Affine(3, 0, 100, 0, -3, 200), 4, 4)

    class Raw:  # the two attributes _lattice_offset reads
        crs = CRS.from_epsg(32615)
        transform = Affine(3, 0, 97, 0, -3, 203)

    assert _lattice_offset(Raw(), grid) == (-1, -1)
    Raw.transform = Affine(3, 0, 98.5, 0, -3, 203)
    assert _lattice_offset(Raw(), grid) is None  # half a pixel off: needs a real warp
    dst = np.zeros((1, 4, 4))
    _paste(np.ones((1, 3, 3)), dst, -1, -1)
    assert dst[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_set_threads_caps_gdal_and_the_warper_and_rejects_nonsense() -> None:
    from tasks import warp

    try:
        warp.set_threads(1)
        assert warp._gdal_env()["GDAL_NUM_THREADS"] == "1" and warp._warp_threads() == 1
        warp.set_threads(None)
        assert warp._gdal_env()["GDAL_NUM_THREADS"] == "ALL_CPUS" and warp._warp_threads() == warp.WARP_THREADS
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="positive integer"):
                warp.set_threads(bad)  # type: ignore[arg-type]
    finally:
        warp.set_threads(None)


def test_worker_preload_gives_zarr_and_gdal_the_workers_thread_count() -> None:
    from types import SimpleNamespace

    import zarr

    from flows.worker_preload import dask_setup
    from tasks import warp

    worker = SimpleNamespace(state=SimpleNamespace(nthreads=3), address="tcp://127.0.0.1:0")
    before = zarr.config.get("threading.max_workers")
    try:
        dask_setup(worker)
        assert zarr.config.get("threading.max_workers") == 3
        assert warp._gdal_env()["GDAL_NUM_THREADS"] == "3"
    finally:
        zarr.config.set({"threading.max_workers": before})
        warp.set_threads(None)


_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from flows.worker_preload import tune_malloc
    assert tune_malloc()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    a = np.empty(2**20, np.uint8)  # 1 MiB, touched, freed
    a.fill(1)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_worker_preload_undoes_dasks_malloc_trim_setting() -> None:
    """Under Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` every 1 MiB buffer is a fresh mmap (its pages
    faulted in again each time); after the preload's :func:`tune_malloc` freed buffers are reused."""
    import subprocess

    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    faults = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, check=True,
                                       capture_output=True, text=True, cwd=REPO).stdout)
              for mode in ("dask", "tuned")}
    assert faults["dask"] > 50 * 100  # ~256 page faults per buffer
    assert faults["tuned"] < 1000, faults


def test_a_truncated_jpeg2000s_read_error_keeps_gdals_reason(tmp_path: Path, real_fixtures: Path) -> None:
    """rasterio says only "Read failed. See previous exception for details."; the reason kept is
    GDAL's (the previous exception), which tells the operator the file is cut short."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from tasks.warp import read_error

    src = sorted((real_fixtures / "modis_ndvi_sinop").glob("*.jp2"))[0]
    cut = tmp_path / "cut.jp2"
    cut.write_bytes(src.read_bytes()[:9000])
    with pytest.raises(RasterioIOError) as info, rasterio.open(cut) as ds:
        ds.read(1)
    reason = read_error(info.value)
    assert reason.startswith("Read failed: ") and "IReadBlock failed" in reason, reason
    assert read_error(RasterioIOError("no such file")) == "no such file"


def _write(path: Path, transform: Affine, arr: np.ndarray, crs: str, **profile) -> None:
    import rasterio

    count = arr.shape[0] if arr.ndim == 3 else 1
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[-2], width=arr.shape[-1], count=count,
                       dtype=arr.dtype, crs=crs, transform=transform, **profile) as dst:
        dst.write(arr if arr.ndim == 3 else arr[None])


@pytest.mark.parametrize("extra", [["--resolution", "2"], ["--crs", "EPSG:32614"]])
def test_no_cloud_value_is_kept_clear_when_a_scene_is_resampled(tmp_path: Path, extra: list[str]) -> None:
    """A Planet-like scene, surface reflectance 0.1 everywhere but a bright cloud its UDM2 flags:
    ingested onto a grid that is not its lattice, no pixel marked valid takes part of its value
    from the cloud (bilinear blends neighbours; the valid mask used to be warped by nearest)."""
    import xarray as xr

    from flows.cli import main

    t = Affine(3, 0, 450000, 0, -3, 4650000)
    refl = np.full((4, 60, 60), 1000, "uint16")
    refl[:, 20:40, 20:40] = 10000
    udm = np.zeros((8, 60, 60), "uint8")
    udm[0] = 1
    udm[0, 20:40, 20:40], udm[5, 20:40, 20:40] = 0, 1
    stem = tmp_path / "scenes" / "PSScene_20190601_100000_0000_3B_"
    stem.parent.mkdir()
    _write(Path(f"{stem}AnalyticMS_SR.tif"), t, refl, "EPSG:32615", nodata=0)
    _write(Path(f"{stem}udm2.tif"), t, udm, "EPSG:32615")
    assert main(["ingest", str(stem.parent), "--out", str(tmp_path / "c.zarr"), *extra]) == 0
    ds = xr.open_zarr(tmp_path / "c.zarr", consolidated=None).isel(time=0)
    valid = ds["valid"].values
    kept = ds["data"].values[:, valid]
    assert valid.sum() > 0.5 * valid.size and np.abs(kept - 0.1).max() < 1e-4


def test_a_coarser_band_file_takes_no_cloud_value_into_a_clear_pixel(tmp_path: Path) -> None:
    """Sentinel-2-like band files: B04 at 10 m, B8A and the SCL at 20 m, a cloud (SCL 9) in both
    bands: the 20 m band resampled onto the 10 m grid keeps no cloud-blended value valid."""
    import xarray as xr

    from flows.cli import main

    stem = tmp_path / "s2" / "T33UUP_20200601T100031"
    stem.parent.mkdir()
    b04 = np.full((80, 80), 1000, "uint16")
    b04[30:50, 30:50] = 10000
    b8a = np.full((40, 40), 1000, "uint16")
    b8a[15:25, 15:25] = 10000
    scl = np.full((40, 40), 4, "uint8")
    scl[15:25, 15:25] = 9
    coarse = Affine(20, 0, 500000, 0, -20, 5000800)
    _write(Path(f"{stem}_B04_10m.tif"), Affine(10, 0, 500000, 0, -10, 5000800), b04, "EPSG:32633")
    _write(Path(f"{stem}_B8A_20m.tif"), coarse, b8a, "EPSG:32633")
    _write(Path(f"{stem}_SCL_20m.tif"), coarse, scl, "EPSG:32633")
    assert main(["ingest", str(stem.parent), "--out", str(tmp_path / "c.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "c.zarr", consolidated=None).isel(time=0)
    valid = ds["valid"].values
    assert valid.sum() > 0.5 * valid.size
    for band in ds["band"].values:
        kept = ds["data"].sel(band=band).values[valid]
        assert kept.max() - kept.min() < 1e-4, band


def test_a_class_layer_without_nodata_keeps_class_0_and_marks_its_outside(tmp_path: Path) -> None:
    """``--layer`` with a class map whose code 0 is a class and which declares no nodata, covering
    the west half of the cube: class 0 stays (the layer's nodata used to be 0), and the east half
    holds the fill code the layer declares, not a class."""
    import xarray as xr

    from flows.cli import main

    t = Affine(3, 0, 450000, 0, -3, 4650000)
    stem = tmp_path / "scenes" / "PSScene_20190601_100000_0000_3B_"
    stem.parent.mkdir()
    _write(Path(f"{stem}AnalyticMS_SR.tif"), t, np.full((4, 40, 40), 1000, "uint16"), "EPSG:32615", nodata=0)
    classes = np.zeros((40, 20), "uint8")
    classes[20:] = 2
    _write(tmp_path / "classes.tif", t, classes, "EPSG:32615")
    assert main(["ingest", str(stem.parent), "--out", str(tmp_path / "c.zarr"),
                 "--layer", f"landcover={tmp_path / 'classes.tif'}"]) == 0
    layer = xr.open_zarr(tmp_path / "c.zarr", consolidated=None)["landcover"]
    assert layer.attrs["nodata"] == 255
    np.testing.assert_array_equal(layer.values[:, :20], classes)
    assert (layer.values[:, 20:] == 255).all()


@pytest.mark.parametrize("tag", [None, "10=Tree cover; 40=Cropland"])
def test_a_layer_takes_its_files_legend_colour_table_and_class_names(tmp_path: Path, tag: str | None) -> None:
    """``--layer`` with a class map (ESA WorldCover-like codes) that carries a colour table, and
    maybe the CLASSES tag the stages' COGs write: the layer's legend is the file's, for the codes
    it holds over the cube (its quick-looks and classifiers use it)."""
    import rasterio
    import xarray as xr

    from flows.cli import main
    from tasks.classify import label_scheme

    t = Affine(3, 0, 450000, 0, -3, 4650000)
    stem = tmp_path / "scenes" / "PSScene_20190601_100000_0000_3B_"
    stem.parent.mkdir()
    _write(Path(f"{stem}AnalyticMS_SR.tif"), t, np.full((4, 40, 40), 1000, "uint16"), "EPSG:32615", nodata=0)
    classes = np.full((40, 40), 10, "uint8")
    classes[:, 25:] = 40
    _write(tmp_path / "classes.tif", t, classes, "EPSG:32615", nodata=0)
    with rasterio.open(tmp_path / "classes.tif", "r+") as ds:
        ds.write_colormap(1, {10: (0, 100, 0, 255), 40: (240, 150, 255, 255), 50: (250, 0, 0, 255)})
        if tag:
            ds.update_tags(CLASSES=tag)
    assert main(["ingest", str(stem.parent), "--out", str(tmp_path / "c.zarr"),
                 "--layer", f"landcover={tmp_path / 'classes.tif'}"]) == 0
    layer = xr.open_zarr(tmp_path / "c.zarr", consolidated=None)["landcover"]
    assert layer.attrs["flag_values"] == [10, 40]  # 50 is in the table, not in the map
    assert layer.attrs["flag_colors"] == ["#006400", "#f096ff"]
    want = {10: "Tree cover", 40: "Cropland"} if tag else {10: "class 10", 40: "class 40"}
    assert label_scheme(layer).names == want


def test_class_maps_take_the_majority_only_onto_coarser_pixels() -> None:
    from rasterio.enums import Resampling

    from tasks.class_maps import class_resampling

    crs = CRS.from_epsg(32615)
    fine, coarse = Affine(3, 0, 450000, 0, -3, 4650000), Affine(30, 0, 450000, 0, -30, 4650000)
    assert class_resampling(None, coarse, crs, fine, crs, (100, 100)) == Resampling.nearest
    assert class_resampling("mode", coarse, crs, fine, crs, (100, 100)) == Resampling.nearest
    assert class_resampling(None, fine, crs, coarse, crs, (10, 10)) == Resampling.mode
    assert class_resampling("bilinear", coarse, crs, fine, crs, (100, 100)) == Resampling.bilinear  # as asked
    # NLCD's 30 m Albers onto a 3 m UTM grid: finer there too
    albers = CRS.from_epsg(5070)
    nlcd = Affine(30, 0, 100000, 0, -30, 2000000)
    from rasterio.warp import transform as tr

    (x,), (y,) = tr(albers, crs, [100000 + 1500], [2000000 - 1500])
    assert class_resampling(None, nlcd, albers, Affine(3, 0, x, 0, -3, y), crs, (100, 100)) == Resampling.nearest


def test_outside_a_coarser_band_file_without_nodata_nothing_is_observed(tmp_path: Path) -> None:
    """One file per band, the 20 m one (no nodata declared) covering only the north half of the
    10 m one: its south half used to be band value 0, counted observed."""
    import xarray as xr

    from flows.cli import main

    scenes = tmp_path / "s"
    scenes.mkdir()
    _write(scenes / "T33UUP_20200601T100000_band1.tif", Affine(10, 0, 500000, 0, -10, 5001000),
           np.full((100, 100), 500, "uint16"), "EPSG:32633")
    _write(scenes / "T33UUP_20200601T100000_band2.tif", Affine(20, 0, 500000, 0, -20, 5001000),
           np.full((25, 50), 700, "uint16"), "EPSG:32633")
    assert main(["ingest", str(scenes), "--out", str(tmp_path / "c.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "c.zarr", consolidated=None).isel(time=0)
    valid = ds["valid"].values
    assert valid[:50].all() and not valid[50:].any()
    band2 = ds["data"].sel(band="band2").values
    assert np.unique(band2[:50]).size == 1 and band2[0, 0] > 0  # the file's one value, resampled


def test_scenes_at_the_antimeridian_are_refused_with_a_message_that_says_so(tmp_path: Path, capsys) -> None:
    """Tiles either side of 180 degrees made a longitude / latitude grid around the whole globe
    (100 x 360 000 px); a UTM scene across it, ingested in EPSG:4326, failed with "grid bounds ...
    hold no pixel". A tile near 180 on one side still makes a small cube."""
    from pyproj import Transformer

    from flows.cli import main

    field = np.ones((100, 100), np.float32)
    _write(tmp_path / "east.tif", Affine(0.001, 0, 179.9, 0, -0.001, 60.05), field, "EPSG:4326")
    _write(tmp_path / "west.tif", Affine(0.001, 0, -180.0, 0, -0.001, 60.05), field, "EPSG:4326")
    x180, y60 = Transformer.from_crs("EPSG:4326", "EPSG:32660", always_xy=True).transform(180.0, 60.0)
    _write(tmp_path / "utm.tif", Affine(100, 0, x180 - 5000, 0, -100, y60 + 5000), field, "EPSG:32660")
    run = ["--date", "2020-06-01"]
    assert main(["ingest", str(tmp_path / "east.tif"), str(tmp_path / "west.tif"),
                 "--out", str(tmp_path / "a.zarr"), *run]) == 2
    assert "both sides of the antimeridian" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "utm.tif"), "--out", str(tmp_path / "b.zarr"), "--crs", "EPSG:4326", *run]) == 2
    assert "crosses the antimeridian" in capsys.readouterr().err
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    assert main(["ingest", str(tmp_path / "east.tif"), "--out", str(tmp_path / "c.zarr"), *run]) == 0


def test_a_0_to_360_longitude_grid_outside_the_cube_says_why(tmp_path: Path, capsys) -> None:
    """An ERA5-like global grid with longitudes 0..360 missed a box at negative longitudes and was
    skipped as "outside the cube's bounds" alone, though it covers the whole globe."""
    from flows.cli import main

    _write(tmp_path / "era5_like.tif", Affine(1, 0, -0.5, 0, -1, 90.5), np.ones((181, 360), np.float32), "EPSG:4326")
    assert main(["ingest", str(tmp_path / "era5_like.tif"), "--out", str(tmp_path / "e.zarr"), "--date", "2020-06-01",
                 "--bounds", "-95", "40", "-92", "43"]) == 1  # nothing taken
    out = capsys.readouterr()
    assert "a 0..360 grid" in out.out + out.err and "CENTER_LONG" in out.out + out.err


def test_value_resampling_averages_when_shrinking_and_keeps_the_catalogs_choice() -> None:
    from rasterio.enums import Resampling

    from tasks.catalog import BandSpec, SourceSpec
    from tasks.warp import value_resampling

    crs = CRS.from_epsg(32615)
    spec = SourceSpec(glob=["x"], bands=[BandSpec(name="b", index=1)])
    src = Affine(3, 0, 0, 0, -3, 300)

    def choice(spec: SourceSpec, size: float) -> Resampling:
        return value_resampling(spec, src, crs, Affine(size, 0, 0, 0, -size, 300), crs, (10, 10))

    assert choice(spec, 30) == Resampling.average  # 10 x 10 source pixels per cell
    assert choice(spec, 4.5) == Resampling.average
    assert choice(spec, 4) == Resampling.bilinear  # about the source's size: no aliasing to speak of
    assert choice(spec, 1) == Resampling.bilinear  # finer
    assert choice(spec.model_copy(update={"resampling": "cubic"}), 30) == Resampling.cubic
    assert value_resampling(spec, src, CRS.from_epsg(4326), Affine(30, 0, 0, 0, -30, 300), crs,
                            (10, 10)) == Resampling.bilinear  # the source CRS cannot hold the point


def test_a_scene_ingested_onto_a_coarser_grid_takes_its_pixels_area_average(tmp_path: Path) -> None:
    """A 3 m scene of fine texture onto a 30 m grid: each cell is the mean of the 100 pixels it
    covers (bilinear would read the 4 nearest its centre and alias the texture into the cube)."""
    import xarray as xr

    from flows.cli import main

    dn = np.random.default_rng(0).integers(100, 10000, (60, 60)).astype("uint16")
    (tmp_path / "s").mkdir()
    _write(tmp_path / "s" / "scene_20190601.tif", Affine(3, 0, 450000, 0, -3, 4650000), dn, "EPSG:32615",
           nodata=0)
    assert main(["ingest", str(tmp_path / "s"), "--out", str(tmp_path / "c.zarr"), "--resolution", "30"]) == 0
    got = xr.open_zarr(tmp_path / "c.zarr", consolidated=None)["data"].isel(time=0, band=0).values
    want = dn.astype(float).reshape(6, 10, 6, 10).mean(axis=(1, 3))
    assert got.shape == (6, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_cube_made_before_the_average_default_keeps_appending_bilinearly(tmp_path: Path, logged) -> None:
    """QA11 upgrade: a cube on a coarser grid made when values were warped bilinearly got its new
    dates by area average, silently. An ad hoc append keeps bilinear (written in its catalog and
    recorded); a catalog-driven one says how to keep it."""
    import dataclasses

    import yaml

    from flows.cli import main
    from tasks.catalog import load_catalog
    from tasks.checkpoint import read_manifest, write_manifest
    from tasks.ingest import plan_ingest

    dn = np.random.default_rng(0).integers(100, 10000, (60, 60)).astype("uint16")
    (tmp_path / "s").mkdir()
    _write(tmp_path / "s" / "scene_20190601.tif", Affine(3, 0, 450000, 0, -3, 4650000), dn, "EPSG:32615", nodata=0)
    cube = tmp_path / "c.zarr"
    assert main(["ingest", str(tmp_path / "s"), "--out", str(cube), "--resolution", "30"]) == 0
    old = read_manifest(cube)
    older = {k: v for k, v in old.outputs.items() if k != "value_rules"}  # as the release before wrote it
    write_manifest(cube, dataclasses.replace(old, outputs=older, environment={}))
    with logged("tasks.ingest") as messages:
        plan_ingest(load_catalog(cube.with_name("c.zarr.catalog.yaml")), "c")
    assert any("set `resampling: bilinear` on source(s) scenes" in m for m in messages)

    _write(tmp_path / "s" / "scene_20190611.tif", Affine(3, 0, 450000, 0, -3, 4650000), dn, "EPSG:32615", nodata=0)
    assert main(["ingest", str(tmp_path / "s"), "--out", str(cube), "--resolution", "30"]) == 0
    assert yaml.safe_load(cube.with_name("c.zarr.catalog.yaml").read_text())["sources"]["scenes"]["resampling"] == "bilinear"
    assert read_manifest(cube).outputs["value_rules"]["scenes"]["resampling"] == "bilinear"
    import xarray as xr

    data = xr.open_zarr(cube, consolidated=None)["data"].isel(band=0).values
    assert not np.allclose(data[1], dn.astype(float).reshape(6, 10, 6, 10).mean(axis=(1, 3)))  # not averaged
    with logged("tasks.ingest") as messages:
        plan_ingest(load_catalog(cube.with_name("c.zarr.catalog.yaml")), "c")  # recorded now: no warning
    assert not any("resampling" in m for m in messages)


def test_band_files_onto_a_grid_as_coarse_as_their_coarser_bands_are_read_on_those(tmp_path: Path) -> None:
    """QA11 masks: Sentinel-2 onto a 20 m grid was read on its 10 m bands and averaged back: a 20 m
    band came out smoothed, and one cloudy 20 m SCL pixel cost its 8 neighbours too."""
    import xarray as xr

    from flows.cli import main

    stem = tmp_path / "s2" / "T33UUP_20200601T100031"
    stem.parent.mkdir()
    b04 = np.random.default_rng(1).integers(500, 3000, (40, 40)).astype("uint16")
    b05 = (1000 + 10 * np.arange(400)).astype("uint16").reshape(20, 20)
    scl = np.full((20, 20), 4, "uint8")
    scl[5, 5] = 9
    coarse = Affine(20, 0, 500000, 0, -20, 5000400)
    _write(Path(f"{stem}_B04_10m.tif"), Affine(10, 0, 500000, 0, -10, 5000400), b04, "EPSG:32633", nodata=0)
    _write(Path(f"{stem}_B05_20m.tif"), coarse, b05, "EPSG:32633", nodata=0)
    _write(Path(f"{stem}_SCL_20m.tif"), coarse, scl, "EPSG:32633")
    assert main(["ingest", str(stem.parent), "--out", str(tmp_path / "c.zarr"), "--resolution", "20"]) == 0
    ds = xr.open_zarr(tmp_path / "c.zarr", consolidated=None).isel(time=0)
    assert (~ds["valid"].values).sum() == 1 and not ds["valid"].values[5, 5]
    np.testing.assert_array_equal(ds["data"].sel(band="B05").values, b05)
    np.testing.assert_allclose(ds["data"].sel(band="B04").values, b04.reshape(20, 2, 20, 2).mean(axis=(1, 3)),
                               atol=0.5)  # averaged in the file's integer digital numbers
