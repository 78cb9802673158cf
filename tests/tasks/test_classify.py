"""The classification stage on a tiny generated cube: outputs, scores, reuse, apply a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from tasks.checkpoint import read_manifest
from tasks.classify import CLASSES, add_cli, classify_cube, cog_path, load_model, weights_path
from tasks.cube import cube_dataset, open_cube
from tasks.quicklook import percent
from tasks.sample_area import NLCD_COLORMAP

torch.set_num_threads(1)

T, C, H, W = 4, 2, 64, 64
CODES = (11, 41, 82)  # water, deciduous forest, crops: three temporal profiles


def make_cube(path: Path, *, seed: int = 0, label: bool = True, n_times: int = T,
              codes_of: tuple[int, ...] = CODES, label_attrs: dict | None = None) -> np.ndarray:
    """Classes in 8 x 8 pixel blocks, told apart by their (noisy) temporal profile; some clouds."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, (H // 8, W // 8))
    cls = np.kron(cls, np.ones((8, 8), dtype=np.int64))
    profile = np.array([[0.05, 0.05, 0.05, 0.05], [0.2, 0.5, 0.5, 0.3], [0.1, 0.1, 0.6, 0.2]])[:, :n_times]
    base = profile[cls].transpose(2, 0, 1)  # (T, H, W)
    data = np.stack([base * 0.5, base], axis=1) + 0.03 * rng.standard_normal((n_times, C, H, W))
    valid = rng.random((n_times, H, W)) > 0.15
    data = np.where(valid[:, None], data, np.nan).astype(np.float32)
    codes = np.asarray(codes_of, np.uint8)[cls]
    layers = {"landcover": (codes, {"flag_values": list(CODES)} if label_attrs is None else label_attrs)} if label else {}
    ds = cube_dataset(data, valid=valid, times=[f"2019-0{m}-01" for m in range(4, 4 + n_times)], bands=["red", "nir"],
                      transform=Affine(3.0, 0, 450000.0, 0, -3.0, 4650000.0), crs=32615, layers=layers)
    ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w")
    return codes


def never_observed(cube: Path) -> np.ndarray:
    """``(y, x)``: pixels no date observes (valid with every band finite); the random clouds of
    :func:`make_cube` leave a few (one or two of 4096)."""
    ds = open_cube(cube)
    return ~(ds["valid"].values.astype(bool) & np.isfinite(ds["data"].values).all(axis=1)).any(axis=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    cube = root / "cube.zarr"
    codes = make_cube(cube)
    out = root / "classes.zarr"
    manifest = classify_cube(cube, out, epochs=12, patch=16, block=1, batch=4, crop=16, width=2,
                             lr=1e-2, device="cpu")
    return cube, out, codes, manifest


def test_outputs_schema_cog_and_scores(trained) -> None:
    cube, out, codes, manifest = trained
    ds = xr.open_zarr(out, consolidated=None)
    assert ds["classes"].dims == ("y", "x") and ds["classes"].dtype == np.uint8
    assert list(ds["classes"].attrs["flag_values"]) == list(CLASSES)
    assert "spatial_ref" in ds.coords
    np.testing.assert_array_equal(ds["x"].values, open_cube(cube)["x"].values)
    pred = ds["classes"].values
    never = never_observed(cube)
    assert set(np.unique(pred[~never])) <= set(CLASSES) and (pred[never] == 0).all()  # 0: the fill
    assert (pred == codes).mean() > 0.85  # an easy problem: the stage must learn it
    test = manifest.stats["test"]
    assert test["accuracy"] > 0.8 and test["pixels"] > 0
    assert {row["code"] for row in test["per_class"]} <= set(CODES)
    assert manifest.stats["device"] == "cpu" and len(manifest.stats["loss_history"]) == 12
    with rasterio.open(cog_path(out)) as src:
        assert src.crs == CRS.from_epsg(32615) and src.transform.a == 3.0
        np.testing.assert_array_equal(src.read(1), pred)
        assert src.colormap(1)[82] == NLCD_COLORMAP[82]
    assert Path(manifest.outputs["confusion_png"]).stat().st_size > 0


def test_reuse_and_apply_saved_model(trained, tmp_path) -> None:
    cube, out, codes, manifest = trained
    stamp = weights_path(out).stat().st_mtime_ns
    again = classify_cube(cube, out, epochs=12, patch=16, block=1, batch=4, crop=16, width=2, lr=1e-2,
                          device="cpu")
    assert again.key == manifest.key and weights_path(out).stat().st_mtime_ns == stamp  # reused
    model, meta = load_model(weights_path(out))  # weights_only=True inside
    assert meta["kind"] == "cnn4d" and model.n_times == T
    assert [c for c, seen in zip(CLASSES, model.seen.tolist(), strict=True) if seen] == list(CODES)
    # a checkpoint saved before the model kept its trained classes: every class may be predicted
    saved = torch.load(weights_path(out), weights_only=True)
    del saved["state_dict"]["seen"]
    torch.save(saved, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt")[0].seen.all()
    # apply it to an unlabelled cube with the same dates and bands
    bare = tmp_path / "bare.zarr"
    make_cube(bare, label=False)
    applied = classify_cube(bare, tmp_path / "applied.zarr", model=weights_path(out), patch=16, block=1,
                            device="cpu")
    assert applied.stats["test"] is None and not applied.outputs["trained"]
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "applied.zarr")["classes"].values,
                                  xr.open_zarr(out)["classes"].values)
    assert read_manifest(tmp_path / "applied.zarr").inputs["model"]
    # the store names the model so that it is found from anywhere (QA9: a path relative to the run's folder)
    assert xr.open_zarr(out).attrs["model"] == weights_path(out).name  # beside it
    assert xr.open_zarr(tmp_path / "applied.zarr").attrs["model"] == str(weights_path(out).resolve())
    # its provenance names the model, not a label layer the bare cube does not have
    assert applied.params["label"] is None and applied.params["model"] == weights_path(out).name
    assert not (tmp_path / "applied.zarr.patches.zarr").exists()  # applying reads the cube, cuts nothing
    rescored = classify_cube(cube, tmp_path / "rescored.zarr", model=weights_path(out), patch=16, block=1,
                             device="cpu")
    assert rescored.stats["test"]["accuracy"] == manifest.stats["test"]["accuracy"]  # the same split
    assert rescored.params["label"] == "landcover"  # read to score the map
    from tasks.info import describe  # fusioncube info on the class map's COG

    text = "\n".join(describe(manifest.outputs["cog"]))
    assert ": a GeoTIFF, 1 band(s) of uint8" in text and f"made beside {out}" in text


def test_a_saved_model_warns_on_a_cube_in_other_units_or_of_another_season(trained, tmp_path, caplog) -> None:
    """QA9: a model applied to the same cube in digital numbers (x 10000) mapped it with 98 %
    confidence and no word; nor was a cube of other months noticed."""
    from tasks.classify import model_mismatch

    cube, out, _, _ = trained
    model, meta = load_model(weights_path(out))
    ds = open_cube(cube)
    assert meta["dates"] == [str(d)[:10] for d in ds["time"].values]
    assert model_mismatch(model, meta, ds) == []
    assert model_mismatch(model, meta, ds.assign(data=ds["data"] * 1.2)) == []  # another area's brightness
    scaled = model_mismatch(model, meta, ds.assign(data=ds["data"] * 10000))
    assert len(scaled) == 2 and "band 'red' has mean" in scaled[0] and "other units or scaling" in scaled[0]
    later = ds.assign_coords(time=ds["time"].values + np.timedelta64(120, "D"))
    (season,) = model_mismatch(model, meta, later)
    assert season.startswith("its dates lie 120 days of the year after the training cube's (2019-04-01")
    next_year = ds.assign_coords(time=ds["time"].values + np.timedelta64(364, "D"))
    assert model_mismatch(model, meta, next_year) == []  # the same season a year on
    dn = tmp_path / "dn.zarr"
    ds.assign(data=ds["data"] * 10000).drop_encoding().to_zarr(dn, zarr_format=3, consolidated=True)
    with caplog.at_level("WARNING", logger="tasks.classify"):
        classify_cube(dn, tmp_path / "dn_classes.zarr", model=weights_path(out), patch=16, block=1, device="cpu")
    assert "dn.zarr may not suit this model: band 'red' has mean" in caplog.text


def test_a_short_training_maps_only_the_classes_of_its_labels(tmp_path) -> None:
    """With one epoch the untrained outputs of the 12 NLCD classes the labels do not hold won
    nearly everywhere (99 % of a user's map was class 31, absent from the labels)."""
    cube = tmp_path / "cube.zarr"
    make_cube(cube, seed=2)
    classify_cube(cube, tmp_path / "one.zarr", epochs=1, patch=16, block=1, batch=4, crop=16, width=2, lr=1e-6,
                  device="cpu")  # next to untrained: its initial outputs decide
    pred = xr.open_zarr(tmp_path / "one.zarr")["classes"].values
    assert set(np.unique(pred[~never_observed(cube)])) <= set(CODES)


def test_bad_inputs_raise(trained, tmp_path) -> None:
    cube, out, _, _ = trained
    bare = tmp_path / "bare.zarr"
    make_cube(bare, label=False)
    with pytest.raises(ValueError, match="no label layer 'landcover'"):
        classify_cube(bare, tmp_path / "x.zarr", patch=16, block=1)
    assert not list(tmp_path.glob("x.zarr*"))  # refused before any work was written
    other = tmp_path / "three_dates.zarr"
    make_cube(other, n_times=3)
    with pytest.raises(ValueError, match="trained on 4 dates x 2 bands"):
        classify_cube(other, tmp_path / "y.zarr", model=weights_path(out), patch=16, block=1)
    assert not list(tmp_path.glob("y.zarr*"))  # the model is checked before the patches are cut
    swapped = tmp_path / "swapped.zarr"  # the same count of bands, in another order
    make_cube(swapped, label=False)
    xr.open_zarr(swapped).load().isel(band=[1, 0]).to_zarr(tmp_path / "nir_red.zarr", zarr_format=3, mode="w")
    with pytest.raises(ValueError, match=r"trained on the bands \['red', 'nir'\], in that order; .* \['nir', 'red'\]"):
        classify_cube(tmp_path / "nir_red.zarr", tmp_path / "v.zarr", model=weights_path(out), patch=16, block=1)
    assert not list(tmp_path.glob("v.zarr*"))
    not_a_model = tmp_path / "map.tif"
    not_a_model.write_bytes(b"II*\x00" + bytes(64))
    with pytest.raises(ValueError, match="map.tif: not a fusioncube classifier checkpoint"):
        classify_cube(cube, tmp_path / "w.zarr", model=not_a_model, patch=16, block=1)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        classify_cube(cube, tmp_path / "z.zarr", epochs=0)
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_model(tmp_path / "missing.pt")


def test_label_scheme_nlcd_or_the_layer_s_own_legend() -> None:
    from tasks.classify import label_scheme

    def layer(values, **attrs):
        return xr.DataArray(np.asarray(values), dims=("y", "x"), name="lc", attrs=attrs)

    assert label_scheme(layer([[0, 41], [82, 250]])).classes == CLASSES  # NLCD with its no-data codes
    assert label_scheme(layer([[1, 1]], flag_values=[41, 82])).classes == CLASSES
    named = label_scheme(layer([[41, 82]], flag_values=[11, 41, 82], flag_meanings="water forest crops"))
    assert named.classes == CLASSES and named.names[41] == "forest" and named.names[21] == "Developed, Open Space"
    own = label_scheme(layer([[1, 2]], flag_values=[1, 2, 3, 9], flag_meanings="forest pasture soy_corn",
                             flag_colors=["#00ff00", "#ffff00", "#aa5500"], nodata=9))
    assert own.classes == (1, 2, 3) and own.names == {1: "forest", 2: "pasture", 3: "soy corn"}
    assert own.colours[3] == (0xAA, 0x55, 0x00, 255) and own.fill == 0
    # ESA WorldCover-like codes without a legend: 90 is a WorldCover code, not "Woody Wetlands"
    wc = label_scheme(layer([[10.0, 80.0], [90.0, np.nan]]))
    assert wc.classes == (10, 80, 90) and wc.names[90] == "class 90" and len(set(wc.colours.values())) == 3
    assert label_scheme(layer([[0, 1], [2, 2]])).fill == 255  # 0 is a class (Dynamic World's water)
    with pytest.raises(ValueError, match=r"'lc' has class codes outside 0..254 \(111..523\)"):
        label_scheme(layer([[111, 311], [523, 523]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        label_scheme(layer([[5, 5]]))


def test_a_label_layer_of_another_legend_is_learnt_in_its_own_classes(tmp_path) -> None:
    """Before: a layer of non-NLCD codes was refused ("holds no NLCD class code"), and ESA
    WorldCover codes were read as the two NLCD codes they share (90, 95), the rest unlabelled."""
    cube = tmp_path / "cube.zarr"
    own = (10, 40, 90)
    codes = make_cube(cube, codes_of=own, label_attrs={"flag_values": list(own),
                                                      "flag_meanings": "tree_cover cropland herbaceous_wetland"})
    out = tmp_path / "classes.zarr"
    manifest = classify_cube(cube, out, epochs=12, patch=16, block=1, batch=4, crop=16, width=2, lr=1e-2,
                             device="cpu")
    ds = xr.open_zarr(out, consolidated=None)
    assert list(ds["classes"].attrs["flag_values"]) == list(own)
    assert ds["classes"].attrs["flag_meanings"] == "tree_cover cropland herbaceous_wetland"
    pred = ds["classes"].values
    never = never_observed(cube)
    assert set(np.unique(pred[~never])) <= set(own) and (pred[never] == 0).all() and (pred == codes).mean() > 0.85
    assert {row["class"] for row in manifest.stats["test"]["per_class"]} <= {"tree cover", "cropland", "herbaceous wetland"}
    with rasterio.open(cog_path(out)) as src:
        assert "90=herbaceous wetland" in src.tags()["CLASSES"]
    model, meta = load_model(weights_path(out))
    assert meta["classes"] == list(own) and model.n_classes == 3
    # the legend travels with the model: applied to an unlabelled cube it writes the same classes
    bare = tmp_path / "bare.zarr"
    make_cube(bare, label=False)
    classify_cube(bare, tmp_path / "applied.zarr", model=weights_path(out), patch=16, block=1, device="cpu")
    applied = xr.open_zarr(tmp_path / "applied.zarr")["classes"]
    np.testing.assert_array_equal(applied.values, pred)
    assert applied.attrs["flag_meanings"] == "tree_cover cropland herbaceous_wetland"


def test_a_label_raster_file_trains_like_the_layer(trained, tmp_path) -> None:
    """``label=FILE.tif``: a class raster (here the layer's own codes, written as a GeoTIFF at
    twice the pixel size) is warped onto the cube's grid and cut into the patch store. The map's
    COG is ``OUT.zarr.tif``: it used to be ``OUT.tif``, which wrote over ``landcover.tif`` itself
    when the product was named after its labels (``--out landcover.zarr``)."""
    cube, _, codes, _ = trained
    transform = Affine(6.0, 0, 450000.0, 0, -6.0, 4650000.0)
    with rasterio.open(tmp_path / "landcover.tif", "w", driver="GTiff", width=W // 2, height=H // 2, count=1,
                       dtype="uint8", crs="EPSG:32615", transform=transform, nodata=0) as ds:
        ds.write(codes[::2, ::2], 1)
    given = (tmp_path / "landcover.tif").read_bytes()
    out = tmp_path / "landcover.zarr"
    manifest = classify_cube(cube, out, label=str(tmp_path / "landcover.tif"), epochs=12, patch=16, block=1,
                             batch=4, crop=16, width=2, lr=1e-2, device="cpu")
    pred = xr.open_zarr(out)["classes"].values
    assert (pred == codes).mean() > 0.85 and manifest.stats["test"]["accuracy"] > 0.8
    assert manifest.inputs["labels"]  # the raster's content is part of the key
    assert (tmp_path / "landcover.tif").read_bytes() == given
    assert manifest.outputs["cog"] == str(tmp_path / "landcover.zarr.tif")


def test_cli_registered() -> None:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["classify", "--cube", "in.zarr", "--out", "out.zarr", "--model", "m.pt",
                              "--device", "cpu"])
    assert (args.cube, args.out, args.model, args.device) == ("in.zarr", "out.zarr", "m.pt", "cpu")
    assert callable(args.func)


@pytest.mark.slow
def test_task_publishes_table_and_confusion(trained, prefect_harness, tmp_path) -> None:
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.classify import classify_task

    cube = trained[0]
    out = tmp_path / "classes.zarr"

    @flow
    def one() -> dict:
        return classify_task(str(cube), str(out), epochs=2, patch=16, block=1, device="cpu")

    result = one()
    assert result["stats"]["test"]["pixels"] > 0 and Path(result["outputs"]["cog"]).exists()
    table = Artifact.get("classify-classes-cube-classes")
    assert table is not None and table.type == "table" and "precision" in str(table.data)
    image = Artifact.get("classify-confusion-cube-classes")
    assert image is not None and str(image.data).startswith("data:image/png;base64,")


@pytest.mark.parametrize("kind", ["cnn4d", "cnn3d", "cnn2d"])
def test_map_strips_equal_one_pass_over_the_whole_cube(kind: str) -> None:
    """Windows with the network's halo, cut at the cube's edges: the strips equal one forward pass
    over the whole image, for windows that do not divide the cube; the halo is the receptive
    radius (an input change ``halo + 1`` px away leaves a pixel's output alone, ``halo`` px away not)."""
    import xarray as xr

    from fusion_models.classifier_training import predict_proba
    from fusion_models.classifiers import build_classifier
    from tasks.classify import map_strips

    torch.manual_seed(0)
    net = build_classifier(kind, n_times=3, n_bands=2, n_classes=4, width=4).eval()
    for module in net.modules():  # BatchNorm with statistics of its own: a bias outside zero padding shows
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 23, 31)).astype(np.float32)
    valid = rng.random((3, 23, 31)) > 0.2
    whole = next(predict_proba(net, [(x[None], valid[None], np.zeros((1, 1, 1), np.int64))]))[0]
    data = xr.DataArray(x, dims=("time", "band", "y", "x"))
    mask = xr.DataArray(valid, dims=("time", "y", "x"))
    for d, m in ((data, mask), (data.chunk({"y": 10}), mask.chunk({"y": 10}))):  # read a block of chunk rows at a time
        strips = list(map_strips(net, d, m, rows=7, cols=9, batch=3))
        assert [top for top, _ in strips] == [0, 7, 14, 21]
        np.testing.assert_allclose(np.concatenate([p for _, p in strips], axis=1), whole, atol=1e-5)

    h = net.halo
    for dist, changes in ((h + 1, False), (h, True)):
        moved = x.copy()
        moved[:, :, 11, 15 + dist] += 5.0
        out = next(predict_proba(net, [(moved[None], valid[None], np.zeros((1, 1, 1), np.int64))]))[0]
        assert (np.abs(out[:, 11, 15] - whole[:, 11, 15]).max() > 1e-6) == changes


def test_cli_reports_the_class_map_in_words(trained, monkeypatch, capsys) -> None:
    from flows.cli import main

    cube, out, _, manifest = trained
    given: dict[str, object] = {}
    monkeypatch.setattr("tasks.classify.classify_cube",
                        lambda *a, **k: given.update(k) or manifest)  # the fixture's run
    assert main(["stage", "classify", "--cube", str(cube), "--out", str(out), "--patch", "16"]) == 0
    assert given["patch"] == 16
    text = capsys.readouterr().out
    assert f"{out}: a class map (stage classify)" in text and "confidence: mean" in text
    assert f"map: {manifest.outputs['cog']}" in text
    assert f"test patches: accuracy {manifest.stats['test']['accuracy']:.3f}" in text


def test_pixels_never_observed_get_no_class(tmp_path) -> None:
    """Pixels no date observes (every date not ``valid``, or every band NaN on every date: the
    empty edges a warped MODIS grid leaves) hold the map's fill and NaN confidence, in the store
    and the COG, and are counted nowhere; the rest is mapped. Before, they were given a class and
    the CLI said "mapped over 100.0% of the pixels"."""
    from tasks.info import describe

    cube = tmp_path / "cube.zarr"
    make_cube(cube, seed=3)
    ds = xr.open_zarr(cube).load()
    ds["valid"][:, 0:16, 40:56] = False  # never valid
    ds["data"][:, :, 40:56, 0:16] = np.nan  # valid, but no band ever finite
    ds.to_zarr(tmp_path / "holes.zarr", zarr_format=3, consolidated=True, mode="w")
    cube = tmp_path / "holes.zarr"
    never = never_observed(cube)
    hole = np.zeros((H, W), bool)
    hole[0:16, 40:56] = hole[40:56, 0:16] = True
    assert never[hole].all() and never.sum() < hole.sum() + 8
    out = tmp_path / "classes.zarr"
    manifest = classify_cube(cube, out, epochs=2, patch=16, block=1, batch=4, crop=16, width=2, lr=1e-2,
                             device="cpu")
    res = xr.open_zarr(out, consolidated=None)
    pred, conf = res["classes"].values, res["confidence"].values
    fill = res["classes"].attrs["nodata"]
    assert fill == 0
    assert (pred[never] == fill).all() and np.isnan(conf[never]).all()
    assert set(np.unique(pred[~never])) <= set(CODES) and np.isfinite(conf[~never]).all()
    with rasterio.open(cog_path(out)) as src:
        assert src.nodata == fill
        np.testing.assert_array_equal(src.read(1), pred)
    assert sum(manifest.outputs["classes_found"].values()) == manifest.outputs["mapped_pixels"] == int((~never).sum())
    share = (~never).mean()
    assert any(f"mapped over {percent(share)} of the pixels (fill 0)" in line for line in describe(out))
