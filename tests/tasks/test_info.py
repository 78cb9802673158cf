"""`fusioncube info` on the stages' products: class maps, anomalies, patches, compressed stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from flows.cli import main
from tasks.cube import cube_dataset

T, C, H, W = 8, 2, 32, 32


def _cube(path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, T)[:, None, None, None]
    lc = np.where(np.arange(W)[None, :] < W // 2, 41, 82).repeat(H, 0).astype(np.uint8)  # forest | crops
    level = np.where(lc == 41, 0.3, 0.6)[None, None]
    data = (level * (1 + 0.3 * np.sin(3 * t)) + 0.01 * rng.standard_normal((T, C, H, W))).astype(np.float32)
    data[3, :, 10:12, 20:22] += 0.5  # an anomaly
    cube_dataset(data, times=[f"2019-05-{d:02d}" for d in range(1, 2 * T, 2)], bands=["red", "nir"],
                 transform=Affine(30.0, 0, 500000.0, 0, -30.0, 4650000.0), crs=32617,
                 layers={"landcover": lc}).to_zarr(path, zarr_format=3, consolidated=True, mode="w")


def test_info_describes_each_stage_product_and_its_manifest(tmp_path: Path, capsys) -> None:
    from tasks.anomalies import detect_anomalies
    from tasks.classify import classify_cube
    from tasks.compress import compress_cube
    from tasks.labels import recover_labels
    from tasks.patch import make_patches

    cube = tmp_path / "cube.zarr"
    _cube(cube)
    make_patches(cube, tmp_path / "patches.zarr", size=16, block=1)
    recover_labels(cube, "landcover", tmp_path / "labels.zarr", epochs=1, patch=16, device="cpu")
    detect_anomalies(cube, tmp_path / "anomalies.zarr", tile=16)
    classify_cube(cube, tmp_path / "classes.zarr", epochs=1, patch=16, block=1, device="cpu")
    compress_cube(cube, tmp_path / "comp", patch=16, step=0.05, iters=2)

    def info(name: str) -> str:
        assert main(["info", str(tmp_path / name)]) == 0
        return capsys.readouterr().out

    text = info("labels.zarr")
    assert "labels.zarr: a class map (stage labels)" in text and "made by: stage labels" in text and "cube.zarr" in text
    assert "grid: EPSG:32617 (WGS 84 / UTM zone 17N), pixel 30 x 30, 32 x 32 px" in text
    # NLCD names for the layer's codes (one epoch may map one class only)
    assert ("Deciduous Forest" in text or "Cultivated Crops" in text) and "confidence: mean" in text
    shares = [float(line.split()[-2].lstrip("<>")) for line in text.splitlines() if line.startswith("     ")]  # "12.5 %"
    assert len(shares) >= 1 and abs(sum(shares) - 100) < 0.5  # each mapped class's share of the map

    text = info("classes.zarr")  # classify's map: its variable is `classes`, its fill 255 or 0
    assert "classes.zarr: a class map (stage classify)" in text and "made by: stage classify" in text
    assert "made with: fusioncube " in text and "torch " in text and "CPU thread(s)" in text  # QA11: provenance
    assert "classes: " in text and "confidence: mean" in text

    # QA9: the model files beside the products, described (what they are, read, were trained on)
    text = info("classes.zarr.cnn4d.pt")
    assert "a 4D-CNN land-cover classifier (stage classify)" in text and "bands: red, nir" in text
    assert "trained on 8 date(s): 2019-05-01 .. 2019-05-15" in text and "band mean / spread it standardises with" in text
    # a product copied without its manifest: described from its own attributes (QA9 recheck)
    shutil.copytree(tmp_path / "labels.zarr", tmp_path / "copied" / "labels.zarr")
    text = info("copied/labels.zarr")
    assert "made by: stage labels" in text and "(its attributes; no manifest beside it" in text and "epochs=1" in text
    assert "made with: fusioncube " in text
    shutil.rmtree(tmp_path / "copied")
    (tmp_path / "garbage.pt").write_text("not a model")  # QA9 recheck: a traceback before
    assert main(["info", str(tmp_path / "garbage.pt")]) == 2
    err = capsys.readouterr().err
    assert "garbage.pt: not a plain state dict" in err and "Traceback" not in err
    text = info("labels.zarr.unet.pt")
    assert "a UNet + LRTD label-recovery model (stage labels)" in text and "41 Deciduous Forest" in text
    assert "band mean / spread it standardises with" in text and "settings: sample=[8, 2, 16, 16]" in text

    # quick-looks of the products that have a picture, and a clear refusal for one that has none
    for name in ("labels.zarr", "classes.zarr", "anomalies.zarr", "cube.zarr"):
        assert main(["info", str(tmp_path / name), "--png", str(tmp_path / f"{name}.png")]) == 0
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["info", str(tmp_path / "patches.zarr"), "--png", str(tmp_path / "p.png")]) == 2
    assert "patches.zarr: no quick-look for this product" in capsys.readouterr().err
    # a folder of products: the stores to give instead, not a Zarr error
    assert main(["info", str(tmp_path), "--png", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "no quick-look for a folder that is not a Zarr store; give one of its stores (" in err
    assert "anomalies.zarr" in err and "Zarr store (No group" not in err

    text = info("anomalies.zarr")
    assert "anomalies.zarr: anomalies (stage anomalies)" in text and "parameters: band=red, bits=8" in text
    assert "dates: 8, 2019-05-01 .. 2019-05-15" in text and "flagged:" in text
    assert "2019-05-07  x=500615 y=4649685" in text  # the planted spot: date 3, row 10, column 20

    text = info("patches.zarr")
    assert "patches.zarr: patches (stage patch)" in text and "patches: 4 of 8 time x 2 band x 16 py x 16 px" in text
    assert "blocks of 1 x 1 patches (16 px)" in text  # the block used, where a small cube asked a smaller one

    text = info("comp/compressed")
    assert "a compressed cube (TDL, stage compress)" in text and "bits per entry" in text and "PSNR (dB)" in text
    assert "fusioncube stage decompress --store" in text
    text = info("comp")  # the stage's --out folder: its store described
    assert "comp: the output folder of stage compress (compressed, decoded.zarr, patches.zarr" in text
    assert "a compressed cube (TDL, stage compress)" in text

    text = info("cube.zarr")
    assert "a schema-following cube" in text and "manifest" not in text  # written by hand: no manifest
    (tmp_path / "other.zarr").mkdir()
    xr.Dataset({"t": (("a",), np.arange(3))}).to_zarr(tmp_path / "other.zarr", mode="w")
    assert main(["info", str(tmp_path / "other.zarr")]) == 2
    assert "no variable 'data'; a cube needs data(time, band, y, x)" in capsys.readouterr().err

    # a folder of products (the pipeline's artifacts/<cube>/): one line each, an unreadable one said
    text = info("")
    assert f"{tmp_path}: a folder of 8 store(s)" in text
    for line in ("  labels.zarr: a class map (stage labels)", "  anomalies.zarr: anomalies (stage anomalies)",
                 "  patches.zarr: patches (stage patch)", "  comp: the output folder of stage compress",
                 "  cube.zarr: a schema-following cube\n", "  other.zarr: not readable (", ):
        assert line in text, line
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 2
    assert "empty: a folder holding no Zarr store or stage product" in capsys.readouterr().err
    # a folder of folders (the demo's --out: cubes/, artifacts/<cube>/): the stores below it
    shutil.copytree(tmp_path / "cube.zarr", tmp_path / "run" / "cubes" / "c.zarr")
    text = info("run")
    assert f"{tmp_path / 'run'}: a folder of 1 store(s)" in text and "  cubes/c.zarr: a schema-following cube" in text

    # the cube changed after its products were made (new dates, a rebuild): each product says so,
    # also one of a stage the pipeline no longer runs (compress's decoded cube, through its store)
    assert "OUT OF DATE" not in info("")
    _cube(cube)
    text = info("anomalies.zarr")
    assert f"OUT OF DATE: made from an earlier state of {cube}, which has changed since" in text
    text = info("comp/decoded.zarr")
    assert "OUT OF DATE: made from " in text and "which is out of date itself" in text
    text = info("")
    for line in ("  anomalies.zarr: anomalies (stage anomalies) (OUT OF DATE: its input changed since)",
                 "  patches.zarr: patches (stage patch) (OUT OF DATE"):
        assert line in text, text


def test_grids_are_named_for_people_and_gdal_warnings_shown_once(real_fixtures: Path, tmp_path: Path,
                                                                 capsys, caplog) -> None:
    """A CRS with an EPSG code is shown by its code and name; one without (MODIS sinusoidal, the
    Albers COG) by its name and projection, not a page of WKT. GDAL's warning about the COG's
    geographic CRS, repeated at every open of the file, reaches the user once."""
    from tasks.cube import crs_label

    assert crs_label(CRS.from_epsg(32617)) == "EPSG:32617 (WGS 84 / UTM zone 17N)"
    sinusoidal = CRS.from_proj4("+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs")
    assert crs_label(sinusoidal) == "Sinusoidal (no EPSG code)"
    assert crs_label(None) == "no CRS"
    cog = real_fixtures / "albers_cog_rioxarray" / "cog.tif"
    caplog.set_level("WARNING", logger="rasterio._env")
    assert main(["ingest", str(cog), "--out", str(tmp_path / "a.zarr"), "--date", "2020-01-01", "--dry-run"]) == 0
    assert "grid (the first scene's): Albers / Albers Equal Area (no EPSG code), 300 x 300" in capsys.readouterr().out
    repeated = [r for r in caplog.records if "GeoTIFF keys" in r.getMessage()]
    assert len(repeated) == 1


def test_a_filled_cube_counts_what_is_still_missing_once(tmp_path: Path) -> None:
    """A pixel-date can be valid with one band's value missing, and filled: it was counted as both
    observed and filled, and the share still missing came out negative."""
    from tasks.cube import describe_cube

    _cube(tmp_path / "c.zarr")
    ds = xr.open_zarr(tmp_path / "c.zarr").load()
    valid = ds["valid"].values.copy()
    valid[0, :16] = False  # half of the first date not observed: 6.25 % of the pixel-dates
    filled = ~valid
    filled[0, :8] = False  # half of it left unfilled: 3.125 % still missing
    filled[1, :16] = True  # valid, a band missing there and filled (it read -3.1 % still missing)
    ds["valid"] = (("time", "y", "x"), valid)
    ds["filled"] = (("time", "y", "x"), filled)
    ds.to_zarr(tmp_path / "f.zarr", zarr_format=3, consolidated=True, mode="w")
    line = next(s for s in describe_cube(tmp_path / "f.zarr") if s.strip().startswith("filled:"))
    assert "filled: 9.4% of pixel-dates" in line and line.endswith("; 3.1% still missing"), line
