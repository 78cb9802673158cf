"""The built-in sample area: deterministic, real GeoTIFFs, truth beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from tasks.sample_area import CLASSES, NLCD_COLORMAP, SIZES, SampleArea, generate_sample_area


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> SampleArea:
    return generate_sample_area(tmp_path_factory.mktemp("a") / "sample", size="small", seed=0)


def _arrays(area: SampleArea) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted([*area.planet_dir.glob("*.tif"), *area.modis_dir.glob("*.tif"), area.nlcd_path]):
        with rasterio.open(path) as src:
            out[path.name] = src.read()
    return out


def test_deterministic_under_seed(area: SampleArea, tmp_path: Path) -> None:
    again = generate_sample_area(tmp_path / "again", size="small", seed=0)
    other = generate_sample_area(tmp_path / "other", size="small", seed=1)
    a, b = _arrays(area), _arrays(again)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    sr = sorted(area.planet_dir.glob("*_SR.tif"))[0]
    assert sr.read_bytes() == (again.planet_dir / sr.name).read_bytes()
    with xr.open_zarr(area.truth_dir / "planet_truth.zarr", consolidated=False) as t1, \
            xr.open_zarr(again.truth_dir / "planet_truth.zarr", consolidated=False) as t2:
        xr.testing.assert_identical(t1.load(), t2.load())
    c = _arrays(other)
    nlcd = area.nlcd_path.name
    assert not np.array_equal(a[nlcd], c[nlcd])
    assert other.planet_dates != area.planet_dates


def test_planet_scenes(area: SampleArea) -> None:
    srs = sorted(area.planet_dir.glob("PSScene_*_3B_AnalyticMS_SR.tif"))
    assert len(srs) >= SIZES["small"].n_dates
    assert len({p.name[8:16] for p in srs}) == len(area.planet_dates)
    for sr in srs:
        udm = sr.with_name(sr.name.replace("_AnalyticMS_SR.tif", "_udm2.tif"))
        with rasterio.open(sr) as src, rasterio.open(udm) as mask:
            assert src.crs.to_epsg() == 32615 and src.res == (3.0, 3.0)
            assert src.count == 4 and src.dtypes[0] == "uint16" and src.nodata == 0
            assert src.descriptions == ("blue", "green", "red", "nir")
            assert src.profile["tiled"] and src.profile["blockxsize"] == 256
            assert (src.transform.c - 450000.0) % 3.0 == 0 and (4650000.0 - src.transform.f) % 3.0 == 0
            assert src.tags()["TIFFTAG_DATETIME"][:4] == "2019"
            assert mask.count == 8 and mask.dtypes[0] == "uint8"
            assert mask.width == src.width and mask.transform == src.transform
            dn, clear = src.read(), mask.read(1)
            assert not clear[dn[0] == 0].any()  # nothing clear outside the footprint
            assert mask.read(7).max() <= 100


def test_udm_marks_most_clouds_but_not_all(area: SampleArea) -> None:
    with xr.open_zarr(area.truth_dir / "planet_truth.zarr", consolidated=False) as truth:
        cloud = truth["cloud"].values
        times = truth["time"].values
    caught = missed = 0
    for t, when in enumerate(times):
        stamp = str(when)[:10].replace("-", "")
        for udm in area.planet_dir.glob(f"PSScene_{stamp}_*_udm2.tif"):
            with rasterio.open(udm) as src:
                col = round((src.transform.c - area.planet_grid.bounds[0]) / 3.0)
                row = round((area.planet_grid.bounds[3] - src.transform.f) / 3.0)
                clear = src.read(1).astype(bool)
                foot = src.read(8) & 1 == 0
            true = cloud[t, row:row + src.height, col:col + src.width] & foot
            caught += int((true & ~clear).sum())
            missed += int((true & clear).sum())
    assert caught + missed > 0, "the small sample should have some cloud"
    assert caught / (caught + missed) > 0.7


def test_modis(area: SampleArea) -> None:
    lst = sorted(area.modis_dir.glob("MOD11A1.A2019*.*.061.LST_Day_1km.tif"))
    assert len(lst) == len(area.modis_dates) == SIZES["small"].modis_days
    with rasterio.open(lst[0]) as src, rasterio.open(
        str(lst[0]).replace("LST_Day_1km", "QC_Day")
    ) as qc:
        assert "+proj=sinu" in src.crs.to_proj4() and src.res[0] == pytest.approx(926.625433055833)
        assert src.dtypes[0] == "uint16" and src.nodata == 0 and qc.dtypes[0] == "uint8"
        value, bits = src.read(1), qc.read(1) & 3
    assert (value[bits >= 2] == 0).all() and (value[bits < 2] > 0).all()
    kelvin = value[value > 0] * 0.02
    assert kelvin.min() > 260 and kelvin.max() < 345
    with xr.open_zarr(area.truth_dir / "modis_truth.zarr", consolidated=False) as truth:
        assert {"lst", "anomaly", "anomaly_k"} <= set(truth.data_vars)
        assert truth["lst"].dims == ("time", "y", "x")
        assert truth["anomaly"].values.any()


def test_nlcd(area: SampleArea) -> None:
    with rasterio.open(area.nlcd_path) as src:
        assert src.crs.to_epsg() == 5070 and src.res == (30.0, 30.0)
        assert src.dtypes[0] == "uint8" and src.nodata == 250
        assert (src.transform.c - 15.0) % 30.0 == 0  # NLCD's own lattice
        codes = src.read(1)
        cmap = src.colormap(1)
        assert src.tags()["CLASS_82"] == "Cultivated Crops"
    assert set(np.unique(codes)) <= set(CLASSES) | {250}
    for code, colour in NLCD_COLORMAP.items():
        assert cmap[code] == colour


def test_planet_truth(area: SampleArea) -> None:
    with xr.open_zarr(area.truth_dir / "planet_truth.zarr", consolidated=False) as truth:
        assert truth["data"].dims == ("time", "band", "y", "x")
        assert truth["data"].dtype == np.float32
        assert truth.sizes["time"] == len(area.planet_dates)
        assert list(truth["band"].values) == ["blue", "green", "red", "nir"]
        assert truth.sizes["y"] == truth.sizes["x"] == SIZES["small"].planet_px
        assert truth["x"].values[0] == area.planet_grid.bounds[0] + 1.5
        assert truth["cloud"].dtype == bool
        assert set(np.unique(truth["landcover"].values)) <= set(CLASSES)
        data = truth["data"].values
    assert np.isfinite(data).all() and data.min() > 0 and data.max() < 1


def test_bad_size_and_reuse(area: SampleArea, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bench.*demo.*small"):
        generate_sample_area(tmp_path, size="huge")
    assert generate_sample_area(area.root, size="small", seed=0) == area  # reused, not rewritten
    with pytest.raises(FileExistsError):
        generate_sample_area(area.root, size="small", seed=5)


def test_the_demo_never_replaces_a_folder_of_the_users_at_its_paths(tmp_path: Path) -> None:
    """QA11: `fusioncube demo --out ~/Documents` deleted a `sample/` folder there (and the cube and
    artifact paths). Now a folder it did not make is refused, and left as it was."""
    from tasks.sample_area_task import discard_cube_task, ensure_sample_area

    mine = tmp_path / "sample" / "thesis" / "chapter1.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my only copy")
    with pytest.raises(FileExistsError, match="not a fusioncube artifact"):
        ensure_sample_area(tmp_path / "sample", size="small")
    notes = tmp_path / "artifacts" / "planet" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine too")
    (tmp_path / "cubes" / "planet.zarr").mkdir(parents=True)
    discard_cube_task.fn(str(tmp_path / "cubes" / "planet.zarr"), str(notes.parent))
    assert mine.read_text() == "my only copy" and notes.read_text() == "mine too"
    assert (tmp_path / "cubes" / "planet.zarr").exists()  # no manifest: not the demo's cube


def test_a_sample_area_of_the_same_bytes_is_kept_when_its_generator_code_changed(tmp_path: Path) -> None:
    """QA11 upgrade: an edit anywhere the generator imports (tasks.cube) changed the sample area's
    key, so the demo made it again (same bytes, new times), dropped its cubes and every product
    in their folders, the user's own too, and rebuilt them. Now the same bytes are kept, times
    and all; only the demo's own products of a sample area that really changed are removed."""
    import dataclasses
    import os

    from tasks.checkpoint import read_manifest, write_manifest
    from tasks.sample_area_task import discard_cube_task, ensure_sample_area

    out = tmp_path / "sample"
    assert not ensure_sample_area(out, size="small")["reused"]
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    old = read_manifest(out)
    write_manifest(out, dataclasses.replace(old, key="made-by-older-code", code_version="0.0.9+old", environment={}))
    again = ensure_sample_area(out, size="small")
    assert again["reused"] and read_manifest(out).key == old.key
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == times

    artifacts = tmp_path / "artifacts" / "planet"
    for name in ("patches.zarr", "filled.zarr", "classes.zarr"):  # the demo's two, and one of the user's
        (artifacts / name).mkdir(parents=True)
        write_manifest(artifacts / name, dataclasses.replace(old, key=name))
    (artifacts / "filled.zarr.quicklook.png").write_bytes(b"png")
    (artifacts / "classes.zarr.tif").write_bytes(b"tif")
    removed = discard_cube_task.fn(str(tmp_path / "cubes" / "planet.zarr"), str(artifacts),
                                   ["patches.zarr", "filled.zarr"])
    assert removed == [str(artifacts / "patches.zarr"), str(artifacts / "filled.zarr")]
    assert sorted(os.listdir(artifacts)) == ["classes.zarr", "classes.zarr.manifest.json", "classes.zarr.tif"]
