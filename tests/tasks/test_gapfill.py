"""The gap-filling stage on a tiny generated cube: schema, exact gap marks, quality, reuse."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from affine import Affine
from scipy import ndimage

from fusion_models.completion import linear_interpolation
from tasks.checkpoint import read_manifest
from tasks.cube import cube_dataset, open_cube
from tasks.gapfill import add_cli, gapfill_cube, load_model, quicklook_png, weights_path

torch.set_num_threads(1)

T, C, H, W = 8, 2, 32, 32


def make_cube(path, seed=0):
    """Low temporal rank (2) smooth reflectance-like cube with cloud-blob gaps; returns the truth."""
    rng = np.random.default_rng(seed)
    days = np.linspace(0, 1, T)
    temporal = np.stack([np.ones(T), np.sin(np.pi * days)])  # (2, T)
    spatial = np.stack([ndimage.gaussian_filter(rng.normal(size=(C, H, W)), (0, 3, 3)) for _ in range(2)])
    spatial = spatial / spatial.std() * 0.05
    truth = (np.einsum("kt,kchw->tchw", temporal, spatial) + 0.2).astype(np.float32)
    cloud = np.zeros((T, H, W), bool)
    for t in range(T):
        field = ndimage.gaussian_filter(rng.normal(size=(H, W)), 4)
        cloud[t] = field > np.quantile(field, 1 - rng.uniform(0.05, 0.5))
    data = np.where(cloud[:, None], np.nan, truth).astype(np.float32)
    ds = cube_dataset(data, valid=~cloud, times=[f"2019-05-{d:02d}" for d in range(1, 2 * T, 2)], bands=["red", "nir"],
                      transform=Affine(3.0, 0, 500000.0, 0, -3.0, 4650000.0), crs=32617,
                      layers={"landcover": np.full((H, W), 82, np.uint8)})
    ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w")
    return truth, cloud


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    root = tmp_path_factory.mktemp("gapfill")
    cube = root / "cube.zarr"
    truth, cloud = make_cube(cube)
    out = root / "filled.zarr"
    manifest = gapfill_cube(cube, out, epochs=20, layers=10, batch=4, lr=1e-2, device="cpu")
    return cube, out, truth, cloud, manifest


def test_schema_and_marks(filled):
    cube, out, truth, cloud, manifest = filled
    ds = open_cube(out)
    src = open_cube(cube)
    assert ds["data"].dims == ("time", "band", "y", "x") and ds["data"].dtype == np.float32
    assert "spatial_ref" in ds.coords and "landcover" in ds
    assert "gaps filled by LRTC-Net" in ds["data"].attrs["long_name"]  # not "observed values" alone
    np.testing.assert_array_equal(ds["valid"].values, src["valid"].values)
    np.testing.assert_array_equal(ds["filled"].values, cloud)  # exactly the gaps
    values = ds["data"].values
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values[:, :, ~cloud.any(0)], src["data"].values[:, :, ~cloud.any(0)])
    obs = np.broadcast_to(~cloud[:, None], values.shape)
    np.testing.assert_array_equal(values[obs], src["data"].values[obs])  # bit for bit
    assert manifest.outputs["filled_share"] == pytest.approx(cloud.mean())
    for c in range(C):  # fills inside each band's observed range
        band = src["data"].values[:, c][~cloud]
        assert band.min() <= values[:, c][cloud].min() and values[:, c][cloud].max() <= band.max()
    from tasks.cube import describe_cube

    assert f"  filled: {cloud.mean():.1%} of pixel-dates" in "\n".join(describe_cube(out))  # fusioncube info


def test_beats_linear_interpolation_on_gaps(filled):
    cube, out, truth, cloud, _ = filled
    values = open_cube(out)["data"].values
    gaps = np.broadcast_to(cloud[:, None], truth.shape)
    src = open_cube(cube)["data"].values
    lin = linear_interpolation(src, ~gaps)

    def nrmse(est):
        return np.linalg.norm((est - truth)[gaps]) / np.linalg.norm(truth[gaps])

    assert nrmse(values) < nrmse(lin), (nrmse(values), nrmse(lin))


def test_reuse_weights_and_quicklook(filled, tmp_path):
    cube, out, _, _, manifest = filled
    stamp = (out / "zarr.json").stat().st_mtime_ns
    again = gapfill_cube(cube, out, epochs=20, layers=10, batch=4, lr=1e-2, device="cpu")
    assert again.key == manifest.key and (out / "zarr.json").stat().st_mtime_ns == stamp
    assert read_manifest(out).key == manifest.key
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        gapfill_cube(cube, out, epochs=3, layers=10, batch=4, device="cpu")
    net = load_model(out)
    assert weights_path(out).exists() and net.layers == 10
    alone = tmp_path / "copy.zarr"  # QA9: the weights file alone rebuilds the net
    shutil.copy(weights_path(out), weights_path(alone))
    assert load_model(alone).layers == 10
    png = quicklook_png(cube, out, tmp_path / "ql.png", dates=3)
    assert png.stat().st_size > 1000
    # `info --png` on the filled cube: its newest date whole, the filled pixels outlined
    from tasks.info import quicklook

    assert quicklook(out, tmp_path / "info.png").stat().st_size > 1000


def test_filled_view_shows_observed_and_filled_values_and_marks_the_filled() -> None:
    """The filled cube's quick-look showed only its observed values (the newest clear one per
    pixel): the filling itself was not to be seen."""
    from tasks.quicklook import filled_view

    data = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    data[:, 1, 2] = np.nan  # never seen, left unfilled
    valid = np.array([[True, False, True], [True, False, False]])
    filled = np.array([[False, True, False], [False, True, False]])
    values, has, marked = filled_view(data, valid, filled)
    np.testing.assert_array_equal(has, [[True, True, True], [True, True, False]])
    np.testing.assert_array_equal(marked, [[False, True, False], [False, True, False]])
    np.testing.assert_array_equal(values[:, 0, 1], data[:, 0, 1])  # a filled value is shown
    assert np.isnan(values[:, 1, 2]).all()


def test_bad_parameters_and_cli(tmp_path):
    with pytest.raises(ValueError, match="epochs must be an integer"):
        gapfill_cube(tmp_path / "nope.zarr", tmp_path / "o.zarr", epochs=0)
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["gapfill", "--cube", "a.zarr", "--out", "b.zarr", "--epochs", "3"])
    assert args.epochs == 3 and args.layers == 20 and callable(args.func)


def test_a_band_never_observed_is_named(tmp_path):
    """One all-NaN band leaves no pixel-date with every band finite: before, the error only said
    "no observed pixel"; now it names the band and how to drop it."""
    make_cube(tmp_path / "cube.zarr")
    ds = xr.open_zarr(tmp_path / "cube.zarr").load()
    ds["data"][:, 0] = np.nan
    ds.to_zarr(tmp_path / "nan_band.zarr", zarr_format=3, mode="w")
    with pytest.raises(ValueError, match=r"band\(s\) \['red'\] hold no finite value.*drop_sel"):
        gapfill_cube(tmp_path / "nan_band.zarr", tmp_path / "o.zarr", epochs=1)
    assert not (tmp_path / "o.zarr").exists()


def test_patches_store_input(filled, tmp_path):
    from tasks.gapfill import is_patches_store
    from tasks.patch import make_patches

    cube, _, truth, cloud, _ = filled
    patches = tmp_path / "patches.zarr"
    make_patches(cube, patches, size=16, stride=8, block=1)
    assert is_patches_store(patches) and not is_patches_store(cube)
    out = tmp_path / "filled_from_patches.zarr"
    manifest = gapfill_cube(patches, out, epochs=3, layers=4, batch=4, device="cpu")
    assert manifest.outputs["input_kind"] == "patches" and manifest.outputs["sample_shape"][-1] == 16
    ds = open_cube(out)
    src = open_cube(cube)
    np.testing.assert_array_equal(ds["filled"].values, cloud)
    np.testing.assert_array_equal(ds["x"].values, src["x"].values)
    values = ds["data"].values
    assert np.isfinite(values).all()
    obs = np.broadcast_to(~cloud[:, None], values.shape)
    np.testing.assert_array_equal(values[obs], src["data"].values[obs])
    gaps = ~obs
    assert np.abs(values[gaps] - truth[gaps]).mean() < np.abs(truth[gaps] - truth[gaps].mean()).mean()
    # the command's quick-look reads the patches store as the stage did (it used to fail after the work)
    assert quicklook_png(patches, out, tmp_path / "q.png").stat().st_size > 0


def test_unseen_pixels_and_a_single_date(tmp_path):
    """A strip no scene covered stays NaN (not filled) unless fill_unseen; a one-date cube (an
    undated scene ingested with --date) runs too: the temporal rank is clamped to the dates."""
    cube = tmp_path / "cube.zarr"
    make_cube(cube, seed=3)
    ds = xr.open_zarr(cube).load()
    ds["valid"][:, :, :5] = False  # the western strip: outside every footprint
    ds["data"][:, :, :, :5] = np.nan
    strip = tmp_path / "strip.zarr"
    ds.to_zarr(strip, zarr_format=3, consolidated=True, mode="w")
    fast = {"epochs": 2, "layers": 4, "batch": 4, "device": "cpu"}
    manifest = gapfill_cube(strip, tmp_path / "f.zarr", **fast)
    out = open_cube(tmp_path / "f.zarr")
    assert manifest.outputs["unseen_pixels"] == 5 * H
    assert np.isnan(out["data"].values[..., :5]).all() and not out["filled"].values[..., :5].any()
    assert np.isfinite(out["data"].values[..., 5:]).all()
    gapfill_cube(strip, tmp_path / "all.zarr", fill_unseen=True, **fast)
    assert np.isfinite(open_cube(tmp_path / "all.zarr")["data"].values).all()
    one = tmp_path / "one.zarr"
    ds.isel(time=[0]).to_zarr(one, zarr_format=3, consolidated=True, mode="w")
    manifest = gapfill_cube(one, tmp_path / "one_filled.zarr", **fast)
    assert manifest.outputs["ranks"][0] == 1


def test_bounded_memory_blocks_and_training_sample(tmp_path, monkeypatch):
    """Filled block by block (one row of patches per block, the last row flush with the bottom
    edge overlapping the one before) it equals one whole-cube block away from that overlap; a
    small training budget trains on an even sample of the patches."""
    import tasks.gapfill as gf

    cube = tmp_path / "cube.zarr"
    truth, cloud = make_cube(cube, seed=4)
    tall = tmp_path / "tall.zarr"  # 40 rows (8 more, the grid continued): patch rows 0, 16, 24 (flush)
    ds = xr.open_zarr(cube).load()
    more = ds.isel(y=slice(0, 8)).assign_coords(y=ds.y[-8:].values - 8 * 3.0)
    xr.concat([ds, more], "y", data_vars="minimal", coords="minimal", compat="override").to_zarr(
        tall, zarr_format=3, consolidated=True, mode="w")
    fast = {"epochs": 2, "layers": 4, "batch": 4, "patch": 16, "device": "cpu"}
    one = gapfill_cube(tall, tmp_path / "one.zarr", **fast)
    monkeypatch.setattr(gf, "BLOCK_BYTES", 1)  # one row of patches per block
    rows = gapfill_cube(tall, tmp_path / "rows.zarr", **fast)
    a, b = open_cube(tmp_path / "one.zarr"), open_cube(tmp_path / "rows.zarr")
    assert a.sizes["y"] == 40 and b["data"].encoding["chunks"][2] == 16
    away = np.r_[0:24, 32:40]  # rows outside the overlap of the flush last row of patches
    np.testing.assert_allclose(a["data"].values[:, :, away], b["data"].values[:, :, away], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a["filled"].values, b["filled"].values)
    assert np.isfinite(b["data"].values).all()
    assert one.outputs["filled_share"] == pytest.approx(rows.outputs["filled_share"])
    monkeypatch.setattr(gf, "TRAIN_PATCHES", 1)  # a single training patch
    sampled = gapfill_cube(tall, tmp_path / "sampled.zarr", **fast)
    assert sampled.outputs["training_patches"] == 1 < sampled.outputs["patches"] == 6


def test_the_nets_start_is_weighted_by_acquisition_date_when_the_dates_allow() -> None:
    from tasks.gapfill import acquisition_times

    dates = np.array(["2021-01-01", "2021-01-02", "2021-01-20"], dtype="datetime64[ns]")
    cube = xr.Dataset(coords={"time": dates})
    np.testing.assert_array_equal(acquisition_times(cube), dates)
    # not strictly increasing (a repeated date), or not dates: equally spaced, by index
    assert acquisition_times(cube.assign_coords(time=dates[[0, 0, 2]])) is None
    assert acquisition_times(cube.assign_coords(time=[0, 1, 2])) is None


def test_long_series_train_fewer_patches_a_step(monkeypatch):
    """Training activations grow with the patch's entries (about 1.2 kB each): a 1000-date x 4-band
    series trains one patch a step, a 70-date x 4-band one keeps the requested 8."""
    import tasks.gapfill as g

    seen = []
    monkeypatch.setattr(g, "fit_lrtcnet", lambda *a, **k: seen.append(k["batch"]))
    kw = {"time_share": 0.1, "epochs": 1, "batch": 8}
    for shape in ((1000, 4, 32, 32), (70, 4, 32, 32)):
        g._fit(np.zeros((1, *shape), np.float32), np.zeros((1, shape[0], 32, 32), bool), shape, kw)
    assert seen == [1, 8]


def test_cli_reports_the_filled_cube_in_words(filled, monkeypatch, capsys) -> None:
    from flows.cli import main

    cube, out, _, cloud, manifest = filled
    monkeypatch.setattr("tasks.gapfill.gapfill_cube", lambda *a, **k: manifest)  # the fixture's run
    assert main(["stage", "gapfill", "--cube", str(cube), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{out}: a schema-following cube" in text
    assert f"filled: {cloud.mean():.1%} of pixel-dates" in text
    assert f"LRTC-Net: ranks {manifest.outputs['ranks']}, fitted self-supervised on" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cli_refuses_a_gpu_that_is_not_there(tmp_path, capsys) -> None:
    """``--device cuda`` on a machine without one: one line that says so, and nothing written."""
    from flows.cli import main

    make_cube(tmp_path / "cube.zarr")
    out = tmp_path / "filled.zarr"
    assert main(["stage", "gapfill", "--cube", str(tmp_path / "cube.zarr"), "--out", str(out), "--device", "cuda"]) == 2
    assert "'cuda' was asked for, but torch sees no GPU here" in capsys.readouterr().err
    assert not out.exists()


def test_filled_values_stay_inside_each_bands_observed_range() -> None:
    """NDVI above 1 is no fill: each band's values are kept inside its observed range; a band
    never observed (range NaN) is left as it is."""
    from tasks.gapfill import within

    values = np.array([[[[1.09]], [[-3.0]], [[7.0]]], [[[0.5]], [[2.0]], [[-7.0]]]], np.float32)  # (T, C, 1, 1)
    extent = np.array([[-0.2, 0.0, np.nan], [1.0, 1.0, np.nan]], np.float32)
    np.testing.assert_array_equal(within(values, extent)[..., 0, 0], [[1.0, 0.0, 7.0], [0.5, 1.0, -7.0]])

