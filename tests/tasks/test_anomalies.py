"""The anomaly stage on a tiny generated LST cube with planted hot spots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from tasks.anomalies import (
    PROGRESS_FILE,
    anomalies_png,
    detect_anomalies,
    detect_tile,
    strongest_anomalies,
)
from tasks.checkpoint import read_manifest
from tasks.cube import cube_dataset, grid_coords, spatial_ref
from tasks.errors import CubeSchemaError

NT, NY, NX = 12, 32, 32
SPOTS = [(3, 5, 6), (7, 15, 18), (10, 26, 4)]  # (time, row, col) of 2 x 2 hot spots


def _cube(path, *, seed: int = 0, transform: Affine | None = None,
          crs: CRS | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank LST (season x pattern + weather) + noise + planted +8 K spots; 15% cloud gaps."""
    rng = np.random.default_rng(seed)
    t = np.arange(NT)
    pattern = 3 * np.sin(np.linspace(0, 3, NY))[:, None] + 2 * np.cos(np.linspace(0, 2, NX))[None, :]
    lst = (290 + 0.4 * t + 2 * rng.standard_normal(NT))[:, None, None] + pattern[None] * (
        1 + 0.05 * t
    )[:, None, None]
    lst = lst + 0.1 * rng.standard_normal(lst.shape)
    truth = np.zeros(lst.shape, bool)
    for ti, r, c in SPOTS:
        lst[ti, r : r + 2, c : c + 2] += 8.0
        truth[ti, r : r + 2, c : c + 2] = True
    valid = rng.random(lst.shape) > 0.15
    valid[truth] = True
    data = np.where(valid, lst, np.nan).astype(np.float32)[:, None]
    ds = cube_dataset(data, valid=valid, times=np.datetime64("2019-07-01", "ns") + np.arange(NT) * np.timedelta64(1, "D"),
                      bands=["lst"], transform=transform or Affine(1000.0, 0, 500000.0, 0, -1000.0, 4000000.0),
                      crs=crs or 32615, units="K")
    ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w")
    return truth, valid


def test_stage_writes_schema_finds_spots_and_reuses(tmp_path):
    cube, out = tmp_path / "cube.zarr", tmp_path / "anomalies.zarr"
    truth, valid = _cube(cube)
    manifest = detect_anomalies(cube, out, bits=8, tile=16)
    ds = xr.open_zarr(out, consolidated=None).load()
    for name, dtype in (("score", np.float32), ("flag", bool), ("background", np.float32)):
        assert ds[name].dims == ("time", "y", "x")
        assert ds[name].dtype == dtype
    assert ds.sizes == {"time": NT, "y": NY, "x": NX}
    assert "spatial_ref" in ds.coords and ds["score"].attrs["units"] == "K"
    assert ds.attrs["band"] == "lst" and ds.attrs["source"] == str(cube) and "8-bit" in ds.attrs["method"]
    flag = ds["flag"].values
    assert flag[truth].mean() >= 0.9
    assert (flag & ~truth).sum() <= 0.01 * (~truth).sum()
    assert np.isnan(ds["score"].values[~valid]).all() and np.isfinite(ds["score"].values[valid]).all()
    assert not flag[~valid].any()  # not seen: no score, no flag
    assert manifest.stats["tiles"] == 9 and manifest.outputs["band"] == "lst"  # starts 0, 12, 16 a side
    rows = strongest_anomalies(ds, 5)  # no observed values: the magnitude is the pooled score
    assert rows and rows[0]["magnitude"] == rows[0]["score"] > 4
    assert set(rows[0]) == {"date", "x", "y", "magnitude", "score"}
    # with them: the entry's own departure from the background, near the planted +8 K
    rows = strongest_anomalies(ds, 5, xr.open_zarr(cube)["data"].sel(band="lst"))
    assert all(6.0 < r["magnitude"] < 10.0 and r["score"] < r["magnitude"] for r in rows), rows
    png = anomalies_png(out, tmp_path / "anomalies.png")
    assert png.stat().st_size > 0
    # second call: reused, not recomputed
    mtime = (out / "zarr.json").stat().st_mtime_ns
    again = detect_anomalies(cube, out, bits=8, tile=16)
    assert again.key == manifest.key and (out / "zarr.json").stat().st_mtime_ns == mtime
    assert read_manifest(out).key == manifest.key
    with pytest.raises(FileExistsError, match="overwrite=True"):
        detect_anomalies(cube, out, bits=6, tile=16)


def test_tiles_are_blended_so_the_background_has_no_seams(tmp_path):
    """Solved tile by tile, each tile's background is its own low-rank fit: side by side, the tile
    grid showed as steps in ``background`` (and in the scores about it). Overlapping tiles blended
    over the overlap leave the steps across any tile edge like those elsewhere."""
    rng = np.random.default_rng(1)
    nt, n = 20, 32
    yy, xx = np.mgrid[0:n, 0:n] / n
    fields = [np.sin(2 * np.pi * (f * xx + g * yy) + p) for f, g, p in rng.uniform(0, 1.5, (8, 3)) * [1, 1, 4]]
    lst = 290 + sum(rng.normal(0, 2 / (i + 1), nt)[:, None, None] * f for i, f in enumerate(fields))
    lst = (lst + 0.3 * rng.standard_normal(lst.shape)).astype(np.float32)  # many weak components + noise
    transform = Affine(1000.0, 0, 500000.0, 0, -1000.0, 4000000.0)
    y, x = grid_coords(transform, n, n)
    cube, out = tmp_path / "cube.zarr", tmp_path / "anomalies.zarr"
    xr.Dataset({"data": (("time", "band", "y", "x"), lst[:, None]), "valid": (("time", "y", "x"), np.isfinite(lst))},
               coords={"time": np.datetime64("2019-07-01", "ns") + np.arange(nt) * np.timedelta64(1, "D"),
                       "band": np.array(["lst"], dtype=object), "y": y, "x": x,
                       "spatial_ref": spatial_ref(CRS.from_epsg(32615), transform)}).to_zarr(cube, zarr_format=3, mode="w")
    detect_anomalies(cube, out, bits=8, tile=16)
    bg = xr.open_zarr(out, consolidated=None)["background"].values
    edges = np.zeros(n - 1, bool)
    edges[15] = True  # between columns 15|16: where a tile ends and another starts
    for axis in (1, 2):
        steps = np.abs(np.diff(bg, axis=axis)).mean(axis=(0, 3 - axis))
        assert steps[edges].mean() < 1.2 * steps[~edges].mean()  # side by side: 1.28 / 1.76


def test_tiles_solved_at_once_give_the_same_product(tmp_path):
    """Tiles on a pool of threads, the next row queued while one is blended: the product is the one
    tile after tile gives, bit for bit (9 tiles in 3 rows, 3 threads)."""
    cube = tmp_path / "cube.zarr"
    _cube(cube)
    one = detect_anomalies(cube, tmp_path / "one.zarr", bits=8, tile=16, workers=1)
    three = detect_anomalies(cube, tmp_path / "three.zarr", bits=8, tile=16, workers=3)
    assert one.key == three.key and one.stats["tiles"] == three.stats["tiles"] == 9
    a, b = (xr.open_zarr(tmp_path / f"{n}.zarr", consolidated=None).load() for n in ("one", "three"))
    for name in ("score", "flag", "background"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    with pytest.raises(ValueError, match="workers"):
        detect_anomalies(cube, tmp_path / "bad.zarr", workers=0)


def test_a_tile_with_no_observation_lends_no_threshold_to_its_neighbours(tmp_path):
    """Beside an empty tile (outside the footprint) the blended threshold is the observed tile's,
    not pulled towards the empty one's nothing; the empty part has no background and no flag."""
    cube, out = tmp_path / "cube.zarr", tmp_path / "anomalies.zarr"
    truth, _ = _cube(cube)
    ds = xr.open_zarr(cube).load()
    ds["data"][:, :, :, :16] = np.nan
    ds["valid"][:, :, :16] = False
    ds.to_zarr(tmp_path / "half.zarr", zarr_format=3, mode="w")
    detect_anomalies(tmp_path / "half.zarr", out, bits=8, tile=16)
    res = xr.open_zarr(out, consolidated=None).load()
    assert np.isnan(res["background"].values[:, :, :12]).all()  # only empty tiles cover columns 0..11
    assert np.isfinite(res["background"].values[:, :, 16:]).all()
    assert not res["flag"].values[:, :, :16].any()
    right = truth[:, :, 16:]
    assert res["flag"].values[:, :, 16:][right].mean() >= 0.9  # the spot at column 18 still found
    assert (res["flag"].values[:, :, 16:] & ~right).sum() <= 0.01 * (~right).sum()


def test_bad_cube_and_parameters_raise(tmp_path):
    bad = tmp_path / "bad.zarr"
    xr.Dataset({"lst": (("time", "y", "x"), np.zeros((2, 3, 3), np.float32))}).to_zarr(
        bad, zarr_format=3, mode="w"
    )
    with pytest.raises(CubeSchemaError, match="no variable 'data'"):
        detect_anomalies(bad, tmp_path / "a.zarr")
    cube = tmp_path / "cube.zarr"
    _cube(cube)
    with pytest.raises(ValueError, match="bits must be an integer"):
        detect_anomalies(cube, tmp_path / "a.zarr", bits=0)
    with pytest.raises(ValueError, match="band 'lts' is not in"):
        detect_anomalies(cube, tmp_path / "a.zarr", band="lts")
    one = tmp_path / "one_date.zarr"
    xr.open_zarr(cube).isel(time=slice(0, 2)).load().to_zarr(one, zarr_format=3, mode="w")
    with pytest.raises(ValueError, match="at least 3 dates; the cube has 2"):
        detect_anomalies(one, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
    with pytest.raises(ValueError, match=r"\(time, y, x\)"):
        da = xr.DataArray(np.zeros((2, 2, 2)), dims=("y", "x", "time"))
        detect_tile(da, da.astype(bool), bits=8, lo=0.0, hi=1.0)


def test_add_cli_registers_stage_anomalies():
    import argparse

    from tasks.anomalies import add_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="stage")
    add_cli(sub)
    args = parser.parse_args(["anomalies", "--cube", "in.zarr", "--out", "out.zarr", "--bits", "4"])
    assert (args.cube, args.out, args.bits, args.k) == ("in.zarr", "out.zarr", 4, 6.0) and callable(args.func)
    assert parser.parse_args(["anomalies", "--cube", "c", "--out", "o", "--k", "9"]).k == 9.0


@pytest.mark.slow
def test_task_publishes_table_and_quicklook(tmp_path, prefect_harness):
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.anomalies import anomalies_task

    cube, out = tmp_path / "cube.zarr", tmp_path / "lst-anomalies.zarr"
    _cube(cube)

    @flow
    def one() -> dict:
        return anomalies_task(str(cube), str(out), tile=32)

    result = one()
    assert result["key"] and result["stats"]["flagged"] > 0
    table = Artifact.get("anomalies-cube-lst-anomalies")
    assert table is not None and table.type == "table" and "magnitude" in str(table.data)
    image = Artifact.get("anomalies-png-cube-lst-anomalies")
    assert image is not None and str(image.data).startswith("data:image/png;base64,")
    assert Path(result["quicklook"]).exists()


def test_cli_lists_spots_with_coordinates_at_the_grid_precision(tmp_path, capsys):
    """On a lon/lat grid the printed coordinates keep the decimals a pixel needs (the spots are
    told apart), not whole degrees."""
    from flows.cli import main

    cube, out = tmp_path / "geo.zarr", tmp_path / "a.zarr"
    _cube(cube, transform=Affine(0.0005, 0, 10.0, 0, -0.0005, 50.0), crs=CRS.from_epsg(4326))
    assert main(["stage", "anomalies", "--cube", str(cube), "--out", str(out), "--bits", "8"]) == 0
    text = capsys.readouterr().out
    # it ends with info's description of the product (made by, parameters, flagged, strongest with
    # the change in the band's units), and the run's own figures
    assert f"{out}: anomalies (stage anomalies)" in text and "  made by: stage anomalies" in text and "parameters: " in text
    assert "8-bit quantizer over" in text and "  flagged: " in text and "change in lst's units, score" in text
    lines = [ln for ln in text.splitlines() if " x=" in ln]
    coords = {tuple(part.split("=")[1] for part in ln.split()[1:3]) for ln in lines}
    assert lines and all(len(x.split(".")[1]) >= 4 for x, _ in coords), lines
    spots = {(round(10.0 + 0.0005 * (c + 0.5), 5), round(50.0 - 0.0005 * (r + 0.5), 5)) for _, r, c in SPOTS}
    printed = {(float(x), float(y)) for x, y in coords}
    assert all(any(abs(px - sx) < 0.0011 and abs(py - sy) < 0.0011 for sx, sy in spots) for px, py in printed)
    assert len(printed) >= 3


def test_quick_look_draws_a_product_with_no_flag_and_a_date_with_nothing_observed(tmp_path):
    """The quick-look's per-date panel takes a product without a single flag, and a date on
    which no pixel was observed (score NaN everywhere), without dividing by zero."""
    import pandas as pd

    score = np.full((3, 8, 8), np.nan, np.float32)
    score[0] = 0.5  # observed, nothing flagged; dates 1 and 2 unobserved
    ds = xr.Dataset({"score": (("time", "y", "x"), score), "flag": (("time", "y", "x"), np.zeros((3, 8, 8), bool)),
                     "background": (("time", "y", "x"), score)},
                    coords={"time": pd.date_range("2020-01-01", periods=3)})
    ds.to_zarr(tmp_path / "a.zarr", zarr_format=3, consolidated=False)
    png = anomalies_png(tmp_path / "a.zarr", tmp_path / "a.png")
    assert png.stat().st_size > 0


def _products(path: Path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(path, consolidated=None).load()
    return {name: ds[name].values for name in ("score", "flag", "background")}


def _tall_cube(path: Path) -> None:
    """48 x 32 px: with 16 px tiles, 4 rows of 3 tiles (starts 0, 12, 24, 32 down; the last row
    overlaps the one before it by 8 px, so two rows' sums are carried at once)."""
    a, b = path.with_name("top.zarr"), path.with_name("bottom.zarr")
    _cube(a, seed=0)
    _cube(b, seed=1)
    top, bottom = xr.open_zarr(a).load(), xr.open_zarr(b).load()
    bottom = bottom.assign_coords(y=top["y"].values[-1] - 1000.0 * (1 + np.arange(NY)))
    xr.concat([top, bottom.isel(y=slice(0, 16))], dim="y").to_zarr(path, zarr_format=3, mode="w")


def test_an_interrupted_run_resumes_from_its_last_tile_row(tmp_path, monkeypatch):
    """A run stopped in its third row of tiles (an error, Ctrl-C) keeps its work beside the output;
    the next run with the same parameters solves only the rows not finished, and the product is
    bit for bit that of a run never stopped. Other parameters start over (the work is keyed)."""
    import tasks.anomalies as stage

    cube = tmp_path / "cube.zarr"
    _tall_cube(cube)
    whole = detect_anomalies(cube, tmp_path / "whole.zarr", bits=8, tile=16, workers=1)
    assert whole.stats["tiles"] == 12 and whole.stats["resumed_tiles"] == 0
    real, calls = stage.detect_tile, []

    def stops_at_tile_8(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "anomalies.zarr"
    monkeypatch.setattr(stage, "detect_tile", stops_at_tile_8)
    with pytest.raises(KeyboardInterrupt):
        detect_anomalies(cube, out, bits=8, tile=16, workers=1)
    work = [p for p in tmp_path.iterdir() if p.name.startswith("anomalies.zarr.resume-") and p.is_dir()]
    assert not out.exists() and len(work) == 1 and (work[0] / stage.PROGRESS_FILE).exists()
    from tasks.info import describe

    assert f"  {work[0].name}: anomalies (stage anomalies), unfinished (a stopped run's work)" in describe(tmp_path)
    assert "  unfinished: the work of a stopped run towards anomalies.zarr; the same command finishes it" in describe(work[0])

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(stage, "detect_tile", counted)
    again = detect_anomalies(cube, out, bits=8, tile=16, workers=1)
    assert again.key == whole.key and again.stats["resumed_tiles"] == 6 and len(calls) == 6
    for name in ("tiles", "flagged", "max_iterations", "unconverged_tiles"):
        assert again.stats[name] == whole.stats[name], name
    expected, got = _products(tmp_path / "whole.zarr"), _products(out)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("anomalies")) == [
        "anomalies.zarr", "anomalies.zarr.manifest.json"]
    assert not (out / stage.PROGRESS_FILE).exists()

    # stopped again, then run with other parameters: that work is not theirs
    monkeypatch.setattr(stage, "detect_tile", stops_at_tile_8)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        detect_anomalies(cube, tmp_path / "b.zarr", bits=8, tile=16, workers=1)
    monkeypatch.setattr(stage, "detect_tile", counted)
    calls.clear()
    other = detect_anomalies(cube, tmp_path / "b.zarr", bits=6, tile=16, workers=1)
    assert other.stats["resumed_tiles"] == 0 and len(calls) == 12
    assert not [p for p in tmp_path.iterdir() if ".resume-" in p.name]


KILLED_SCRIPT = '''
import sys
from tasks import faults
faults.install()  # FUSIONCUBE_KILL_AT / FUSIONCUBE_FAULT_LOG from the environment
from flows.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_product(tmp_path):
    """SIGKILL (no ``finally``, no ``atexit``) just as the second tile row's progress is being
    renamed into place: the next run goes on from the first row's record, re-solves the second
    row over what it had written, and ends with the product of a run never killed."""
    import os
    import subprocess
    import sys

    from tasks import faults

    cube = tmp_path / "cube.zarr"
    _tall_cube(cube)
    args = ["stage", "anomalies", "--cube", str(cube), "--bits", "8", "--tile", "16"]

    def run(out: Path, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", KILLED_SCRIPT, *args, "--out", str(out)],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=240)

    events = tmp_path / "events.log"
    assert run(tmp_path / "whole.zarr", **{faults.ENV_LOG: str(events)}).returncode == 0
    saves = [n for n, kind, path in faults.parse_log(events)
             if kind == "rename" and path.endswith(PROGRESS_FILE)]
    assert len(saves) == 4  # one a row of tiles
    out = tmp_path / "killed.zarr"
    killed = run(out, **{faults.ENV_KILL: str(saves[1])})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and any(".resume-" in p.name for p in tmp_path.iterdir())
    again = run(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_manifest(out).stats["resumed_tiles"] == 3  # the first row's record; the second's was not in place
    assert "9 of 12 tiles (the rest from a stopped run)" in again.stdout
    assert "stopped at the iteration cap" not in again.stdout or " of the 12 tiles stopped" in again.stdout
    expected, got = _products(tmp_path / "whole.zarr"), _products(out)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
