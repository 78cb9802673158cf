"""The label-recovery stage on a tiny generated cube: schema, class codes, COG, points, reuse."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from tasks.cube import cube_dataset, open_cube
from tasks.labels import (
    NO_CLASS,
    add_cli,
    class_table,
    codes_to_index,
    cog_path,
    load_model,
    points_in_crs,
    points_to_raster,
    raster_labels,
    read_points,
    recover_labels,
    weights_path,
)
from tasks.quicklook import percent

torch.set_num_threads(1)

T, C, H, W = 4, 2, 32, 32
TRANSFORM = Affine(3.0, 0, 500000.0, 0, -3.0, 4650000.0)
CODES = (41, 81, 82)


def make_cube(path: Path, seed: int = 0) -> np.ndarray:
    """Three classes in vertical stripes with distinct spectra, clouds; a sparse label layer.

    Returns the true (H, W) class codes.
    """
    rng = np.random.default_rng(seed)
    truth = np.full((H, W), 82, np.uint8)
    truth[:, 11:21] = 81
    truth[:, 21:] = 41
    truth[5:12, 3:9] = 41  # a wood lot inside the crop field
    level = {82: (0.1, 0.3), 81: (0.2, 0.5), 41: (0.05, 0.6)}
    data = np.empty((T, C, H, W), np.float32)
    for c in range(C):
        base = np.vectorize(lambda k, c=c: level[int(k)][c])(truth)
        data[:, c] = base[None] + rng.normal(0, 0.03, (T, H, W))
    cloud = np.zeros((T, H, W), bool)
    cloud[1, :10, :10] = True
    data = np.where(cloud[:, None], np.nan, data).astype(np.float32)
    coarse = np.where(rng.random((H, W)) < 0.15, truth, 250).astype(np.uint8)  # sparse, 250 = no label
    coarse[0, 0] = 250
    legend = {"flag_values": list(CODES), "nodata": 250, "flag_meanings": "Deciduous_Forest Pasture_Hay Cultivated_Crops"}
    ds = cube_dataset(data, valid=~cloud, times=["2019-05-01", "2019-06-01", "2019-07-01", "2019-08-01"],
                      bands=["red", "nir"], transform=TRANSFORM, crs=32615, layers={"landcover": (coarse, legend)})
    ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w")
    return truth


FAST = {"epochs": 40, "patch": 16, "lr": 1e-2, "batch": 4, "width": 8, "depth": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def recovered(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    cube = root / "cube.zarr"
    truth = make_cube(cube)
    out = root / "labels.zarr"
    manifest = recover_labels(cube, "landcover", out, **FAST)
    return cube, out, truth, manifest


def test_schema_codes_and_quality(recovered) -> None:
    cube, out, truth, manifest = recovered
    ds = xr.open_zarr(out, consolidated=None)
    cls = ds["class"]
    assert cls.dims == ("y", "x") and cls.dtype == np.uint8 and cls.shape == (H, W)
    assert list(cls.attrs["flag_values"]) == list(CODES)
    assert cls.attrs["flag_meanings"].split() == ["Deciduous_Forest", "Pasture_Hay", "Cultivated_Crops"]
    assert set(np.unique(cls.values)) <= set(CODES)  # NLCD codes round-trip, 250 is not a class
    conf = ds["confidence"].values
    assert conf.dtype == np.float32 and conf.min() >= 1 / len(CODES) - 1e-6 and conf.max() <= 1 + 1e-6
    assert "spatial_ref" in ds.coords
    np.testing.assert_allclose(ds["x"].values, xr.open_zarr(cube)["x"].values)
    assert (cls.values == truth).mean() > 0.9  # dense from 15 % labels
    assert manifest.outputs["classes"] == list(CODES)
    layer = xr.open_zarr(cube)["landcover"].values
    assert manifest.outputs["labelled_pixels"] == int((layer != 250).sum())


def test_cog_has_colours_and_grid(recovered) -> None:
    _, out, _, _ = recovered
    with rasterio.open(cog_path(out)) as src:
        assert src.crs.to_epsg() == 32615 and src.transform == TRANSFORM
        assert src.nodata == NO_CLASS
        cmap = src.colormap(1)
        assert cmap[82][:3] == (171, 108, 40) and cmap[41][:3] == (104, 171, 95)  # NLCD legend
        np.testing.assert_array_equal(src.read(1), xr.open_zarr(out)["class"].values)


def test_reuse_refuse_and_weights(recovered) -> None:
    cube, out, _, manifest = recovered
    stamp = (out / "zarr.json").stat().st_mtime_ns
    again = recover_labels(cube, "landcover", out, **FAST)
    assert again.key == manifest.key and (out / "zarr.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="overwrite"):
        recover_labels(cube, "landcover", out, **{**FAST, "epochs": 2})
    net = load_model(out)
    assert weights_path(out).exists() and net.classes == 3
    # QA9: the weights file alone rebuilds the model and says what it reads (a bare state dict did not)
    from tasks.checkpoint import load_checkpoint

    alone = out.parent / "elsewhere" / "copy.zarr"
    alone.parent.mkdir()
    shutil.copy(weights_path(out), weights_path(alone))
    copied = load_model(alone)  # no manifest there
    assert load_model(weights_path(alone)).classes == 3  # the weights file itself names the model too
    torch.save({"kind": "cnn4d", "config": {}, "state_dict": {}}, weights_path(alone.with_name("cls.zarr")))
    with pytest.raises(ValueError, match=r"cls.zarr.unet.pt: holds a cnn4d model, not the unet_lrtd model"):
        load_model(alone.with_name("cls.zarr"))
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), net.state_dict().values(), strict=True))
    _, meta = load_checkpoint(weights_path(out))
    ds = open_cube(cube)
    assert meta["kind"] == "unet_lrtd" and meta["classes"] == manifest.outputs["classes"]
    assert meta["bands"] == [str(b) for b in ds["band"].values] and len(meta["mean"]) == len(meta["std"]) == ds.sizes["band"]
    # weights saved before they held their settings still load, through the manifest
    state, _ = load_checkpoint(weights_path(out))
    torch.save(state, weights_path(alone))
    with pytest.raises(FileNotFoundError, match="no manifest beside weights saved without their settings"):
        load_model(alone)
    assert load_model(out).classes == 3


def test_a_trained_model_maps_another_cube_from_its_weights_file_alone(recovered, tmp_path, caplog) -> None:
    """QA9: a labels model could not be applied to another cube (no --model; its band statistics
    were saved nowhere)."""
    from tasks.labels import apply_model

    cube, out, truth, _ = recovered
    other = tmp_path / "other.zarr"
    other_truth = make_cube(other, seed=5)  # another area (its noise): the same bands and dates
    model = tmp_path / "moved" / "model.unet.pt"  # the weights file alone, away from its product
    model.parent.mkdir()
    shutil.copy(weights_path(out), model)
    manifest = apply_model(other, model, tmp_path / "mapped.zarr", device="cpu")
    assert not manifest.outputs["trained"] and manifest.params == {"model": "model.unet.pt"}
    mapped = xr.open_zarr(tmp_path / "mapped.zarr")
    assert list(mapped["class"].attrs["flag_values"]) == manifest.outputs["classes"]
    assert mapped.attrs["model"] == str(model.resolve()) and cog_path(tmp_path / "mapped.zarr").exists()
    again = apply_model(cube, model, tmp_path / "same.zarr", device="cpu")  # its own cube: its own map
    same = xr.open_zarr(tmp_path / "same.zarr")["class"].values
    assert (same == xr.open_zarr(out)["class"].values).mean() > 0.99 and again.outputs["mapped_pixels"] > 0
    assert (mapped["class"].values == other_truth).mean() > 0.8
    assert mapped["class"].attrs["flag_meanings"] == "Deciduous_Forest Pasture_Hay Cultivated_Crops"  # its legend
    with pytest.raises(ValueError, match=r"model.unet.pt: the model was trained on 4 dates x bands"):
        ds = xr.open_zarr(other)
        ds.isel(time=slice(0, 3)).drop_encoding().to_zarr(tmp_path / "short.zarr", zarr_format=3, consolidated=True)
        apply_model(tmp_path / "short.zarr", model, tmp_path / "short_map.zarr", device="cpu")
    scaled = tmp_path / "dn.zarr"
    ds.assign(data=ds["data"] * 10000).drop_encoding().to_zarr(scaled, zarr_format=3, consolidated=True)
    with caplog.at_level("WARNING", logger="tasks.labels"):
        apply_model(scaled, model, tmp_path / "dn_map.zarr", device="cpu")
    assert "dn.zarr may not suit this model: band" in caplog.text
    torch.save(torch.load(model, weights_only=True)["state_dict"], tmp_path / "bare.pt")  # weights saved before
    with pytest.raises(ValueError, match="not a label-recovery model that describes itself"):
        apply_model(other, tmp_path / "bare.pt", tmp_path / "bare_map.zarr")
    assert not (tmp_path / "bare_map.zarr").exists() and not (tmp_path / "short_map.zarr").exists()


def test_points_csv_and_geojson(tmp_path) -> None:
    cube = tmp_path / "cube.zarr"
    truth = make_cube(cube, seed=1)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, H, 120), rng.integers(0, W, 120)
    xs, ys = TRANSFORM * (cols + 0.5, rows + 0.5)
    df = pd.DataFrame({"X": xs, "Y": ys, "Class": truth[rows, cols]})
    df.loc[len(df)] = (0.0, 0.0, 82)  # outside the grid
    df.to_csv(tmp_path / "pts.csv", index=False)
    pts = read_points(tmp_path / "pts.csv")
    raster, dropped = points_to_raster(pts, TRANSFORM, (H, W))
    assert dropped == 1
    np.testing.assert_array_equal(raster[rows, cols], truth[rows, cols])
    assert (raster != NO_CLASS).sum() == len(set(zip(rows, cols, strict=True)))
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
              "properties": {"class": int(c)}} for x, y, c in zip(xs, ys, truth[rows, cols], strict=True)]
    (tmp_path / "pts.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    gj = read_points(tmp_path / "pts.geojson")
    np.testing.assert_array_equal(gj[["x", "y", "class"]].to_numpy(), pts.iloc[:-1].to_numpy())
    assert gj.attrs["crs"] is None  # beyond lon / lat: the cube's CRS, as files written before RFC 7946
    # RFC 7946 GeoJSON (no crs member, WGS 84 longitude / latitude) is moved onto the cube's grid
    from rasterio.warp import transform as reproject_points

    lon, lat = reproject_points(CRS.from_epsg(32615), CRS.from_epsg(4326), list(xs), list(ys))
    for f, x, y in zip(feats, lon, lat, strict=True):
        f["geometry"]["coordinates"] = [x, y]
    (tmp_path / "lonlat.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    ll = read_points(tmp_path / "lonlat.geojson")
    assert ll.attrs["crs"] == "EPSG:4326"
    raster, dropped = points_to_raster(points_in_crs(ll, CRS.from_epsg(32615)), TRANSFORM, (H, W))
    assert dropped == 0
    np.testing.assert_array_equal(raster[rows, cols], truth[rows, cols])
    out = tmp_path / "from-points.zarr"
    manifest = recover_labels(cube, tmp_path / "pts.csv", out, **{**FAST, "epochs": 8})
    assert manifest.outputs["labels"]["dropped"] == 1 and manifest.outputs["classes"] == list(CODES)
    assert set(np.unique(xr.open_zarr(out)["class"].values)) <= set(CODES)
    # none on the grid (x and y swapped): said as such, with both extents, before any training
    df.rename(columns={"X": "Y", "Y": "X"}).iloc[:-1].to_csv(tmp_path / "swapped.csv", index=False)
    with pytest.raises(ValueError, match=r"swapped.csv: none of its 120 point\(s\) falls on the cube's grid"):
        recover_labels(cube, tmp_path / "swapped.csv", tmp_path / "none.zarr", **FAST)
    assert not (tmp_path / "none.zarr").exists()


def test_points_in_lon_lat_with_class_names(tmp_path) -> None:
    """A field-sample table as real projects keep them (sits' samples_*.csv): WGS 84 longitude /
    latitude and text labels; the stage reprojects the points and keeps the names as the legend."""
    from rasterio.warp import transform as reproject_points

    cube = tmp_path / "cube.zarr"
    truth = make_cube(cube, seed=2)
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, H, 150), rng.integers(0, W, 150)
    xs, ys = TRANSFORM * (cols + 0.5, rows + 0.5)
    lon, lat = reproject_points(CRS.from_epsg(32615), CRS.from_epsg(4326), list(xs), list(ys))
    names = {41: "Forest", 81: "Pasture", 82: "Soy Corn"}
    pd.DataFrame({"id": range(len(lon)), "longitude": lon, "latitude": lat,
                  "start_date": "2019-05-01", "label": [names[int(c)] for c in truth[rows, cols]]}
                 ).to_csv(tmp_path / "samples.csv", index=False)
    pts = read_points(tmp_path / "samples.csv")
    assert pts.attrs["crs"] == "EPSG:4326"
    assert pts.attrs["class_names"] == {1: "Forest", 2: "Pasture", 3: "Soy Corn"}  # sorted names
    raster, dropped = points_to_raster(points_in_crs(pts, CRS.from_epsg(32615)), TRANSFORM, (H, W))
    assert dropped == 0
    code_of = {41: 1, 81: 2, 82: 3}
    np.testing.assert_array_equal(raster[rows, cols], [code_of[int(c)] for c in truth[rows, cols]])
    out = tmp_path / "named.zarr"
    manifest = recover_labels(cube, tmp_path / "samples.csv", out, **{**FAST, "epochs": 8})
    assert manifest.outputs["classes"] == [1, 2, 3]
    attrs = xr.open_zarr(out)["class"].attrs
    assert attrs["flag_values"] == [1, 2, 3] and attrs["flag_meanings"] == "Forest Pasture Soy_Corn"
    with rasterio.open(cog_path(out)) as src:
        assert src.colormap(1)[1][:3] != (128, 128, 128)  # a palette colour, not the unknown grey
    # the map's COG given back as labels (to classify, or labels) keeps its names and colours
    _, legend, _ = raster_labels(xr.open_zarr(cube), cog_path(out))
    assert legend["flag_values"] == [1, 2, 3] and legend["flag_meanings"] == "Forest Pasture Soy_Corn"
    assert legend["flag_colors"] == attrs["flag_colors"]
    # names that are all NLCD class names become NLCD codes (the NLCD legend and colours follow)
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0],
                  "class": ["Deciduous Forest", "cultivated_crops", "Barren Land"]}).to_csv(tmp_path / "nlcd.csv")
    nlcd = read_points(tmp_path / "nlcd.csv")
    assert nlcd["class"].tolist() == [41, 82, 31] and not nlcd.attrs["class_names"]
    # NLCD codes and NLCD names mixed in one column are all NLCD codes; other mixes are refused,
    # not numbered as names ("41" would have become class 1)
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0],
                  "class": ["41", "cultivated_crops", "82.0"]}).to_csv(tmp_path / "codes_names.csv")
    assert read_points(tmp_path / "codes_names.csv")["class"].tolist() == [41, 82, 82]
    pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0], "class": ["41", "Forest"]}).to_csv(tmp_path / "mix2.csv")
    with pytest.raises(ValueError, match=r"mix2.csv: the class column mixes codes.*'Forest'.* not NLCD names"):
        read_points(tmp_path / "mix2.csv")
    pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0], "class": ["7", "Deciduous Forest"]}).to_csv(tmp_path / "mix3.csv")
    with pytest.raises(ValueError, match=r"\['7'\] are not NLCD codes"):
        read_points(tmp_path / "mix3.csv")
    pd.DataFrame({"longitude": [1.0], "y": [2.0], "class": [1]}).to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(ValueError, match="longitude, latitude"):
        read_points(tmp_path / "mixed.csv")
    pd.DataFrame({"x": [1.0, 2.0], "y": [2.0, None], "class": [1, 2]}).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(ValueError, match="non-numeric coordinate"):
        read_points(tmp_path / "gap.csv")


def test_cli_bad_points_file_is_one_clear_line(tmp_path, capsys) -> None:
    from flows.cli import main

    cube = tmp_path / "cube.zarr"
    make_cube(cube)
    (tmp_path / "pts.csv").write_text("id,lon,class\n1,2.0,3\n")
    assert main(["stage", "labels", "--cube", str(cube), "--labels", str(tmp_path / "pts.csv"),
                 "--out", str(tmp_path / "l.zarr")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pts.csv: missing the y / latitude column" in err
    assert not (tmp_path / "l.zarr").exists()


def test_helpers() -> None:
    idx = codes_to_index(np.array([[82, 250], [41, 11]], np.uint8), CODES)
    np.testing.assert_array_equal(idx, [[2, -1], [0, -1]])
    pred = np.array([82, 82, 41, 81], np.uint8)
    rows = class_table(pred, np.array([0.9, 0.7, 0.8, 0.5], np.float32), np.array([82, 41, 41, NO_CLASS], np.uint8),
                       {82: "crops", 41: "forest", 81: "hay"})
    by = {r["code"]: r for r in rows}
    assert by[82]["pixels"] == 2 and by[82]["mean_confidence"] == pytest.approx(0.8)
    assert by[41]["labelled_pixels"] == 2 and by[41]["labels_kept"] == pytest.approx(0.5)


def test_bad_arguments_raise(tmp_path) -> None:
    cube = tmp_path / "cube.zarr"
    make_cube(cube)
    with pytest.raises(ValueError, match="layer of the cube"):
        recover_labels(cube, "no-such-layer", tmp_path / "o.zarr", **FAST)
    with pytest.raises(FileNotFoundError, match=r"points.csv: no such labels file .*\['landcover'\]"):
        recover_labels(cube, str(tmp_path / "points.csv"), tmp_path / "o.zarr", **FAST)
    with pytest.raises(ValueError, match="variant"):
        recover_labels(cube, "landcover", tmp_path / "o.zarr", **{**FAST, "variant": "svd"})
    with pytest.raises(ValueError, match="epochs must be an integer"):
        recover_labels(cube, "landcover", tmp_path / "o.zarr", **{**FAST, "epochs": 0})
    with pytest.raises(ValueError, match="prior_window must be 0"):
        recover_labels(cube, "landcover", tmp_path / "o.zarr", **{**FAST, "prior_window": 4})
    # CORINE-style three-digit codes: refused by name, not clipped to "no label" (it used to say
    # "the labels hold 1 class(es) (111,)")
    ds = xr.open_zarr(cube).load()
    ds["corine"] = (("y", "x"), np.where(np.arange(W) < 16, 111, 523).astype(np.uint16)[None].repeat(H, 0))
    ds[["corine"]].to_zarr(cube, mode="a")
    with pytest.raises(ValueError, match=r"'corine' has class codes outside 0..254 \(111..523\)"):
        recover_labels(cube, "corine", tmp_path / "o.zarr", **FAST)
    # a band never observed empties every pixel-date: the error names it
    ds["data"][:, 1] = np.nan
    ds.drop_vars("corine").to_zarr(tmp_path / "nan_band.zarr", zarr_format=3, mode="w")
    with pytest.raises(ValueError, match=r"band\(s\) \['nir'\] hold no finite value"):
        recover_labels(tmp_path / "nan_band.zarr", "landcover", tmp_path / "o.zarr", **FAST)
    (tmp_path / "pts.txt").write_text("x y class\n")
    with pytest.raises(ValueError, match=r"\.csv"):
        read_points(tmp_path / "pts.txt")
    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing"):
        read_points(tmp_path / "bad.csv")


def test_coarse_prior_keeps_a_class_of_the_neighbourhood(recovered, tmp_path) -> None:
    cube, _, _, manifest = recovered
    out = tmp_path / "fused.zarr"
    fused = recover_labels(cube, "landcover", out, **{**FAST, "epochs": 3, "prior_window": 3})
    assert fused.key != manifest.key
    cls = xr.open_zarr(out)["class"].values
    layer = np.pad(xr.open_zarr(cube)["landcover"].values, 1, mode="edge")
    near = np.stack([layer[dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)])  # (9, H, W)
    known = (near != 250).any(0)
    assert ((cls[None] == near).any(0) | ~known).all()  # every class comes from its 3 x 3 box


def test_add_cli_registers_stage_labels() -> None:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["labels", "--cube", "in.zarr", "--labels", "landcover", "--out", "o.zarr",
                              "--lam", "0.5", "--variant", "factors"])
    assert (args.cube, args.labels, args.out, args.lam, args.variant) == ("in.zarr", "landcover", "o.zarr", 0.5, "factors")
    assert callable(args.func)


@pytest.mark.slow
def test_task_publishes_table_and_map(tmp_path, prefect_harness) -> None:
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.labels import labels_task

    cube, out = tmp_path / "cube.zarr", tmp_path / "lc-labels.zarr"
    make_cube(cube)

    @flow
    def one() -> dict:
        return labels_task(str(cube), str(out), labels="landcover", epochs=3, patch=16)

    result = one()
    assert {r["code"] for r in result["classes_table"]} == set(CODES)
    table = Artifact.get("labels-classes-cube-lc-labels")
    assert table is not None and table.type == "table" and "mean_confidence" in str(table.data)
    image = Artifact.get("labels-map-cube-lc-labels")
    assert image is not None and str(image.data).startswith("data:image/png;base64,")


def test_prediction_block_by_block_equals_one_block(tmp_path, monkeypatch) -> None:
    """Prediction over blocks of rows (each with every patch touching it) gives the map of one
    whole-cube block, the coarse-label fusion included; a small training budget keeps the
    labelled patches first."""
    import tasks.labels as lb

    cube = tmp_path / "cube.zarr"
    make_cube(cube, seed=5)
    fast = {**FAST, "epochs": 3, "prior_window": 3}
    lb.recover_labels(cube, "landcover", tmp_path / "one.zarr", **fast)
    monkeypatch.setattr(lb, "BLOCK_BYTES", 1)  # one patch height of rows per block
    lb.recover_labels(cube, "landcover", tmp_path / "rows.zarr", **fast)
    one, rows = xr.open_zarr(tmp_path / "one.zarr"), xr.open_zarr(tmp_path / "rows.zarr")
    np.testing.assert_array_equal(one["class"].values, rows["class"].values)
    np.testing.assert_allclose(one["confidence"].values, rows["confidence"].values, rtol=1e-5)
    monkeypatch.setattr(lb, "TRAIN_PATCHES", 2)
    idx = np.full((H, W), -1, np.int16)
    idx[20, 3] = 1  # one label, in the patch at (16, 0)
    picked = lb._training_patches(idx, 16, seed=0)
    assert len(picked) == 2 and [16, 0] in picked.tolist()


def test_labels_from_a_class_raster_in_another_crs(tmp_path) -> None:
    """``labels=FILE.tif``: a land cover raster, here in WGS 84 at about twice the cube's pixel
    size, is warped onto the cube's grid by majority; its nodata is no label. Before, a raster was
    refused ("labels files must be .csv or .geojson")."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    cube = tmp_path / "cube.zarr"
    truth = make_cube(cube)
    utm = {"driver": "GTiff", "width": W, "height": H, "count": 1, "dtype": "uint8", "crs": "EPSG:32615",
           "transform": TRANSFORM, "nodata": 0}
    transform, width, height = calculate_default_transform("EPSG:32615", "EPSG:4326", W, H,
                                                           *rasterio.transform.array_bounds(H, W, TRANSFORM),
                                                           dst_width=W // 2, dst_height=H // 2)
    out = np.zeros((height, width), np.uint8)
    reproject(truth, out, src_transform=TRANSFORM, src_crs=utm["crs"], dst_transform=transform, dst_crs="EPSG:4326",
              resampling=Resampling.mode, dst_nodata=0)
    with rasterio.open(tmp_path / "landcover_wgs84.tif", "w", **{**utm, "crs": "EPSG:4326", "transform": transform,
                                                                   "width": width, "height": height}) as ds:
        ds.write(out, 1)
    manifest = recover_labels(cube, tmp_path / "landcover_wgs84.tif", tmp_path / "o.zarr", **{**FAST, "epochs": 3})
    assert manifest.outputs["labels"]["kind"] == "raster" and manifest.outputs["classes"] == list(CODES)
    assert manifest.outputs["labels"]["labelled"] > 0.8 * H * W  # the whole map, less its edge


def test_cli_reports_the_label_map_in_words(recovered, monkeypatch, capsys) -> None:
    from flows.cli import main

    cube, out, _, manifest = recovered
    monkeypatch.setattr("tasks.labels.recover_labels", lambda *a, **k: manifest)  # the fixture's run
    assert main(["stage", "labels", "--cube", str(cube), "--labels", "landcover", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{out}: a class map (stage labels)" in text and "confidence: mean" in text
    assert f"trained on {manifest.outputs['labelled_pixels']} labelled pixels" in text
    # --model maps the cube with a saved model instead; one of --labels and --model is needed
    mapped = out.parent / "cli_mapped.zarr"
    assert main(["stage", "labels", "--cube", str(cube), "--model", str(weights_path(out)), "--out", str(mapped)]) == 0
    assert f"mapped with {weights_path(out)}" in capsys.readouterr().out and cog_path(mapped).exists()
    assert main(["stage", "labels", "--cube", str(cube), "--out", str(mapped)]) == 2
    assert "give --labels to train a model on this cube, or --model M.unet.pt" in capsys.readouterr().err


def test_pixels_never_observed_get_no_class(tmp_path) -> None:
    """Pixels no date observes (every date not ``valid``, or every band NaN on every date: the
    empty edges a warped MODIS grid leaves) hold ``NO_CLASS`` and NaN confidence, in the store and
    the COG, also where a label falls on them (such labels are dropped, from training too); the
    rest is mapped. Before, they were given a class and the CLI said "mapped over 100.0%"."""
    from tasks.info import describe

    make_cube(tmp_path / "cube.zarr", seed=3)
    ds = xr.open_zarr(tmp_path / "cube.zarr").load()
    ds["valid"][:, 0:8, 24:32] = False  # never valid
    ds["data"][:, :, 24:32, 0:8] = np.nan  # valid, but no band ever finite
    layer = ds["landcover"].values.copy()
    layer[2, 26] = layer[26, 2] = 41  # labels on pixels never observed
    ds["landcover"] = ds["landcover"].copy(data=layer)
    cube = tmp_path / "holes.zarr"
    ds.to_zarr(cube, zarr_format=3, consolidated=True, mode="w")
    never = np.zeros((H, W), bool)
    never[0:8, 24:32] = never[24:32, 0:8] = True
    out = tmp_path / "labels.zarr"
    manifest = recover_labels(cube, "landcover", out, **{**FAST, "epochs": 3})
    res = xr.open_zarr(out, consolidated=None)
    pred, conf = res["class"].values, res["confidence"].values
    assert res["class"].attrs["nodata"] == NO_CLASS
    assert (pred[never] == NO_CLASS).all() and np.isnan(conf[never]).all()
    assert set(np.unique(pred[~never])) <= set(CODES) and np.isfinite(conf[~never]).all()
    with rasterio.open(cog_path(out)) as src:
        assert src.nodata == NO_CLASS
        np.testing.assert_array_equal(src.read(1), pred)
    labelled = layer != 250
    o = manifest.outputs
    assert o["labels_unobserved"] == int((labelled & never).sum()) >= 2
    assert o["labelled_pixels"] == int((labelled & ~never).sum()) and o["mapped_pixels"] == int((~never).sum())
    rows = class_table(pred, conf, np.where(labelled, layer, NO_CLASS), {c: str(c) for c in CODES})  # the task's table
    assert sum(r["pixels"] for r in rows) == int((~never).sum())
    assert sum(r["labelled_pixels"] for r in rows) == int((labelled & ~never).sum())
    assert any(f"mapped over {percent((~never).mean())} of the pixels (fill 255)" in line for line in describe(out))


def test_a_label_raster_without_nodata_makes_up_no_class_outside_it_and_is_not_shifted(tmp_path) -> None:
    """A class GeoTIFF with no declared nodata covering the west half of the cube: outside it no
    pixel is labelled (it used to become class 0 and be trained on). A 30 m map onto the cube's
    3 m grid keeps each 30 m cell in place (majority resampling moved it half a pixel)."""
    import rasterio
    from affine import Affine

    from tasks.cube import cube_dataset

    t = Affine(3, 0, 450000, 0, -3, 4650000)
    ds = cube_dataset(np.zeros((1, 1, 60, 60), np.float32), times=["2020-01-01"], bands=["b"], transform=t,
                      crs="EPSG:32615")
    half = np.full((60, 30), 41, np.uint8)
    half[30:] = 82
    coarse = np.array([[11, 41], [82, 90]], np.uint8)  # 2 x 2 cells of 30 m, no nodata
    # the 30 m cells' edges fall inside 3 m pixels (1 m east, 1 m south of the cube's lattice)
    for name, arr, transform in (("half", half, t), ("coarse", coarse, Affine(30, 0, 450001, 0, -30, 4649999))):
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", height=arr.shape[0], width=arr.shape[1],
                           count=1, dtype="uint8", crs="EPSG:32615", transform=transform) as dst:
            dst.write(arr, 1)
    codes, attrs, info = raster_labels(ds, tmp_path / "half.tif")
    assert (codes[:, 30:] == NO_CLASS).all() and set(np.unique(codes[:, :30])) == {41, 82}
    assert info["labelled"] == 60 * 30 and attrs["nodata"] == NO_CLASS
    codes, _, _ = raster_labels(ds, tmp_path / "coarse.tif")
    # each 3 m pixel takes the class of the 30 m cell under its centre
    centre = 1.5 + 3 * np.arange(60)
    col, row = np.floor((centre - 1) / 30).astype(int), np.floor((centre + 1) / 30).astype(int)
    inside = (row[:, None] < 2) & (col[None, :] < 2)
    expected = np.where(inside, coarse[np.minimum(row, 1)[:, None], np.minimum(col, 1)[None, :]], NO_CLASS)
    np.testing.assert_array_equal(codes, expected)
