"""Ingest: sample-area cubes, incremental appends, bad scenes, real product files."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import yaml

import tasks.cube_store
import tasks.ingest
from tasks.adhoc import adhoc_catalog, adhoc_cube_name, build_adhoc_catalog
from tasks.catalog import Catalog, catalog_from_dict, load_catalog
from tasks.checkpoint import read_manifest
from tasks.errors import CatalogError, CubeSchemaError, SceneError
from tasks.ingest import (
    DateResult,
    _append,
    _ref_from_dict,
    _stacked,
    grid_of_cube,
    ingest_cube,
    plan_ingest,
    plan_parts,
    process_dates,
)
from tasks.sample_area import generate_sample_area
from tasks.warp import read_scene, warp_scene

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    generate_sample_area(root / "sample", size="small", seed=3)
    return root / "sample"


def _catalog(sample: Path, data: Path, **edits):
    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    for dotted, value in edits.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return catalog_from_dict(raw, path=REPO / "data_catalog.yaml",
                             env={"FUSIONCUBE_SAMPLE": str(sample), "FUSIONCUBE_DATA": str(data)})


def _store_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_planet_cube_follows_the_schema(sample: Path, tmp_path: Path) -> None:
    cat = _catalog(sample, tmp_path)
    report = ingest_cube(cat, "planet")
    assert report.created and not report.quarantined
    ds = xr.open_zarr(cat.cube_path("planet"))
    assert ds["data"].dims == ("time", "band", "y", "x") and ds["data"].dtype == np.float32
    assert ds["valid"].dims == ("time", "y", "x") and ds["valid"].dtype == bool
    assert list(ds["band"].values) == ["blue", "green", "red", "nir"]
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    assert (np.diff(ds["time"].values) > np.timedelta64(0)).all()
    assert ds.rio.crs.to_epsg() == 32615
    assert ds.rio.resolution() == (3.0, -3.0)
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate" and ds["y"].attrs["units"] == "metre"
    chunks = cat.cubes["planet"].chunks
    assert ds["data"].data.chunksize == (chunks.time, 4, min(chunks.y, ds.sizes["y"]), min(chunks.x, ds.sizes["x"]))
    assert ds["valid"].data.chunksize[0] == chunks.time
    # reflectance in physical units, NaN only where not observed, clouds mostly marked invalid
    data = ds["data"].values
    valid = ds["valid"].values
    assert np.nanmax(data) <= 1.2 and np.nanmin(data) >= 0
    assert np.isfinite(data).all(axis=1)[valid].all()
    assert 0.2 < valid.mean() < 0.98
    truth = xr.open_zarr(sample / "truth" / "planet_truth.zarr")
    cloud = truth["cloud"].values.astype(bool)
    assert cloud.shape == valid.shape
    assert (valid & cloud).mean() < 0.05 * max(valid.mean(), 1e-9) + 0.02  # few clouds pass as clear
    # NLCD on the Planet grid, with its class domain
    lc = ds["landcover"]
    assert lc.dims == ("y", "x") and lc.dtype == np.uint8
    codes = set(np.unique(lc.values)) - {lc.attrs["nodata"]}
    assert codes <= set(lc.attrs["flag_values"])
    assert len(lc.attrs["flag_meanings"].split()) == 15
    agree = (lc.values == truth["landcover"].values).mean()
    assert agree > 0.5, f"30 m NLCD on the 3 m grid agrees with the 3 m truth on only {agree:.0%}"


def test_rerun_is_a_noop_and_new_scenes_append_only_new_chunks(sample: Path, tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    shutil.copytree(sample, scenes)
    planet = sorted((scenes / "planet").glob("*_AnalyticMS_SR.tif"))
    held = tmp_path / "held"
    held.mkdir()
    dates = sorted({p.name.split("_")[1] for p in planet})
    late = [p for p in planet if p.name.split("_")[1] in dates[-2:]]
    for p in late:
        for f in (p, p.with_name(p.name.replace("_AnalyticMS_SR.tif", "_udm2.tif"))):
            shutil.move(f, held / f.name)
    cat = _catalog(scenes, tmp_path / "data")
    first = ingest_cube(cat, "planet")
    path = cat.cube_path("planet")
    n_first = first.time_steps
    assert n_first == len(dates) - 2
    before = _store_digest(path)
    key = read_manifest(path).key

    again = ingest_cube(cat, "planet")
    assert again.ingested == [] and again.time_steps == n_first
    assert _store_digest(path) == before
    assert read_manifest(path).key == key

    for f in held.iterdir():
        shutil.move(f, scenes / "planet" / f.name)
    more = ingest_cube(cat, "planet")
    assert more.time_steps == n_first + 2 and len(more.dates_added) == 2
    after = _store_digest(path)
    old_chunks = {k: v for k, v in before.items() if k.startswith(("data/c/", "valid/c/", "landcover/"))}
    assert old_chunks and all(after[k] == v for k, v in old_chunks.items()), "old time steps were rewritten"
    assert read_manifest(path).key != key
    ds = xr.open_zarr(path)
    assert ds.sizes["time"] == n_first + 2
    assert ds["time"].attrs["standard_name"] == "time" and ds["time"].attrs["axis"] == "T"  # CF, kept on append


def _write_tif(path: Path, array: np.ndarray, *, crs: str | None = "EPSG:32615", transform=None, nodata=0) -> None:
    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": array.shape[0],
               "dtype": array.dtype.name, "nodata": nodata}
    if crs:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def _planet_from_a_copy(sample: Path, tmp_path: Path, **edits) -> tuple[Path, Catalog, Path]:
    """The sample area copied to ``tmp_path/scenes`` (its files then edited by a test) and its
    Planet cube ingested from there: (the scenes' folder, the catalog, the cube's path)."""
    scenes = tmp_path / "scenes"
    shutil.copytree(sample, scenes)
    cat = _catalog(scenes, tmp_path / "data", **edits)
    ingest_cube(cat, "planet")
    return scenes, cat, cat.cube_path("planet")


def test_bad_scenes_are_quarantined_and_the_cube_is_untouched(sample: Path, tmp_path: Path) -> None:
    scenes, cat, path = _planet_from_a_copy(sample, tmp_path)
    before = _store_digest(path)
    manifest_before = read_manifest(path).outputs["time_steps"]

    good = sorted((scenes / "planet").glob("*_AnalyticMS_SR.tif"))[0]
    with rasterio.open(good) as src:
        arr, transform = src.read(), src.transform
    d = scenes / "planet"
    blob = good.read_bytes()
    (d / "PSScene_20191101_100000_1_3B_AnalyticMS_SR.tif").write_bytes(blob[: len(blob) // 3])  # truncated
    (d / "PSScene_20191102_100000_1_3B_AnalyticMS_SR.tif").write_bytes(b"")  # zero bytes
    _write_tif(d / "PSScene_20191103_100000_1_3B_AnalyticMS_SR.tif", arr, crs=None)  # no CRS
    _write_tif(d / "PSScene_20191104_100000_1_3B_AnalyticMS_SR.tif", arr[:3], transform=transform)  # 3 bands
    _write_tif(d / "PSScene_20191105_100000_1_3B_AnalyticMS_SR.tif", (arr.astype(np.uint16) * 0 + 30000).astype(np.uint16),
               transform=transform)  # reflectance 3.0: out of range
    for name in ("20191101", "20191102", "20191103", "20191104", "20191105"):
        shutil.copy(good.with_name(good.name.replace("_AnalyticMS_SR.tif", "_udm2.tif")),
                    d / f"PSScene_{name}_100000_1_3B_udm2.tif")
    report = ingest_cube(cat, "planet")
    reasons = {q["scene"]: q["reason"] for q in report.quarantined}
    assert set(reasons) == {f"PSScene_201911{i:02d}_100000_1_3B_AnalyticMS_SR.tif" for i in range(1, 6)}
    assert "no CRS" in reasons["PSScene_20191103_100000_1_3B_AnalyticMS_SR.tif"]
    assert "band count 3, expected 4" in reasons["PSScene_20191104_100000_1_3B_AnalyticMS_SR.tif"]
    assert "outside the allowed range" in reasons["PSScene_20191105_100000_1_3B_AnalyticMS_SR.tif"]
    assert "read" in reasons["PSScene_20191102_100000_1_3B_AnalyticMS_SR.tif"].lower()
    assert report.ingested == []
    assert _store_digest(path) == before
    manifest = read_manifest(path)
    assert manifest.outputs["time_steps"] == manifest_before
    assert set(manifest.outputs["quarantine"]) == set(reasons)
    # the next run does not re-read unchanged quarantined files
    again = ingest_cube(cat, "planet")
    assert not again.quarantined and all("quarantined before" in s["reason"] for s in again.skipped)


def test_dates_are_warped_into_one_array_and_a_failed_lead_scene_is_replaced(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = _catalog(sample, tmp_path)
    plan = plan_parts(cat, "planet", concurrency=1)
    specs = {s: cat.source(s) for s in cat.cube("planet").sources}
    groups = [[_ref_from_dict(r) for r in g] for p in plan.parts for g in p["scenes"]][:3]

    def alone(ref):  # the date's scene read and warped on its own, the plain way
        return warp_scene(read_scene(ref, specs[ref.source], plan.grid), specs[ref.source], plan.grid)

    results, bad, _ = process_dates(groups, specs, plan.grid, workers=2)
    assert not bad and len(results) == 3
    block = _stacked([r.data for r in results])
    assert block.shape[0] == 3 and all(np.shares_memory(block, r.data) for r in results)  # not copied
    for group, res in zip(groups, results, strict=True):
        data, valid = alone(group[0])
        np.testing.assert_array_equal(res.data, data)
        np.testing.assert_array_equal(res.valid, valid)

    # a second copy of the first date's scene; the original fails to warp, the copy leads the date
    lead = groups[0][0]
    copy = tmp_path / ("copy_" + Path(lead.path).name)
    shutil.copy(lead.path, copy)
    twin = dataclasses.replace(lead, path=str(copy), datasets=(str(copy),) if lead.datasets else ())
    real_warp = tasks.ingest.warp_scene

    def failing(raw, spec, grid, *, out=None):
        if raw.ref.path == lead.path:
            if out is not None:
                out.fill(7.0)  # a half-written slice must not survive
            raise SceneError(raw.ref.path, "warp failed (test)")
        return real_warp(raw, spec, grid, out=out)

    monkeypatch.setattr(tasks.ingest, "warp_scene", failing)
    results, bad, _ = process_dates([[lead, twin], groups[1]], specs, plan.grid, workers=2)
    assert [b["path"] for b in bad] == [lead.path] and len(results) == 2
    data, valid = alone(lead)
    np.testing.assert_array_equal(results[0].data, data)
    np.testing.assert_array_equal(results[0].valid, valid)
    assert results[0].scenes == [twin]
    assert np.shares_memory(_stacked([r.data for r in results]), results[0].data)


def test_time_steps_beyond_the_manifest_are_cut_on_the_next_run(sample: Path, tmp_path: Path) -> None:
    cat = _catalog(sample, tmp_path)
    ingest_cube(cat, "planet")
    path = cat.cube_path("planet")
    reference = xr.open_zarr(path).load()
    grid = grid_of_cube(path)
    junk = DateResult(datetime(2030, 1, 1), np.ones((4, grid.height, grid.width), np.float32),
                      np.ones((grid.height, grid.width), bool), [])
    _append(path, [junk])  # a run killed before its manifest update
    assert xr.open_zarr(path).sizes["time"] == reference.sizes["time"] + 1
    report = ingest_cube(cat, "planet")
    assert report.time_steps == reference.sizes["time"]
    xr.testing.assert_identical(xr.open_zarr(path).load(), reference)


def test_existing_store_without_manifest_is_refused(sample: Path, tmp_path: Path) -> None:
    cat = _catalog(sample, tmp_path)
    cat.cube_path("planet").mkdir(parents=True)
    with pytest.raises(CubeSchemaError, match="no planet.zarr.manifest.json"):
        ingest_cube(cat, "planet")


def test_a_manifest_left_behind_by_a_deleted_cube_is_set_aside_and_the_cube_rebuilt(tmp_path: Path) -> None:
    """A user removes the cube (``rm -r c.zarr``) but not its ``.manifest.json``: the next ingest
    must not take the manifest's scenes as ingested (they are in no cube) nor fail on the missing
    store. The manifest is kept aside, renamed, and the cube is built again from every scene."""
    from rasterio.transform import from_origin

    for day in ("2020-01-01", "2020-02-01"):
        _write_tif(tmp_path / f"s_{day}.tif", np.full((2, 8, 8), 3, np.uint16), crs="EPSG:32633",
                   transform=from_origin(0, 80, 10, 10))
    out = tmp_path / "c.zarr"
    assert ingest_cube(load_catalog(adhoc_catalog([str(tmp_path / "s_*.tif")], out)), "c").time_steps == 2
    shutil.rmtree(out)
    report = ingest_cube(load_catalog(adhoc_catalog([str(tmp_path / "s_*.tif")], out)), "c")
    assert report.time_steps == 2 and len(report.ingested) == 2
    assert xr.open_zarr(out).sizes["time"] == 2 and read_manifest(out).outputs["time_steps"] == 2
    (aside,) = tmp_path.glob("c.zarr.manifest.json.orphaned-*")
    assert yaml.safe_load(aside.read_text())["outputs"]["time_steps"] == 2


def test_a_catalog_whose_bands_changed_is_refused_before_appending(sample: Path, tmp_path: Path) -> None:
    """A catalog edited to give other bands than the cube holds must not append dates under the
    cube's old band names."""
    first = _catalog(sample, tmp_path, cubes__planet__time_range=["2019-01-01", "2019-06-30"])
    ingest_cube(first, "planet")
    digest = _store_digest(first.cube_path("planet"))
    bands = yaml.safe_load((REPO / "data_catalog.yaml").read_text())["sources"]["planet"]["bands"][:3]
    edited = _catalog(sample, tmp_path, sources__planet__bands=bands)
    with pytest.raises(CubeSchemaError, match=r"holds bands \['blue', 'green', 'red', 'nir'\]; these scenes give"):
        ingest_cube(edited, "planet")
    assert _store_digest(first.cube_path("planet")) == digest


def test_a_catalog_whose_value_rules_changed_is_refused_before_adding_dates(sample: Path, tmp_path: Path) -> None:
    """A band's scale or the mask rule edited in the catalog after the cube was built: the next run
    used to say "nothing new", then read later dates in the new units beside the old ones. Now it
    names what changed and adds nothing; an edit that does not touch the values passes."""
    first = _catalog(sample, tmp_path, cubes__planet__time_range=["2019-01-01", "2019-06-30"])
    ingest_cube(first, "planet")
    path = first.cube_path("planet")
    assert read_manifest(path).outputs["globs"]["planet"] == [f"{sample}/planet/*_AnalyticMS_SR.tif"]  # variables filled in
    digest = _store_digest(path)
    bands = yaml.safe_load((REPO / "data_catalog.yaml").read_text())["sources"]["planet"]["bands"]
    bands[0]["scale"] = 0.00011
    for edit, change in ((dict(sources__planet__bands=bands), "planet.bands.blue.scale 0.0001 -> 0.00011"),
                         (dict(sources__planet__mask__clear_values=[1, 2]), "planet.mask.clear_values [1] -> [1, 2]")):
        edited = _catalog(sample, tmp_path, **edit)
        with pytest.raises(CatalogError, match="cube planet: the catalog's rules for its values changed .*"
                                               + re.escape(change)):
            ingest_cube(edited, "planet")
        with pytest.raises(CatalogError, match="move the cube away"):
            plan_ingest(edited, "planet")  # what `fusioncube run`'s no-op check asks first
        assert _store_digest(path) == digest
    plan_ingest(_catalog(sample, tmp_path, sources__planet__resampling="cubic"), "planet")  # warned, not refused
    report = ingest_cube(_catalog(sample, tmp_path, sources__planet__max_nodata_share=0.999), "planet")
    assert report.dates_added  # not a value rule: the rest of the year is added


def test_malformed_catalog_stops_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "cat.yaml"
    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["cubes"]["planet"]["chunks"]["time"] = 0
    raw["storage"] = {"root": str(tmp_path / "data")}
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match=r"(?s)cat.yaml.*cubes\.planet\.chunks\.time"):
        load_catalog(bad)
    assert not (tmp_path / "data").exists()


def test_modis_lst_cube_in_kelvin_with_qc_mask(sample: Path, tmp_path: Path) -> None:
    cat = _catalog(sample, tmp_path)
    report = ingest_cube(cat, "modis_lst")
    ds = xr.open_zarr(cat.cube_path("modis_lst"))
    assert report.time_steps == ds.sizes["time"] == 16
    lst = ds["data"].sel(band="lst").values
    valid = ds["valid"].values
    assert 230 < np.nanmedian(lst[valid]) < 330  # kelvin, scale 0.02 applied
    assert 0.3 < valid.mean() < 0.99  # cloud gaps from the QC bits
    assert "Sinusoidal" in ds.rio.crs.to_wkt() or "sinu" in ds.rio.crs.to_proj4()
    assert ds["data"].data.chunksize[0] == 8
    # `fusioncube ingest` of the MODIS folder alone finds the same: its QC files are LST's mask
    adhoc = tmp_path / "adhoc.zarr"
    ingest_cube(load_catalog(adhoc_catalog([str(sample / "modis")], adhoc)), "adhoc")
    other = xr.open_zarr(adhoc)
    assert list(other["band"].values) == ["LST_Day_1km"]
    np.testing.assert_array_equal(other["valid"].values, valid)
    np.testing.assert_array_equal(other["data"].values[:, 0], ds["data"].values[:, 0])


# -- real product files -------------------------------------------------------------------------
def test_real_modis_ndvi_jp2_series(real_fixtures: Path, tmp_path: Path) -> None:
    files = sorted((real_fixtures / "modis_ndvi_sinop").glob("*.jp2"))
    catalog_path = adhoc_catalog([str(real_fixtures / "modis_ndvi_sinop" / "*.jp2")], tmp_path / "ndvi.zarr")
    report = ingest_cube(load_catalog(catalog_path), "ndvi")
    assert report.time_steps == 12 and not report.quarantined
    ds = xr.open_zarr(tmp_path / "ndvi.zarr")
    expected = [np.datetime64(f.stem.rsplit("_", 1)[-1]) for f in files]
    assert list(ds["time"].values.astype("datetime64[D]")) == expected
    with rasterio.open(files[0]) as src:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform().almost_equals(src.transform)
        assert (ds.sizes["y"], ds.sizes["x"]) == src.shape
        raw = src.read(1)
    # the files declare no units: a MODIS vegetation index by its name, scaled by MOD13's 1e-4
    assert list(ds["band"].values) == ["NDVI"]
    ok = (raw >= -2000) & (raw <= 10000)
    np.testing.assert_array_equal(ds["valid"].values[0], ok)
    np.testing.assert_allclose(ds["data"].isel(time=0, band=0).values[ok], raw[ok] * np.float32(1e-4), rtol=1e-6)


def test_an_unreadable_catalog_beside_the_cube_is_named_and_kept(real_fixtures: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ndvi.zarr.catalog.yaml"
    broken.write_text("cubes: {cube: [unclosed\n")
    with pytest.raises(CatalogError, match=r"ndvi\.zarr\.catalog\.yaml: the catalog beside the cube cannot be read"):
        build_adhoc_catalog([str(real_fixtures / "modis_ndvi_sinop" / "*.jp2")], tmp_path / "ndvi.zarr")
    assert broken.read_text() == "cubes: {cube: [unclosed\n"


def test_adhoc_cubes_are_named_after_their_store_and_keep_an_older_catalog_s_stages(real_fixtures: Path,
                                                                                     tmp_path: Path) -> None:
    assert [adhoc_cube_name(p) for p in ("a/ndvi.zarr", "S2 field.zarr", "x", "...zarr")] == ["ndvi", "S2-field", "x", "cube"]
    # a catalog written before cubes were named after their store: its one cube was "cube"
    (tmp_path / "ndvi.zarr.catalog.yaml").write_text(yaml.safe_dump(
        {"cubes": {"cube": {"stages": ["gapfill"], "params": {"gapfill": {"epochs": 3}}}}, "stages": {"gapfill": {"layers": 5}}}))
    raw, _ = build_adhoc_catalog([str(real_fixtures / "modis_ndvi_sinop" / "*.jp2")], tmp_path / "ndvi.zarr")
    assert list(raw["cubes"]) == ["ndvi"]
    assert (raw["cubes"]["ndvi"]["stages"], raw["cubes"]["ndvi"]["params"]) == (["gapfill"], {"gapfill": {"epochs": 3}})
    assert raw["stages"] == {"gapfill": {"layers": 5}}


def test_the_pipeline_s_settings_do_not_key_the_ingest(real_fixtures: Path, tmp_path: Path) -> None:
    """Listing a stage or changing its parameters in the catalog must not make a running backfill
    redo its finished parts, nor change the cube's key."""
    raw, path = build_adhoc_catalog([str(real_fixtures / "modis_ndvi_sinop" / "*.jp2")], tmp_path / "ndvi.zarr")
    before = plan_parts(catalog_from_dict(raw, path=path), "ndvi")
    raw["cubes"]["ndvi"].update(stages=["gapfill"], params={"gapfill": {"epochs": 2}}, schedule="0 6 * * *",
                                patch={"size": 16})
    after = plan_parts(catalog_from_dict(raw, path=path), "ndvi")
    assert [p["id"] for p in after.parts] == [p["id"] for p in before.parts] and before.parts
    raw["cubes"]["ndvi"]["chunks"]["y"] = 64  # how the cube is built: another plan
    assert plan_parts(catalog_from_dict(raw, path=path), "ndvi").parts[0]["id"] != before.parts[0]["id"]


def test_real_modis_ndvi_with_scale_nodata_and_valid_range(real_fixtures: Path, tmp_path: Path, capsys) -> None:
    """The JPEG 2000 series declares neither its 1e-4 scale nor its fill: given on the command
    line, the cube holds NDVI, with the fill (-3000) and out-of-range values (MOD13Q1's valid range
    is -2000 .. 10000 in raw units) not observed. Appending with other rules is refused."""
    files = [real_fixtures / "modis_ndvi_sinop" / f"TERRA_MODIS_012010_NDVI_{d}.jp2"
             for d in ("2013-11-17", "2014-03-22")]  # the dates with the most fill and > 1 values
    globs = [str(f) for f in files]
    units = {"scale": 1e-4, "nodata": -3000.0, "valid_range": (-0.2, 1.0)}
    cube = tmp_path / "ndvi.zarr"
    ingest_cube(load_catalog(adhoc_catalog(globs, cube, units=units)), "ndvi")
    ds = xr.open_zarr(cube)
    for t, f in enumerate(files):
        with rasterio.open(f) as src:
            raw = src.read(1)
        ok = (raw >= -2000) & (raw <= 10000)
        assert (~ok).sum() > 100  # what the rules are about
        np.testing.assert_array_equal(ds["valid"].values[t], ok)
        np.testing.assert_allclose(ds["data"].values[t, 0][ok], raw[ok] * np.float32(1e-4), rtol=1e-6)
        assert np.isnan(ds["data"].values[t, 0][~ok]).all()
    with pytest.raises(ValueError, match=r"ndvi.zarr was ingested under other rules than these options give "
                                         r"\(scenes.bands.NDVI.scale 0.0001 -> 0.001\)"):
        adhoc_catalog(globs, cube, units={**units, "scale": 1e-3})
    with pytest.raises(ValueError, match="valid_min -0.2 -> 0"):
        adhoc_catalog(globs, cube, units={"scale": 1e-4, "nodata": -3000.0, "valid_range": (0.0, 1.0)})
    adhoc_catalog(globs, cube, units={"scale": 1e-4})  # the rest as MOD13's user guide has it, as before
    adhoc_catalog(globs, cube, units=units)  # the same rules: a re-run
    with pytest.raises(ValueError, match="MIN <= MAX"):
        adhoc_catalog(globs, tmp_path / "other.zarr", units={"valid_range": (1.0, 0.0)})
    from flows.cli import main

    assert main(["ingest", *globs, "--out", str(tmp_path / "dry.zarr"), "--scale", "0.0001", "--nodata", "-3000",
                 "--valid-range", "-0.2", "1", "--dry-run"]) == 0
    assert "band NDVI: band 1, scale 0.0001, nodata -3000, valid min -0.2, valid max 1" in capsys.readouterr().out


def test_a_declared_cf_valid_range_masks_values_outside(tmp_path: Path) -> None:
    """A band's CF ``valid_range`` (packed units; GDAL shows a NetCDF variable's attributes as band
    metadata) is applied like ``--valid-range``; a fractional range on integer data is physical."""
    from rasterio.transform import from_origin

    raw = np.array([[100, -2500, 11000, 5000]] * 4, np.int16)
    tags = {"valid_range": "{-2000,10000}", "scale_factor": "0.0001"}  # MOD13Q1 NDVI's
    for day in ("2020-01-01", "2020-01-02"):
        with rasterio.open(tmp_path / f"ndvi_{day}.tif", "w", driver="GTiff", width=4, height=4, count=1,
                           dtype="int16", crs="EPSG:32633", transform=from_origin(0, 40, 10, 10)) as dst:
            dst.write(raw, 1)
            dst.update_tags(1, **tags)
    raw_catalog, _ = build_adhoc_catalog([str(tmp_path / "ndvi_*.tif")], tmp_path / "c.zarr")
    band = raw_catalog["sources"]["scenes"]["bands"][0]
    assert band["scale"] == 1e-4 and band["valid_min"] == pytest.approx(-0.2) and band["valid_max"] == pytest.approx(1.0)
    ingest_cube(load_catalog(adhoc_catalog([str(tmp_path / "ndvi_*.tif")], tmp_path / "c.zarr")), "c")
    ds = xr.open_zarr(tmp_path / "c.zarr")
    np.testing.assert_array_equal(ds["valid"].values[0], (raw >= -2000) & (raw <= 10000))
    with rasterio.open(tmp_path / "ndvi_2020-01-02.tif", "r+") as dst:
        dst.update_tags(1, valid_range="{-0.2,1.0}")  # physical, against CF: read as such
    with rasterio.open(tmp_path / "ndvi_2020-01-02.tif") as src:
        from tasks.adhoc import _band_entry

        entry = _band_entry("ndvi", 1, src)
    assert entry["valid_min"] == pytest.approx(-0.2) and entry["valid_max"] == pytest.approx(1.0)


def test_real_planetscope_netcdf(real_fixtures: Path, tmp_path: Path) -> None:
    nc = real_fixtures / "planetscope_rioxarray" / "PLANET_SCOPE_3D.nc"
    report = ingest_cube(load_catalog(adhoc_catalog([str(nc)], tmp_path / "ps.zarr")), "ps")
    ds = xr.open_zarr(tmp_path / "ps.zarr")
    assert report.time_steps == 2 and list(ds["band"].values) == ["blue", "green"]
    assert ds.rio.crs.to_epsg() == 32722
    assert ds.rio.resolution() == (3.0, -3.0)
    assert ds["time"].values[0].astype("datetime64[D]") == np.datetime64("2016-12-19")
    assert ds["time"].values[1] > ds["time"].values[0]
    assert np.isfinite(ds["data"].values).any()


def test_real_albers_cog(real_fixtures: Path, tmp_path: Path) -> None:
    cog = tmp_path / "cog_2019-07-01.tif"  # the COG has no date: give it one in the name
    shutil.copy(real_fixtures / "albers_cog_rioxarray" / "cog.tif", cog)
    report = ingest_cube(load_catalog(adhoc_catalog([str(cog)], tmp_path / "albers.zarr")), "albers")
    ds = xr.open_zarr(tmp_path / "albers.zarr")
    assert report.time_steps == 1
    assert "Albers" in ds.rio.crs.to_wkt()
    with rasterio.open(cog) as src:
        raw = src.read(1)
    np.testing.assert_array_equal(ds["valid"].values[0], raw != -9999)
    assert np.isnan(ds["data"].values[0, 0][raw == -9999]).all()


def test_adhoc_ingest_onto_another_grid(real_fixtures: Path, tmp_path: Path) -> None:
    path = adhoc_catalog([str(real_fixtures / "modis_ndvi_sinop" / "*2013-09-14.jp2")], tmp_path / "utm.zarr",
                         crs="EPSG:32721", resolution=500.0)
    ingest_cube(load_catalog(path), "utm")
    ds = xr.open_zarr(tmp_path / "utm.zarr")
    assert ds.rio.crs.to_epsg() == 32721 and ds.rio.resolution() == (500.0, -500.0)
    assert ds["valid"].values.mean() > 0.3


def test_adhoc_quarantines_a_file_with_another_band_count(tmp_path: Path) -> None:
    """The files of one ad-hoc cube share the first file's bands: a 3-band file among 2-band ones
    is quarantined with the reason, not read as its first two bands (Planet 4- and 8-band
    products differ in what band 2 is)."""
    from rasterio.transform import from_origin

    for day, count in (("2020-01-01", 2), ("2020-02-01", 3), ("2020-03-01", 2)):
        with rasterio.open(tmp_path / f"s_{day}.tif", "w", driver="GTiff", width=8, height=8, count=count,
                           dtype="float32", crs="EPSG:32633", transform=from_origin(0, 80, 10, 10)) as dst:
            dst.write(np.ones((count, 8, 8), np.float32))
    report = ingest_cube(load_catalog(adhoc_catalog([str(tmp_path / "s_*.tif")], tmp_path / "c.zarr")), "c")
    assert report.time_steps == 2
    (bad,) = report.quarantined
    assert "s_2020-02-01.tif" in str(bad) and "band count 3, expected 2" in str(bad)


def test_a_late_tile_of_a_date_in_the_cube_is_mosaicked_into_that_date(sample: Path, tmp_path: Path) -> None:
    # the sample's 2019-08-13 is two tiles; one arrives after its date is in the cube
    tiles = sorted((sample / "planet").glob("PSScene_20190813_*_AnalyticMS_SR.tif"))
    assert len(tiles) == 2
    whole = _catalog(sample, tmp_path / "whole")
    ingest_cube(whole, "planet")
    scenes = tmp_path / "scenes"
    shutil.copytree(sample, scenes)
    held = tmp_path / "held"
    held.mkdir()
    late = [scenes / "planet" / tiles[1].name, scenes / "planet" / tiles[1].name.replace("_AnalyticMS_SR", "_udm2")]
    for f in late:
        shutil.move(f, held / f.name)
    cat = _catalog(scenes, tmp_path / "data")
    first = ingest_cube(cat, "planet")
    path = cat.cube_path("planet")
    steps = first.time_steps
    day = list(read_manifest(path).outputs["dates"]).index("2019-08-13")
    before = xr.open_zarr(path)["valid"].values[day].copy()

    for f in held.iterdir():
        shutil.move(f, scenes / "planet" / f.name)
    more = ingest_cube(cat, "planet")
    assert [r["scene"] for r in more.ingested] == [tiles[1].name] and not more.skipped
    assert more.dates_updated == ["2019-08-13"] and more.dates_added == [] and more.time_steps == steps
    assert read_manifest(path).outputs["scenes"][tiles[1].name]["time_index"] == day
    got, want = xr.open_zarr(path).load(), xr.open_zarr(whole.cube_path("planet")).load()
    assert got["valid"].values[day].sum() > before.sum()  # the late tile covered pixels the first did not
    # the same cube as when both tiles came together (same mosaic order: the earlier tile first)
    np.testing.assert_array_equal(got["valid"].values, want["valid"].values)
    np.testing.assert_array_equal(got["data"].values, want["data"].values)

    # a run killed after the slice was written, before the manifest: the merge is done again, same bytes
    digest = _store_digest(path)
    manifest = read_manifest(path)
    scenes_without = {k: v for k, v in manifest.outputs["scenes"].items() if k != tiles[1].name}
    tasks.ingest.write_manifest(path, dataclasses.replace(manifest, outputs={**manifest.outputs, "scenes": scenes_without}))
    again = ingest_cube(cat, "planet")
    assert again.dates_updated == ["2019-08-13"] and again.time_steps == steps
    assert _store_digest(path) == digest
    assert ingest_cube(cat, "planet").ingested == []  # and then nothing is new


def _hold_out(scenes: Path, days: set[str], held: Path) -> None:
    held.mkdir()
    for f in sorted((scenes / "planet").iterdir()):
        if f.name.split("_")[1] in days:
            shutil.move(f, held / f.name)


def _same_cube(got: Path, want: Path) -> None:
    a, b = xr.open_zarr(got).load(), xr.open_zarr(want).load()
    for v in ("time", "data", "valid", "landcover"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    ma, mb = read_manifest(got).outputs, read_manifest(want).outputs
    assert ma["dates"] == mb["dates"]
    assert {k: r["time_index"] for k, r in ma["scenes"].items()} == {k: r["time_index"] for k, r in mb["scenes"].items()}
    leftovers = [p.name for p in got.parent.iterdir() if p.name.startswith(got.name) and
                 p.name.endswith((tasks.cube_store.SORTING, tasks.cube_store.UNSORTED, ".sorting.manifest.json"))]
    assert not leftovers


@pytest.mark.parametrize("time_chunk", [1, 3])  # 3: a rewritten chunk gathers dates from two source chunks
def test_a_backfill_of_older_dates_leaves_the_time_axis_in_order(
    sample: Path, tmp_path: Path, time_chunk: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one step per time chunk the rewrite links the steps' chunk folders in their new order
    (nothing decoded); with more, it reads and writes one time chunk at a time. Both give the cube
    of an ingest in date order."""
    linked: list[str] = []
    link = tasks.cube_store.link_time_steps
    monkeypatch.setattr(tasks.cube_store, "link_time_steps", lambda src, *a: linked.append(src.parent.name) or link(src, *a))
    whole = _catalog(sample, tmp_path / "whole", cubes__planet__chunks__time=time_chunk)
    ingest_cube(whole, "planet")
    scenes = tmp_path / "scenes"
    shutil.copytree(sample, scenes)
    days = sorted({p.name.split("_")[1] for p in (scenes / "planet").glob("*_SR.tif")})
    _hold_out(scenes, set(days[:2]), tmp_path / "held")
    cat = _catalog(scenes, tmp_path / "data", cubes__planet__chunks__time=time_chunk)
    assert not ingest_cube(cat, "planet").reordered
    for f in (tmp_path / "held").iterdir():
        shutil.move(f, scenes / "planet" / f.name)
    report = ingest_cube(cat, "planet", dates_per_part=1)
    assert report.reordered and len(report.dates_added) == 2
    assert linked == (["data", "valid"] if time_chunk == 1 else [])
    path = cat.cube_path("planet")
    _same_cube(path, whole.cube_path("planet"))
    assert xr.open_zarr(path)["time"].attrs["axis"] == "T"  # the rewrite keeps the coordinates' attributes
    first = f"{days[0][:4]}-{days[0][4:6]}-{days[0][6:]}"
    assert xr.open_zarr(path).sel(time=slice(first, first)).sizes["time"] == 1  # a sorted index
    assert not ingest_cube(cat, "planet").reordered  # sorted now: not rewritten again


@pytest.mark.parametrize("fail_at", ["copy", "swap-1", "swap-2", "swap-3", "delete"])
def test_a_date_order_rewrite_cut_short_anywhere_is_completed_by_the_next_run(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str,
) -> None:
    whole = _catalog(sample, tmp_path / "whole")
    ingest_cube(whole, "planet")
    scenes = tmp_path / "scenes"
    shutil.copytree(sample, scenes)
    days = sorted({p.name.split("_")[1] for p in (scenes / "planet").glob("*_SR.tif")})
    _hold_out(scenes, {days[0]}, tmp_path / "held")
    cat = _catalog(scenes, tmp_path / "data")
    ingest_cube(cat, "planet")
    for f in (tmp_path / "held").iterdir():
        shutil.move(f, scenes / "planet" / f.name)
    path = cat.cube_path("planet")
    tmp, old = path.with_name(path.name + tasks.cube_store.SORTING), path.with_name(path.name + tasks.cube_store.UNSORTED)
    swaps = [str(path), str(tmp), str(tasks.ingest.manifest_path(tmp))]  # the sources of the swap's renames

    class Cut(Exception):
        pass

    real_replace, real_rmtree, real_consolidate = os.replace, shutil.rmtree, tasks.ingest.zarr.consolidate_metadata

    def replace(src, dst, *a, **k):
        if fail_at.startswith("swap") and str(src) == swaps[int(fail_at[-1]) - 1]:
            raise Cut(fail_at)
        return real_replace(src, dst, *a, **k)

    def rmtree(p, *a, **k):
        if fail_at == "delete" and str(p) == str(old):
            raise Cut(fail_at)
        return real_rmtree(p, *a, **k)

    def consolidate(store, *a, **k):
        if fail_at == "copy" and str(store) == str(tmp):
            raise Cut(fail_at)
        return real_consolidate(store, *a, **k)

    monkeypatch.setattr(tasks.ingest.os, "replace", replace)
    monkeypatch.setattr(tasks.ingest.shutil, "rmtree", rmtree)
    monkeypatch.setattr(tasks.ingest.zarr, "consolidate_metadata", consolidate)
    with pytest.raises(Cut):
        ingest_cube(cat, "planet")
    monkeypatch.undo()
    again = ingest_cube(cat, "planet")
    assert again.ingested == []
    _same_cube(path, whole.cube_path("planet"))


def test_a_scene_touched_or_rewritten_after_ingest_is_skipped_saying_which(tmp_path: Path, capsys) -> None:
    """Files copied again without their times (plain `cp`) were all reported as "changed on disk",
    as if the archive had changed: the reason now says whether only the time changed."""
    from rasterio.transform import from_origin

    from flows.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for d in ("20230601", "20230611"):
        with rasterio.open(src / f"S_{d}.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16",
                           crs="EPSG:32633", transform=from_origin(600_000, 5_000_000, 30, 30)) as ds:
            ds.write(np.full((1, 8, 8), 7, np.uint16))
    out = tmp_path / "c.zarr"
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    first = src / "S_20230601.tif"
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # same bytes, later time
    with open(src / "S_20230611.tif", "ab") as fh:  # another size
        fh.write(b"\0" * 16)
    capsys.readouterr()
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "skipped S_20230601.tif: its modification time changed since it was ingested, not its size" in text
    assert "skipped S_20230611.tif: changed on disk since it was ingested (another size)" in text


def test_changed_scenes_replace_rebuilds_their_date_from_the_files_as_they_are_now(
    tmp_path: Path, capsys, prefect_harness,
) -> None:
    """A re-processed delivery (the same file name, new values) was never taken: the cube kept the
    old values and each run said "rebuild the cube". With `--changed-scenes replace` (the cube's
    `changed_scenes: replace`) its date's slice is written again from the new file."""
    from rasterio.transform import from_origin

    from flows.cli import main

    src = tmp_path / "src"
    src.mkdir()

    def write(day: str, value: int) -> None:
        (src / f"S_{day}.tif").unlink(missing_ok=True)
        with rasterio.open(src / f"S_{day}.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16",
                           crs="EPSG:32633", transform=from_origin(600_000, 5_000_000, 30, 30), nodata=0) as ds:
            ds.write(np.full((1, 8, 8), value, np.uint16))

    for day in ("20230601", "20230611", "20230621"):
        write(day, 7)
    out = tmp_path / "c.zarr"
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    write("20230611", 9)  # re-processed: new values, the same size
    capsys.readouterr()
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    assert "set `changed_scenes: replace` on cube" in capsys.readouterr().out
    assert (xr.open_zarr(out)["data"].values == 7).all()  # kept, as the default says

    assert main(["ingest", str(src), "--out", str(out), "--changed-scenes", "replace"]) == 0
    assert "1 rebuilt from changed scenes" in capsys.readouterr().out
    data = xr.open_zarr(out)["data"].values
    assert (data[1] == 9).all() and (data[[0, 2]] == 7).all() and data.shape[0] == 3
    assert "changed_scenes: replace" in out.with_name("c.zarr.catalog.yaml").read_text()  # kept for later runs

    # a truncated re-delivery (a copy still running) is quarantined and the slice keeps its values;
    # once the file is whole again, the date is rebuilt
    good = (src / "S_20230611.tif").read_bytes()
    (src / "S_20230611.tif").write_bytes(good[: len(good) // 3])
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "quarantined S_20230611.tif" in text and "rebuilt" not in text
    assert (xr.open_zarr(out)["data"].values[1] == 9).all()
    write("20230611", 11)
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    assert "1 rebuilt from changed scenes" in capsys.readouterr().out
    assert (xr.open_zarr(out)["data"].values[1] == 11).all()
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    assert "0 scenes ingested" in capsys.readouterr().out  # and then nothing is new


def test_a_replaced_date_is_the_mosaic_of_all_its_scenes_as_if_they_came_together(sample: Path, tmp_path: Path) -> None:
    """A date of two tiles, one re-delivered: the slice is rebuilt from both tiles (the unchanged
    one opened again), equal to a cube built from the current files in one go. A run killed after
    the slice was written, before the manifest, writes the same bytes again."""
    scenes, cat, path = _planet_from_a_copy(sample, tmp_path, cubes__planet__changed_scenes="replace")
    tiles = sorted((scenes / "planet").glob("PSScene_20190813_*_AnalyticMS_SR.tif"))
    with rasterio.open(tiles[1], "r+") as ds:  # re-processed in place: darker values
        ds.write((ds.read().astype(np.int64) * 9 // 10).astype(ds.dtypes[0]))
    whole = _catalog(scenes, tmp_path / "whole")
    ingest_cube(whole, "planet")

    again = ingest_cube(cat, "planet")
    assert again.dates_replaced == ["2019-08-13"] and not again.dates_added and not again.skipped
    assert sorted(r["scene"] for r in again.ingested) == sorted(t.name for t in tiles)
    _same_cube(path, whole.cube_path("planet"))
    assert read_manifest(path).key == read_manifest(whole.cube_path("planet")).key

    digest = _store_digest(path)
    manifest = read_manifest(path)
    old = {**manifest.outputs["scenes"], tiles[1].name: {**manifest.outputs["scenes"][tiles[1].name], "stamp": {}}}
    tasks.ingest.write_manifest(path, dataclasses.replace(manifest, outputs={**manifest.outputs, "scenes": old}))
    assert ingest_cube(cat, "planet").dates_replaced == ["2019-08-13"]
    assert _store_digest(path) == digest
    assert ingest_cube(cat, "planet").ingested == []

    # one tile of the date gone, the other changed again: the slice keeps what it has, saying why
    tiles[0].unlink()
    with rasterio.open(tiles[1], "r+") as ds:
        ds.write((ds.read().astype(np.int64) * 9 // 10).astype(ds.dtypes[0]))
    kept = ingest_cube(cat, "planet")
    assert not kept.dates_replaced and [s["scene"] for s in kept.skipped] == [tiles[1].name]
    assert f"{tiles[0].name}, ingested into this date, is gone from the sources" in kept.skipped[0]["reason"]
    assert _store_digest(path) == digest


def test_a_re_delivered_mask_file_is_a_changed_scene(sample: Path, tmp_path: Path) -> None:
    """A scene's UDM2 re-delivered with other flags (the scene file itself unchanged) was never
    noticed. Now it is a changed scene: named and kept by default, its date rebuilt with
    `changed_scenes: replace`. A folder moved with its masks is not a change."""
    from flows.pipeline import pipeline_up_to_date
    from tasks.patch import fit_patch_size, make_patches

    scenes, cat, path = _planet_from_a_copy(sample, tmp_path)
    p = cat.patch_params("planet")
    size, stride = fit_patch_size(path, p.size, p.stride)
    make_patches(path, cat.stage_dir("planet") / "patches.zarr", size=size, stride=stride, block=p.block,
                 fractions=p.fractions, seed=p.seed)
    assert pipeline_up_to_date(cat, "planet", stages=[]) is not None  # `fusioncube run`: nothing to do
    digest = _store_digest(path)
    udm = sorted((scenes / "planet").glob("*_udm2.tif"))[2]
    scene = udm.name.replace("_udm2.tif", "_AnalyticMS_SR.tif")
    with rasterio.open(udm, "r+") as ds:  # every pixel clear now
        ds.write(np.ones((ds.height, ds.width), ds.dtypes[0]), 1)
    kept = ingest_cube(cat, "planet")
    assert [s["scene"] for s in kept.skipped] == [scene]
    assert f"its mask file {udm.name} changed on disk" in kept.skipped[0]["reason"]
    assert _store_digest(path) == digest

    replace = _catalog(scenes, tmp_path / "data", cubes__planet__changed_scenes="replace")
    assert pipeline_up_to_date(replace, "planet", stages=[]) is None  # `fusioncube run` said "nothing new"
    before = xr.open_zarr(path)["valid"].values.sum()
    rebuilt = ingest_cube(replace, "planet")
    assert len(rebuilt.dates_replaced) == 1 and [s["scene"] for s in rebuilt.ingested] == [scene]
    assert xr.open_zarr(path)["valid"].values.sum() > before
    assert ingest_cube(replace, "planet").ingested == []

    moved = tmp_path / "archive"
    scenes.rename(moved)
    again = ingest_cube(_catalog(moved, tmp_path / "data", cubes__planet__changed_scenes="replace"), "planet")
    assert again.ingested == [] and not again.skipped


def test_a_new_kind_of_file_in_an_ingested_folder_is_named_by_the_scheduled_run(tmp_path: Path) -> None:
    """`fusioncube ingest DIR` writes one glob per suffix it found (DIR/**/*.tif): a JPEG 2000 scene
    arriving there later matches none, and `fusioncube run` (or a served deployment) said only
    "nothing new"."""
    from rasterio.transform import from_origin

    from flows.cli import main
    from tasks.catalog import load_catalog
    from tasks.ingest import plan_ingest

    src = tmp_path / "inbox"
    src.mkdir()
    profile = dict(width=8, height=8, count=1, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(600_000, 5_000_000, 30, 30))
    with rasterio.open(src / "S_20230601.tif", "w", driver="GTiff", **profile) as ds:
        ds.write(np.full((1, 8, 8), 7, np.uint16))
    out = tmp_path / "c.zarr"
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    catalog = load_catalog(str(out) + ".catalog.yaml")
    assert plan_ingest(catalog, "c").skipped == []
    (src / "later").mkdir()
    for d in ("20230611", "20230621"):
        with rasterio.open(src / "later" / f"S_{d}.jp2", "w", driver="JP2OpenJPEG", **profile) as ds:
            ds.write(np.full((1, 8, 8), 9, np.uint16))
    (row,) = plan_ingest(catalog, "c").skipped
    assert row["scene"] == "S_20230611.jp2 and 1 more .jp2 file(s)"
    assert row["reason"].startswith(f".jp2 files in {src.resolve()}, where the sources of cube c take only .tif files; "
                                    f"add a glob such as {src.resolve()}/**/*.jp2")
    # the run's summary names it on every run (tests/tasks/test_pipeline_report.py)
    assert main(["ingest", str(src), "--out", str(out)]) == 0  # what the reason suggests: takes them
    assert plan_ingest(load_catalog(str(out) + ".catalog.yaml"), "c").skipped == []
